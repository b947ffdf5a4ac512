/* checkpoint: step_XXXXXXXX.tmp/ → fsync → rename → `latest`, and back. */
#define _GNU_SOURCE
#include "train/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/safetensors.h"
#include "util/file.h"

#define STEP_NAME_DIGITS 8

void train_state_clear(gale_train_state *st)
{
    json_decref(st->loader);
    json_decref(st->config);
    memset(st, 0, sizeof *st);
}

static void step_name(long step, char name[32])
{
    snprintf(name, 32, "step_%0*ld", STEP_NAME_DIGITS, step);
}

/* 1 when name is step_ followed by exactly the digits of a step. */
static int is_step_name(const char *name)
{
    if (strncmp(name, "step_", 5))
        return 0;
    size_t n = strlen(name + 5);
    if (n < STEP_NAME_DIGITS)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (name[5 + i] < '0' || name[5 + i] > '9')
            return 0;
    return 1;
}

static int write_optimizer(const char *path, const struct model_layout *layout, const gale_moments *mo,
                           gale_error *err)
{
    struct safetensors_entry *entries = gale_xcalloc(2 * layout->n, sizeof *entries);
    char **names = gale_xcalloc(2 * layout->n, sizeof *names);
    for (int i = 0; i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        for (int which = 0; which < 2; which++) {
            size_t len = strlen(t->name) + 16;
            char *name = names[2 * i + which] = gale_xmalloc(len);
            snprintf(name, len, "%s.%s", which ? "exp_avg_sq" : "exp_avg", t->name);
            entries[2 * i + which] =
                (struct safetensors_entry){name, ST_F32, t->ndim, t->shape, (which ? mo->v : mo->m) + t->offset};
        }
    }
    int rc = safetensors_write(path, entries, 2 * layout->n, NULL, 0, err);
    for (int i = 0; i < 2 * layout->n; i++)
        free(names[i]);
    free(names);
    free(entries);
    return rc;
}

static int copy_file(const char *from, const char *to, gale_error *err)
{
    size_t len;
    char *data = gale_read_file(from, &len, err);
    if (!data)
        return -1;
    int rc = gale_write_file_atomic(to, data, len, err);
    free(data);
    return rc;
}

static int write_state(const char *path, const gale_train_state *st, const struct model *m, gale_error *err)
{
    json_t *j = json_pack("{s:s, s:i, s:I, s:I, s:I, s:{s:I}, s:O?, s:{s:i, s:i, s:i}, s:I, s:O?}", "format",
                          GALE_TRAINER_STATE_FORMAT, "version", GALE_TRAINER_STATE_VERSION, "step",
                          (json_int_t)st->step, "optimizer_step", (json_int_t)st->optimizer_step, "tokens_seen", (json_int_t)st->tokens_seen, "rng", "seed",
                          (json_int_t)st->seed, "loader", st->loader, "world", "size", st->world_size,
                          "data_parallel", st->world_size, "expert_parallel", 1, "params",
                          (json_int_t)model_get_layout(m)->numel, "config", st->config);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    int rc = gale_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

/* Older step first: names are equal width up to 10^8 steps, longer ones are later. */
static int compare_step_names(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t lx = strlen(x), ly = strlen(y);
    return lx != ly ? (lx < ly ? -1 : 1) : strcmp(x, y);
}

/* Removes leftover .tmp folders and the oldest complete checkpoints beyond keep_last. */
static int prune(const char *ckpt_root, int keep_last, gale_error *err)
{
    DIR *d = opendir(ckpt_root);
    if (!d)
        return gale_fail_errno(err, "%s", ckpt_root);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (!strncmp(e->d_name, "step_", 5) && len > 4 && !strcmp(e->d_name + len - 4, ".tmp")) {
            char *stale = gale_path_join(ckpt_root, e->d_name);
            rc |= gale_remove_tree(stale, err);
            free(stale);
        } else if (is_step_name(e->d_name)) {
            names = gale_xrealloc(names, (n + 1) * sizeof *names);
            names[n++] = gale_xstrdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof *names, compare_step_names);
    for (size_t i = 0; i < n; i++) {
        if (i + keep_last < n) {
            char *old = gale_path_join(ckpt_root, names[i]);
            rc |= gale_remove_tree(old, err);
            free(old);
        }
        free(names[i]);
    }
    free(names);
    return rc ? -1 : 0;
}

/* Renames the finished tmp folder to final. A final folder of that step already there
 * (a run resumed from an older checkpoint, reaching it again) is swapped out atomically
 * and removed: `latest` never names a missing or partial folder. */
static int publish(const char *root, const char *tmp, const char *final, gale_error *err)
{
    if (!gale_path_exists(final))
        return gale_rename_durable(tmp, final, err);
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) != 0)
        return gale_fail_errno(err, "replacing %s by %s", final, tmp);
    if (gale_fsync_path(root, err))
        return -1;
    return gale_remove_tree(tmp, err); /* now the replaced checkpoint */
}

