/* test_trainer: the training loop end to end on a tiny Mixtral and tiny shards whose
 * documents count upwards (a pattern a model learns in a few steps):
 *   - exact resume: 8 steps straight and 4 + resume + 4 give identical losses and
 *     byte-identical final weights and moments;
 *   - gradient accumulation: 1 micro-batch of 4 rows and 2 of 2 give the same losses (the
 *     loss is the mean over every target of the global batch), with the router's aux loss
 *     off: it is computed per micro-batch by design (docs/math.md), so it legitimately
 *     differs with the split;
 *   - the loss falls; checkpoints are laid out as docs/formats.md says, `latest` names the newest,
 *     only keep_last remain, a stale .tmp folder is swept, the tokenizer is copied;
 *   - metrics.jsonl has a record per step and evaluation, with per-layer expert load.
 * With `--make-data DIR` it only writes the tiny prepared folder (for the script tests). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "data/manifest.h"
#include "data/shard.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "util/file.h"
#include "util/hash.h"

#define SEQ_LEN 16
#define VOCAB 32000

static void die(const char *what, const gale_error *err)
{
    fprintf(stderr, "FAIL %s: %s\n", what, err->msg);
    exit(1);
}

/* Rows of documents BOS, a, a+1, ..., EOS (a in [100, 140), 3 to 12 tokens), concatenated. */
static void write_shard(const char *path, const gale_shard_meta *meta, int n_rows, uint64_t seed, gale_error *err)
{
    gale_shard_writer *w = shard_writer_create(path, meta, 0, err);
    if (!w)
        die(path, err);
    int S = SEQ_LEN + 1;
    int32_t tokens[SEQ_LEN + 1];
    uint16_t segments[SEQ_LEN + 1];
    uint64_t state = seed;
    int doc_left = 0, next = 0;
    for (int r = 0; r < n_rows; r++) {
        uint16_t seg = 0;
        for (int j = 0; j < S; j++) {
            if (doc_left == 0) {
                state = state * 6364136223846793005ull + 1442695040888963407ull;
                doc_left = 3 + (int)((state >> 33) % 10);
                next = 100 + (int)((state >> 40) % 40);
                tokens[j] = 1; /* BOS */
                if (j > 0)
                    seg++;
            } else if (doc_left == 1) {
                tokens[j] = 2; /* EOS */
            } else {
                tokens[j] = next++;
            }
            doc_left--;
            segments[j] = seg;
        }
        if (shard_writer_append(w, tokens, segments, NULL, 1, err))
            die(path, err);
    }
    if (shard_writer_finish(w, n_rows, err))
        die(path, err);
}

static void make_data(const char *dir)
{
    gale_error err;
    char *tok = gale_path_join(getenv("GALE_SHARED") ? getenv("GALE_SHARED") : "/work/shared",
                               "tokenizers/mistral-v1.model");
    gale_manifest man;
    manifest_init(&man);
    man.kind = GALE_SHARD_PRETRAIN;
    man.packing = GALE_SHARD_CONCAT;
    man.seq_len = SEQ_LEN;
    man.tokenizer.path = tok;
    if (gale_sha256_file_hex(tok, man.tokenizer.sha256, &err))
        die("tokenizer", &err);
    man.tokenizer.vocab_size = VOCAB;
    man.tokenizer.bos_id = 1;
    man.tokenizer.eos_id = 2;
    gale_shard_meta meta = {.seq_len = SEQ_LEN, .vocab_size = VOCAB, .bos_id = 1, .eos_id = 2,
                            .kind = GALE_SHARD_PRETRAIN, .packing = GALE_SHARD_CONCAT};
    memcpy(meta.tokenizer_sha256, man.tokenizer.sha256, 65);
    if (gale_mkdir_p(dir, &err))
        die(dir, &err);
    char *train = gale_path_join(dir, "train-00000.h5"), *val = gale_path_join(dir, "val-00000.h5");
    write_shard(train, &meta, 96, 7, &err);
    write_shard(val, &meta, 12, 99, &err);
    if (manifest_add_shard(&man, dir, "train-00000.h5", "train", &err) ||
        manifest_add_shard(&man, dir, "val-00000.h5", "val", &err) || manifest_write(&man, dir, &err))
        die("manifest", &err);
    manifest_free(&man);
    free(train);
    free(val);
}

