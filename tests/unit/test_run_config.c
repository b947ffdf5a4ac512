/* test_run_config: a full run YAML is read into the right fields, overrides win, and every
 * kind of mistake is refused with a message naming the key and the line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "train/run_config.h"

static const char good[] = "model:\n"
                           "  config: configs/models/mixtral-tiny.json\n"
                           "data:\n"
                           "  sources:\n"
                           "    - path: out/fortunes\n"
                           "      weight: 3\n"
                           "    - {path: out/other, weight: 1}\n"
                           "  seq_len: 128\n"
                           "  micro_batch: 4\n"
                           "  grad_accum: 2\n"
                           "optim:\n"
                           "  lr: 1e-3\n"
                           "  min_lr: 1e-4\n"
                           "  schedule: wsd\n"
                           "  warmup: 10\n"
                           "  decay: 20\n"
                           "run:\n"
                           "  steps: 200\n"
                           "  seed: 42\n"
                           "  dir: runs/tiny\n"
                           "  nan_policy: skip\n"
                           "moe:\n"
                           "  aux_loss: per_layer\n"
                           "  z_loss: 0.001\n";

/* Parses text with one override (or none) and expects an error containing each needle. */
static void expect_error(const char *text, const char *override, const char *needle1, const char *needle2)
{
    gale_error err = {{0}};
    char *ov[1] = {(char *)override};
    gale_run_config *c = run_config_parse(text, strlen(text), "run.yaml", ov, override ? 1 : 0, &err);
    if (c) {
        FAIL("accepted: %s / %s", text, override ? override : "");
        run_config_free(c);
        return;
    }
    CHECK_MSG(strstr(err.msg, needle1) && (!needle2 || strstr(err.msg, needle2)),
              "message '%s' lacks '%s' / '%s'", err.msg, needle1, needle2 ? needle2 : "");
}

/* good with line `line` (1-based) replaced */
static char *replace_line(int line, const char *with)
{
    static char buf[4096];
    const char *p = good;
    size_t n = 0;
    for (int l = 1; *p; l++) {
        const char *eol = strchr(p, '\n');
        size_t len = eol - p + 1;
        if (l == line)
            n += snprintf(buf + n, sizeof buf - n, "%s\n", with);
        else
            n += snprintf(buf + n, sizeof buf - n, "%.*s", (int)len, p);
        p += len;
    }
    return buf;
}

int main(void)
{
    gale_error err = {{0}};
    char *ov[] = {"optim.lr=2e-3", "run.steps=300", "backend.threads=2", "model.rope_theta=5e5"};
    gale_run_config *c = run_config_parse(good, strlen(good), "run.yaml", ov, 4, &err);
    if (!c) {
        fprintf(stderr, "FAIL good config refused: %s\n", err.msg);
        return 1;
    }
    CHECK(!strcmp(c->model.config, "configs/models/mixtral-tiny.json"));
    CHECK(c->data.n_sources == 2);
    CHECK(!strcmp(c->data.sources[0].path, "out/fortunes") && c->data.sources[0].weight == 3);
    CHECK(!strcmp(c->data.sources[1].path, "out/other") && c->data.sources[1].weight == 1);
    CHECK(c->data.seq_len == 128 && c->data.micro_batch == 4 && c->data.grad_accum == 2 && c->data.doc_mask == 1);
    CHECK(c->optim.lr == 2e-3 && c->optim.min_lr == 1e-4 && c->optim.schedule == GALE_SCHEDULE_WSD);
    CHECK(c->optim.warmup == 10 && c->optim.decay == 20 && c->optim.beta2 == 0.95);
    CHECK(c->run.steps == 300 && c->run.seed == 42 && !strcmp(c->run.dir, "runs/tiny"));
    CHECK(c->run.nan_policy == GALE_NAN_SKIP && c->moe.aux_loss == GALE_AUX_PER_LAYER && c->moe.z_loss == 0.001);
    CHECK(c->moe.aux_coef < 0 && c->backend.threads == 2 && c->backend.device == GALE_DEVICE_CPU);
    json_t *j = run_config_to_json(c);
    CHECK(json_real_value(json_object_get(json_object_get(j, "optim"), "lr")) == 2e-3);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(j, "optim"), "schedule")), "wsd"));
    CHECK(json_real_value(json_object_get(json_object_get(j, "model"), "rope_theta")) == 5e5);
    CHECK(json_array_size(json_object_get(json_object_get(j, "data"), "sources")) == 2);
    json_decref(j);
    run_config_free(c);

    /* mistakes, each named with its key and line */
    expect_error(replace_line(12, "  lr: fast"), NULL, "run.yaml:12", "optim.lr must be a number");
    expect_error(replace_line(12, "  learning_rate: 1e-3"), NULL, "run.yaml:12", "unknown key optim.learning_rate");
    expect_error(replace_line(14, "  schedule: step"), NULL, "run.yaml:14", "optim.schedule must be one of");
    expect_error(replace_line(18, "  steps: 2.5"), NULL, "run.yaml:18", "run.steps must be an integer");
    expect_error(replace_line(18, "  steps: -5"), NULL, "run.yaml:18", "out of range");
    expect_error(replace_line(21, "  nan_policy: ignore"), NULL, "run.yaml:21", "run.nan_policy");
    expect_error(replace_line(11, "optimizer:"), NULL, "run.yaml:11", "unknown section 'optimizer'");
    expect_error(replace_line(6, "      weight: -1"), NULL, "run.yaml:6", "weight must be a number > 0");
    expect_error(replace_line(6, "      wieght: 2"), NULL, "run.yaml:6", "data.sources[].wieght");
    expect_error(replace_line(2, "  hidden: 128"), NULL, "run.yaml:2", "unknown key model.hidden");
    expect_error(replace_line(8, "  seq_len: [1, 2]"), NULL, "run.yaml:8", "data.seq_len must be a single value");
    expect_error(replace_line(8, "  seq_len: 128\n bad indent: :"), NULL, "run.yaml:", "YAML syntax");
    expect_error(good, "optim.beta2=1.5", "--set optim.beta2=1.5", "out of range");
    expect_error(good, "optim.nope=1", "--set optim.nope=1", "unknown key optim.nope");
    expect_error(good, "lr=1", "--set lr=1", "section.key=value");
    expect_error(good, "run.tokens=1000", "exactly one of run.steps and run.tokens", NULL);
    expect_error(good, "optim.min_lr=5", "optim.min_lr", NULL);
    expect_error(replace_line(20, ""), NULL, "run.dir is missing", NULL);
    expect_error(replace_line(8, "  seqlen: 128"), NULL, "run.yaml:8", "unknown key data.seqlen");
    expect_error(replace_line(7, "    - out/other"), NULL, "weight to every source or to none", NULL);

    /* no weights at all: the loader mixes in proportion to the sources' rows (weight 0) */
    static const char unweighted[] = "model:\n  config: m.json\ndata:\n  sources: [out/a, out/b]\n  seq_len: 16\n"
                                     "run:\n  steps: 1\n  dir: r\n";
    c = run_config_parse(unweighted, strlen(unweighted), "run.yaml", NULL, 0, &err);
    if (!c) {
        FAIL("unweighted sources refused: %s", err.msg);
    } else {
        CHECK(c->data.n_sources == 2 && c->data.sources[0].weight == 0 && c->data.sources[1].weight == 0);
        run_config_free(c);
    }
    expect_error("", NULL, "run.yaml", NULL);
    expect_error("- 1\n- 2\n", NULL, "run.yaml:1", "mapping of sections");

    return check_report("test_run_config");
}