int checkpoint_save(const char *run_dir, struct model *m, const gale_moments *moments, const gale_train_state *st,
                    const char *tokenizer_path, int keep_last, char **out_dir, gale_error *err)
{
    char name[32], tmp_name[40];
    step_name(st->step, name);
    snprintf(tmp_name, sizeof tmp_name, "%s.tmp", name);
    char *root = gale_path_join(run_dir, "checkpoints");
    char *final = gale_path_join(root, name), *tmp = gale_path_join(root, tmp_name);
    char *files[4] = {0};
    int rc = -1;
    if (gale_mkdir_p(root, err) || (gale_path_exists(tmp) && gale_remove_tree(tmp, err)) || gale_mkdir_p(tmp, err))
        goto done;
    if (model_save_hf(m, tmp, err))
        goto done;
    files[0] = gale_path_join(tmp, "optimizer.safetensors");
    if (write_optimizer(files[0], model_get_layout(m), moments, err))
        goto done;
    files[1] = gale_path_join(tmp, "tokenizer.model");
    if (tokenizer_path && copy_file(tokenizer_path, files[1], err))
        goto done;
    files[2] = gale_path_join(tmp, "trainer_state.json");
    if (write_state(files[2], st, m, err) || gale_fsync_path(tmp, err) || publish(root, tmp, final, err))
        goto done;
    rc = 0;
    files[3] = gale_path_join(root, "latest");
    char line[40];
    snprintf(line, sizeof line, "%s\n", name);
    if (gale_write_file_atomic(files[3], line, strlen(line), err) || prune(root, keep_last, err))
        rc = -1;
done:
    if (rc)
        gale_error_prefix(err, "checkpoint of step %ld in %s", st->step, root);
    if (rc == 0 && out_dir)
        *out_dir = gale_xstrdup(final);
    for (int i = 0; i < 4; i++)
        free(files[i]);
    free(root);
    free(final);
    free(tmp);
    return rc;
}

char *checkpoint_latest(const char *run_dir, gale_error *err)
{
    err->msg[0] = 0;
    char *root = gale_path_join(run_dir, "checkpoints");
    char *latest = gale_path_join(root, "latest");
    char *result = NULL;
    if (!gale_path_exists(latest))
        goto done;
    size_t len;
    char *text = gale_read_file(latest, &len, err);
    if (!text)
        goto done;
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = 0;
    if (!is_step_name(text)) {
        gale_fail(err, "%s: does not name a checkpoint (step_NNNNNNNN), it holds '%.40s'", latest, text);
    } else {
        result = gale_path_join(root, text);
        char *state = gale_path_join(result, "trainer_state.json");
        if (!gale_path_exists(state)) {
            gale_fail(err, "%s names %s, which has no trainer_state.json", latest, result);
            free(result);
            result = NULL;
        }
        free(state);
    }
    free(text);
done:
    free(root);
    free(latest);
    return result;
}

char *checkpoint_resolve(const char *path, gale_error *err)
{
    char *state = gale_path_join(path, "trainer_state.json");
    int direct = gale_path_exists(state);
    free(state);
    if (direct)
        return gale_xstrdup(path);
    char *dir = checkpoint_latest(path, err);
    if (!dir && !err->msg[0])
        gale_fail(err, "%s: not a checkpoint (no trainer_state.json) nor a run folder with checkpoints/latest",
                  path);
    return dir;
}

int checkpoint_read_state(const char *dir, gale_train_state *st, gale_error *err)
{
    memset(st, 0, sizeof *st);
    char *path = gale_path_join(dir, "trainer_state.json");
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    int rc = -1;
    if (!j) {
        gale_fail(err, "%s:%d: %s", path, jerr.line, jerr.text);
        goto done;
    }
    const char *format = NULL;
    int version = 0, world = 0;
    json_int_t step = 0, opt_step = 0, tokens = 0, seed = 0;
    if (json_unpack_ex(j, &jerr, 0, "{s:s, s:i, s:I, s:I, s:I, s:{s:I}, s:{s:i}}", "format", &format, "version",
                       &version, "step", &step, "optimizer_step", &opt_step, "tokens_seen", &tokens, "rng", "seed", &seed, "world", "size", &world)) {
        gale_fail(err, "%s: %s", path, jerr.text);
        goto done;
    }
    if (strcmp(format, GALE_TRAINER_STATE_FORMAT) || version != GALE_TRAINER_STATE_VERSION) {
        gale_fail(err, "%s: format '%s' version %d, expected '%s' version %d", path, format, version,
                  GALE_TRAINER_STATE_FORMAT, GALE_TRAINER_STATE_VERSION);
        goto done;
    }
    if (step < 0 || tokens < 0 || opt_step < 0 || opt_step > step) {
        gale_fail(err, "%s: step, optimizer_step or tokens_seen out of range", path);
        goto done;
    }
    st->step = (long)step;
    st->optimizer_step = (long)opt_step;
    st->tokens_seen = tokens;
    st->seed = (uint64_t)seed;
    st->world_size = world;
    st->loader = json_incref(json_object_get(j, "loader"));
    st->config = json_incref(json_object_get(j, "config"));
    rc = 0;
done:
    json_decref(j);
    free(path);
    return rc;
}