static const char *config_text(const char *data, const char *run_dir)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "model:\n  model_type: mixtral\n  vocab_size: %d\n  hidden_size: 32\n  intermediate_size: 48\n"
             "  num_hidden_layers: 2\n  num_attention_heads: 4\n  num_key_value_heads: 2\n"
             "  num_local_experts: 4\n  num_experts_per_tok: 2\n  max_position_embeddings: 64\n"
             "  rope_theta: 10000\n  router_aux_loss_coef: 0.02\n"
             "data:\n  sources: [%s]\n  seq_len: %d\n  micro_batch: 4\n  grad_accum: 1\n"
             "optim:\n  lr: 1e-2\n  min_lr: 1e-3\n  warmup: 2\n  schedule: cosine\n"
             "run:\n  steps: 8\n  seed: 5\n  eval_every: 4\n  eval_batches: 2\n  checkpoint_every: 2\n"
             "  keep_last: 2\n  dir: %s\n"
             "backend:\n  threads: 1\n",
             VOCAB, data, SEQ_LEN, run_dir);
    return buf;
}

static void train(const char *data, const char *run_dir, char **sets, int n_sets, long stop_at)
{
    gale_error err = {{0}};
    const char *text = config_text(data, run_dir);
    gale_run_config *cfg = run_config_parse(text, strlen(text), "test.yaml", sets, n_sets, &err);
    if (!cfg)
        die("config", &err);
    gale_train_options opts = {.stop_at = stop_at};
    if (trainer_run(cfg, &opts, &err))
        die(run_dir, &err);
    run_config_free(cfg);
}

/* The train records' losses of a run, by step (1-based), and the eval count. */
static int read_losses(const char *run_dir, double *loss, int max_steps, int *n_eval, json_t **experts)
{
    gale_error err;
    char *path = gale_path_join(run_dir, GALE_METRICS_FILE);
    json_t *recs = metrics_read(path, &err);
    free(path);
    if (!recs)
        die("metrics", &err);
    int n = 0;
    *n_eval = 0;
    size_t i;
    json_t *r;
    json_array_foreach(recs, i, r)
    {
        const char *kind = json_string_value(json_object_get(r, "kind"));
        long step = (long)json_integer_value(json_object_get(r, "step"));
        if (kind && !strcmp(kind, "eval")) {
            (*n_eval)++;
            continue;
        }
        if (step < 1 || step > max_steps)
            continue;
        loss[step - 1] = json_real_value(json_object_get(r, "loss"));
        if (experts && step == 1)
            *experts = json_incref(json_object_get(r, "experts"));
        n++;
    }
    json_decref(recs);
    return n;
}