/* The moments of layout's tensors, by name; whole_n: the whole model's tensor count (an
 * expert-parallel rank's layout holds a share). */
static int load_moments(const char *dir, const struct model_layout *layout, int whole_n, struct adamw *opt,
                        gale_error *err)
{
    char *path = gale_path_join(dir, "optimizer.safetensors");
    struct safetensors_set set;
    if (safetensors_open(path, &set, err)) {
        free(path);
        return -1;
    }
    float *m = gale_xmalloc(layout->numel * sizeof *m), *v = gale_xmalloc(layout->numel * sizeof *v);
    int rc = 0;
    char name[MODEL_TENSOR_NAME_MAX + 16];
    for (int i = 0; rc == 0 && i < layout->n; i++) {
        const struct model_tensor *t = &layout->tensors[i];
        for (int which = 0; rc == 0 && which < 2; which++) {
            snprintf(name, sizeof name, "%s.%s", which ? "exp_avg_sq" : "exp_avg", t->name);
            const struct safetensors_tensor *st = safetensors_find(&set, name);
            if (!st)
                rc = gale_fail(err, "%s: no tensor %s", path, name);
            else if (st->numel != t->numel || st->ndim != t->ndim)
                rc = gale_fail(err, "%s: %s has %zu elements, the model's tensor %zu", path, name, st->numel,
                               t->numel);
            else if (st->dtype != ST_F32)
                rc = gale_fail(err, "%s: %s is %s, expected F32", path, name, safetensors_dtype_name(st->dtype));
            else
                rc = safetensors_read_f32(st, (which ? v : m) + t->offset, err);
        }
    }
    if (rc == 0 && set.n != 2 * whole_n)
        rc = gale_fail(err, "%s: %d tensors, the model has %d parameter tensors (x2 moments)", path, set.n,
                       whole_n);
    if (rc == 0) { /* a shard of the optimizer takes its range of the whole state */
        size_t n = opt->end - opt->begin;
        opt->be->ops->upload(opt->be, opt->m, m + opt->begin, n * sizeof *m);
        opt->be->ops->upload(opt->be, opt->v, v + opt->begin, n * sizeof *v);
        rc = gale_backend_sync(opt->be, err);
    }
    free(m);
    free(v);
    safetensors_close(&set);
    free(path);
    return rc;
}

int checkpoint_load_weights(const char *dir, struct model *m, struct adamw *opt, gale_error *err)
{
    if (model_load_hf(m, dir, err))
        return -1;
    if (!opt)
        return 0;
    gale_train_state st;
    if (checkpoint_read_state(dir, &st, err))
        return -1;
    opt->step = st.optimizer_step;
    train_state_clear(&st);
    struct model_layout whole;
    model_layout_build(model_get_config(m), &whole);
    int rc = load_moments(dir, model_get_layout(m), whole.n, opt, err);
    model_layout_free(&whole);
    return rc;
}

struct model *checkpoint_open_model(const char *dir, gale_error *err)
{
    char *cfg_path = gale_path_join(dir, "config.json");
    struct model_config mc;
    int rc = model_config_load(cfg_path, &mc, err);
    free(cfg_path);
    if (rc)
        return NULL;
    struct model_options opts = {.aux_form = MODEL_AUX_HF};
    struct gale_backend *be = gale_backend_create("cpu", GALE_F32, err);
    struct model *m = be ? model_create(&mc, be, &opts, err) : NULL;
    if (m)
        model_own_backend(m);
    else
        gale_backend_free(be);
    if (m && model_load_hf(m, dir, err)) {
        model_free(m);
        return NULL;
    }
    return m;
}

int checkpoint_describe(const char *dir, FILE *out, gale_error *err)
{
    gale_train_state st;
    if (checkpoint_read_state(dir, &st, err))
        return -1;
    char *cfg_path = gale_path_join(dir, "config.json");
    struct model_config mc;
    int rc = model_config_load(cfg_path, &mc, err);
    free(cfg_path);
    if (rc == 0) {
        char *tok = gale_path_join(dir, "tokenizer.model");
        fprintf(out, "checkpoint   %s\n", dir);
        fprintf(out, "step         %ld\n", st.step);
        fprintf(out, "tokens seen  %lld\n", (long long)st.tokens_seen);
        fprintf(out, "world        %d rank(s)\n", st.world_size);
        fprintf(out, "model        %s, %d layers, hidden %d, heads %d/%d kv, vocab %d", model_kind_name(mc.kind),
                mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.vocab_size);
        if (mc.num_experts)
            fprintf(out, ", %d experts top-%d", mc.num_experts, mc.num_experts_per_tok);
        fprintf(out, "\nparameters   %lld\n", model_config_num_params(&mc));
        fprintf(out, "tokenizer    %s\n", gale_path_exists(tok) ? "tokenizer.model" : "(none)");
        if (st.config) {
            char *text = json_dumps(st.config, JSON_INDENT(2) | JSON_SORT_KEYS);
            fprintf(out, "run config   %s\n", text);
            free(text);
        }
        free(tok);
    }
    train_state_clear(&st);
    return rc;
}