static int files_equal(const char *a, const char *b)
{
    gale_error err;
    size_t la, lb;
    char *x = gale_read_file(a, &la, &err), *y = gale_read_file(b, &lb, &err);
    int same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

static char *join3(const char *a, const char *b, const char *c)
{
    char *ab = gale_path_join(a, b), *abc = gale_path_join(ab, c);
    free(ab);
    return abc;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--make-data")) {
        make_data(argv[2]);
        return 0;
    }
    MPI_Init(&argc, &argv);
    char tmpl[] = "/tmp/gale-test-trainer-XXXXXX";
    char *root = mkdtemp(tmpl);
    char *data = gale_path_join(root, "data");
    make_data(data);
    char *straight = gale_path_join(root, "straight"), *resumed = gale_path_join(root, "resumed"),
         *accum = gale_path_join(root, "accum"), *whole = gale_path_join(root, "whole");

    train(data, straight, NULL, 0, 0);
    /* a crash mid-save leaves a .tmp folder: the resumed run must sweep it */
    char *stale = join3(resumed, "checkpoints", "step_00000099.tmp");
    train(data, resumed, NULL, 0, 4);
    gale_error err;
    CHECK(gale_mkdir_p(stale, &err) == 0);
    train(data, resumed, NULL, 0, 0);
    char *sets[] = {"moe.aux_coef=0", "data.micro_batch=2", "data.grad_accum=2"};
    train(data, whole, sets, 1, 0);
    train(data, accum, sets, 3, 0);

    double a[8] = {0}, b[8] = {0}, c[8] = {0}, w[8] = {0};
    int eval_a, eval_b, eval_c, eval_w;
    json_t *experts = NULL;
    CHECK(read_losses(straight, a, 8, &eval_a, &experts) == 8);
    CHECK(read_losses(resumed, b, 8, &eval_b, NULL) == 8);
    CHECK(read_losses(accum, c, 8, &eval_c, NULL) == 8);
    CHECK(read_losses(whole, w, 8, &eval_w, NULL) == 8);
    CHECK(eval_a == 3 && eval_b == 3 && eval_c == 3); /* the baseline at step 0, then steps 4 and 8 */
    for (int s = 0; s < 8; s++) {
        CHECK_MSG(a[s] == b[s], "resume: step %d loss %.17g straight, %.17g resumed", s + 1, a[s], b[s]);
        CHECK_MSG(fabs(w[s] - c[s]) <= 1e-5 * fabs(w[s]),
                  "accumulation: step %d loss %.9g with 1x4 rows, %.9g with 2x2", s + 1, w[s], c[s]);
    }
    printf("losses: first %.4f last %.4f\n", a[0], a[7]);
    CHECK(a[7] < a[0] - 1.0); /* it learns */

    /* the final checkpoints of the straight and resumed runs are the same bytes */
    const char *files[] = {"model.safetensors", "optimizer.safetensors", "config.json", "tokenizer.model"};
    for (int i = 0; i < 4; i++) {
        char *x = join3(straight, "checkpoints/step_00000008", files[i]);
        char *y = join3(resumed, "checkpoints/step_00000008", files[i]);
        CHECK_MSG(files_equal(x, y), "%s differs between the straight and resumed runs", files[i]);
        free(x);
        free(y);
    }
    /* layout: latest names step 8; keep_last 2 leaves steps 6 and 8; the .tmp is gone */
    char *latest = checkpoint_latest(straight, &err);
    CHECK(latest && strstr(latest, "checkpoints/step_00000008"));
    char *gone = join3(straight, "checkpoints", "step_00000004"), *kept = join3(straight, "checkpoints", "step_00000006");
    CHECK(!gale_path_exists(gone) && gale_path_exists(kept));
    CHECK(!gale_path_exists(stale));
    gale_train_state st;
    CHECK(checkpoint_read_state(latest, &st, &err) == 0);
    CHECK(st.step == 8 && st.optimizer_step == 8 && st.world_size == 1 && st.seed == 5);
    CHECK(st.tokens_seen > 8 * 4 * (SEQ_LEN - 2) && st.loader && st.config);
    train_state_clear(&st);
    struct model_config mc;
    char *cfg_json = gale_path_join(latest, "config.json");
    CHECK(model_config_load(cfg_json, &mc, &err) == 0 && mc.num_experts == 4 && mc.hidden_size == 32);
    /* per-layer expert load: 2 layers, and the counts cover every routed slot */
    CHECK(json_array_size(experts) == 2);
    json_t *l0 = json_array_get(experts, 0);
    CHECK(json_number_value(json_object_get(l0, "max")) >= json_number_value(json_object_get(l0, "min")));
    CHECK(json_number_value(json_object_get(l0, "cv")) >= 0);
    json_decref(experts);

    /* a run already complete does nothing more */
    train(data, straight, NULL, 0, 0);
    double again[8];
    int eval_again;
    CHECK(read_losses(straight, again, 8, &eval_again, NULL) == 8 && eval_again == 3);

    free(cfg_json);
    free(latest);
    free(gone);
    free(kept);
    free(stale);
    gale_remove_tree(root, &err);
    free(data);
    free(straight);
    free(resumed);
    free(accum);
    free(whole);
    MPI_Finalize();
    return check_report("test_trainer");
}
