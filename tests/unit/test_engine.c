/* test_engine: the engine's rules that the fixtures do not see. Host transfers in a training
 * step, counted by a wrapper around the CPU backend: none per layer but a Mixtral layer's expert
 * counts, the statistics read once per step, and none between them and the clipped AdamW update
 * (the gradient norm is read after it). Recomputation per layer: the same losses and
 * gradients, to the bit, as keeping the activations, for less memory in the plan. The memory
 * plan against the peak resident memory of a real training step. The head's products run over
 * the rows with a target only, in training and in evaluation's loss, which allocates nothing
 * once the training pass has run (test_model compares their results with the full pass). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu_backend.h"
#include "model/model.h"
#include "tiny_model.h"
#include "optim/adamw.h"

/* ---- a backend that counts its host transfers ---- */

static const struct gale_ops *inner;
static long uploads, downloads, waits;
/* downloads and waits when the step's first AdamW update was queued (-1: none yet) */
static long downloads_at_update = -1, waits_at_update = -1;

static void counting_upload(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    uploads++;
    inner->upload(be, dst, src, bytes);
}

static void counting_download(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    downloads++;
    inner->download(be, dst, src, bytes);
}

static long allocs;

static void *counting_alloc(struct gale_backend *be, size_t bytes)
{
    allocs++;
    return inner->alloc(be, bytes);
}

static void counting_synchronize(struct gale_backend *be)
{
    waits++;
    inner->synchronize(be);
}

static void noting_adamw_step(struct gale_backend *be, float *p, float *p_compute, const float *g,
                              float *m, float *v, size_t n, const float *grad_scale, float lr,
                              float beta1, float beta2, float eps, float weight_decay, int step)
{
    if (downloads_at_update < 0) {
        downloads_at_update = downloads;
        waits_at_update = waits;
    }
    inner->adamw_step(be, p, p_compute, g, m, v, n, grad_scale, lr, beta1, beta2, eps,
                      weight_decay, step);
}

/* the rows of the widest product over the vocabulary since reset: the head's (-1: none) */
static int vocab, head_rows = -1;

static void noting_matmul(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k,
                          float alpha, const float *a, int lda, const float *b, int ldb,
                          float beta, float *c, int ldc, struct gale_gemm_types types)
{
    if (!trans_a && trans_b && n == vocab && m > head_rows)
        head_rows = m;  /* logits = hf lm_head^T */
    inner->matmul(be, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, types);
}

/* The CPU backend with counted transfers and waits, noting them at the first update: the same
 * context, its own table. Freed with free. */
static struct gale_backend *counting_backend(void)
{
    static struct gale_ops ops;
    struct gale_backend *cpu = cpu_backend();
    inner = cpu->ops;
    ops = *cpu->ops;
    ops.upload = counting_upload;
    ops.download = counting_download;
    ops.synchronize = counting_synchronize;
    ops.adamw_step = noting_adamw_step;
    ops.matmul = noting_matmul;
    ops.alloc = counting_alloc;
    struct gale_backend *be = malloc(sizeof *be);
    *be = *cpu;
    be->ops = &ops;
    return be;
}

static struct model_config tiny(int experts, int layers)
{
    struct model_config c = tiny_model(41, 24, layers, experts, 0.02);
    c.router_aux_loss_coef = 0.02; /* a dense model keeps its coefficient: it is unused there */
    return c;
}

#define B 2
#define T 9
#define MICRO 3

struct transfers {
    long up, down;
    /* between the statistics' read and the queueing of the update (must be 0 and 0), and
     * after it (the norm: 1) */
    long down_before_update, waits_before_update, down_after_update;
};

/* The host transfers of one optimizer step of MICRO micro-batches, clipping and AdamW as gale
 * train takes it, after a warm-up step. */
static struct transfers step_transfers(struct gale_backend *be, int experts, int layers)
{
    struct model_config cfg = tiny(experts, layers);
    struct model_options opts = {.aux_form = MODEL_AUX_HF, .router_z_loss_coef = 1e-3};
    gale_error err;
    struct model *m = model_create(&cfg, be, &opts, &err);
    CHECK_MSG(m != NULL, "model_create: %s", m ? "" : err.msg);
    struct transfers t = {-1, -1, -1, -1, -1};
    struct adamw opt;
    struct adamw_config ac = adamw_config_default();
    if (!m || adamw_init(&opt, &ac, be, 0, model_get_layout(m)->numel, &err)) {
        CHECK_MSG(0, "set-up: %s", err.msg);
        model_free(m);
        return t;
    }
    model_init_random(m, 0.02, 7);
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 7 + 3) % cfg.vocab_size;
        targets[i] = (i * 5 + 1) % cfg.vocab_size;
    }
    struct model_batch batch = {.batch = B, .seq = T, .tokens = tokens, .targets = targets};
    struct model_stats st;
    for (int pass = 0; pass < 2; pass++) {  /* the first allocates and uploads the weights */
        uploads = downloads = waits = 0;
        downloads_at_update = waits_at_update = -1;
        model_zero_grads(m);
        model_stats_reset(m);
        for (int i = 0; i < MICRO; i++)
            CHECK_MSG(model_forward_backward(m, &batch, B * T * MICRO, 1.0 / MICRO, NULL,
                                             &err) == 0,
                      "forward_backward: %s", err.msg);
        CHECK_MSG(model_stats_read(m, &st, &err) == 0, "stats: %s", err.msg);
        long stats_down = downloads, stats_waits = waits;
        double norm;
        adamw_step(&opt, model_get_layout(m), model_params(m), model_weights(m), model_grads(m),
                   ac.lr, 1.0);
        CHECK_MSG(adamw_step_norm(&opt, &norm, &err) == 0 && norm > 0, "norm %g: %s", norm,
                  err.msg);
        t.down_before_update = downloads_at_update - stats_down;
        t.waits_before_update = waits_at_update - stats_waits;
        t.down_after_update = downloads - downloads_at_update;
    }
    t.up = uploads;
    t.down = downloads;
    adamw_free(&opt);
    CHECK_MSG(st.n_targets == B * T * MICRO, "%ld targets counted, %d expected", st.n_targets,
              B * T * MICRO);
    model_free(m);
    return t;
}

static void test_transfers(void)
{
    struct gale_backend *be = counting_backend();
    for (int experts = 0; experts <= 4; experts += 4) {
        struct transfers two = step_transfers(be, experts, 2);
        struct transfers five = step_transfers(be, experts, 5);
        /* what 3 more layers add, per micro-batch */
        double up = (five.up - two.up) / 3.0 / MICRO, down = (five.down - two.down) / 3.0 / MICRO;
        printf("%s: a step of %d micro-batches makes %ld uploads and %ld downloads with 2 layers, "
               "%ld and %ld with 5: %.0f and %.0f per layer and micro-batch\n",
               experts ? "mixtral" : "dense", MICRO, two.up, two.down, five.up, five.down, up,
               down);
        CHECK_MSG(up == 0, "%s: %.2f uploads per layer and micro-batch",
                  experts ? "mixtral" : "dense", up);
        CHECK_MSG(down == (experts ? 1 : 0), "%s: %.2f downloads per layer and micro-batch, only "
                  "a Mixtral layer's expert counts may come back", experts ? "mixtral" : "dense",
                  down);
        /* what is left is per micro-batch (the batch; a Mixtral's router weights) or per step */
        long per_step_down = two.down - (experts ? 2L * MICRO : 0);
        CHECK_MSG(per_step_down == 2, "%s: %ld downloads per step beside the expert counts, "
                  "the statistics come back in one and the gradient norm in another",
                  experts ? "mixtral" : "dense", per_step_down);
        /* clipping: nothing read back or waited for between the statistics and the update */
        CHECK_MSG(two.down_before_update == 0 && two.waits_before_update == 0 &&
                      two.down_after_update == 1,
                  "%s: %ld downloads and %ld waits between the statistics and the AdamW update, "
                  "%ld after it: the gradient norm must be read once, after the update",
                  experts ? "mixtral" : "dense", two.down_before_update, two.waits_before_update,
                  two.down_after_update);
        CHECK_MSG(two.up == MICRO * (experts ? 5 : 3), "%s: %ld uploads for %d micro-batches: "
                  "tokens, positions, targets (and the router's loss weights)",
                  experts ? "mixtral" : "dense", two.up, MICRO);
    }
    free(be);
}

/* The head of a training pass runs its products over the rows with a target: all of them, the
 * unmasked ones of a batch with ignored targets (an SFT prompt, a padded tail), none of a batch
 * without a target. */
static void test_head_rows(void)
{
    struct gale_backend *be = counting_backend();
    for (int experts = 0; experts <= 4; experts += 4) {
        struct model_config cfg = tiny(experts, 2);
        gale_error err;
        struct model *m = model_create(&cfg, be, NULL, &err);
        CHECK_MSG(m != NULL, "model_create: %s", m ? "" : err.msg);
        if (!m)
            continue;
        model_init_random(m, 0.02, 7);
        vocab = cfg.vocab_size;
        int32_t tokens[B * T], all[B * T], prompt[B * T], none[B * T];
        int valid = 0;
        for (int i = 0; i < B * T; i++) {
            tokens[i] = (i * 7 + 3) % cfg.vocab_size;
            all[i] = (i * 5 + 1) % cfg.vocab_size;
            prompt[i] = i % T < 4 || i % T == T - 1 ? -100 : all[i]; /* a prompt and a padded end */
            none[i] = -100;
            valid += prompt[i] >= 0;
        }
        const int32_t *targets[] = {all, prompt, none};
        const int want[] = {B * T, valid, -1}, n = 3;
        for (int c = 0; c < n; c++) {
            struct model_batch batch = {.batch = B, .seq = T, .tokens = tokens,
                                        .targets = targets[c]};
            head_rows = -1;
            model_zero_grads(m);
            CHECK_MSG(model_forward_backward(m, &batch, B * T, 1.0, NULL, &err) == 0,
                      "forward_backward: %s", err.msg);
            const char *what = c == 0 ? "every target" : c == 1 ? "a prompt and a padded end ignored"
                                                                : "no target";
            CHECK_MSG(head_rows == want[c], "%s, %s: the head's products over %d rows, %d expected",
                      experts ? "mixtral" : "dense", what, head_rows, want[c]);
            /* evaluation's loss: the same rows, and no buffer beyond the training pass's */
            struct model_loss loss;
            head_rows = -1;
            allocs = 0;
            CHECK_MSG(model_loss(m, &batch, 0, &loss, &err) == 0, "model_loss: %s", err.msg);
            CHECK_MSG(head_rows == want[c] && allocs == 0, "%s, %s: model_loss's head over %d rows "
                      "(%d expected), %ld allocations (0 expected)", experts ? "mixtral" : "dense",
                      what, head_rows, want[c], allocs);
        }
        model_free(m);
    }
    vocab = 0;
    free(be);
}

/* Losses and gradients of two micro-batches (documents, z-loss) with opts. */
static int run_step(const struct model_config *cfg, const struct model_options *opts,
                    double *loss, float **grads, size_t *numel)
{
    gale_error err;
    struct model *m = model_create(cfg, cpu_backend(), opts, &err);
    if (!m) {
        FAIL("model_create: %s", err.msg);
        return -1;
    }
    model_init_random(m, 0.05, 11);
    int32_t tokens[B * T], targets[B * T], seg[B * T];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (i * 11 + 5) % cfg->vocab_size;
        targets[i] = i % 7 == 3 ? -100 : (i * 3 + 2) % cfg->vocab_size;
        seg[i] = (i % T) < 4 ? 0 : 1;
    }
    struct model_batch batch = {.batch = B, .seq = T, .tokens = tokens, .targets = targets,
                                .segments = seg};
    model_zero_grads(m);
    model_stats_reset(m);
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        tokens[i] = (tokens[i] + 1) % cfg->vocab_size;
        rc = model_forward_backward(m, &batch, 2 * B * T, 0.5, NULL, &err);
    }
    struct model_stats st;
    if (rc == 0)
        rc = model_stats_read(m, &st, &err);
    if (rc) {
        FAIL("step: %s", err.msg);
        model_free(m);
        return -1;
    }
    loss[0] = st.ce_sum;
    loss[1] = st.aux_sum;
    loss[2] = st.z_sum;
    *numel = model_get_layout(m)->numel;
    *grads = malloc(*numel * sizeof(float));
    model_grads_download(m, *grads);
    model_free(m);
    return 0;
}

static void test_recompute(void)
{
    omp_set_num_threads(1);  /* rmsnorm_bwd's per-thread sums meet in any order otherwise */
    for (int experts = 0; experts <= 4; experts += 4) {
        struct model_config cfg = tiny(experts, 3);
        cfg.sliding_window = 5;
        struct model_options keep = {.aux_form = MODEL_AUX_PER_LAYER, .router_z_loss_coef = 1e-2};
        struct model_options again = keep;
        again.recompute = MODEL_RECOMPUTE_LAYER;
        double la[3], lb[3];
        float *ga = NULL, *gb = NULL;
        size_t n = 0;
        if (run_step(&cfg, &keep, la, &ga, &n) == 0 && run_step(&cfg, &again, lb, &gb, &n) == 0) {
            CHECK_MSG(memcmp(la, lb, sizeof la) == 0, "%s: losses %.17g %.17g %.17g with "
                      "recomputation, %.17g %.17g %.17g without", experts ? "mixtral" : "dense",
                      lb[0], lb[1], lb[2], la[0], la[1], la[2]);
            CHECK_MSG(memcmp(ga, gb, n * sizeof *ga) == 0,
                      "%s: gradients differ with recomputation", experts ? "mixtral" : "dense");
        }
        free(ga);
        free(gb);
        struct model_plan_layout lay = {.micro_batch = 4, .seq_len = 256, .compute = GALE_F32,
                                        .ep_size = 1};
        struct model_plan none, layer;
        gale_error err;
        CHECK(model_plan(&cfg, &lay, &none, &err) == 0);
        lay.recompute = MODEL_RECOMPUTE_LAYER;
        CHECK(model_plan(&cfg, &lay, &layer, &err) == 0);
        /* 3 layers: the kept activations of 2 of them go, but for their inputs */
        CHECK_MSG(layer.bytes[PLAN_ACTIVATIONS] < none.bytes[PLAN_ACTIVATIONS] / 2,
                  "recomputation plans %zu bytes of activations, keeping them %zu",
                  layer.bytes[PLAN_ACTIVATIONS], none.bytes[PLAN_ACTIVATIONS]);
    }
    omp_set_num_threads(omp_get_num_procs());
}

/* kB of the line `key` of /proc/self/status (VmRSS, VmHWM). */
static long proc_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            kb = atol(line + n + 1);
    if (f)
        fclose(f);
    return kb;
}

/* One training step (forward, backward, AdamW) of cfg over batch x seq tokens. */
static void train_one_step(const struct model_config *cfg, int batch, int seq)
{
    gale_error err;
    struct gale_backend *be = cpu_backend();
    struct model *m = model_create(cfg, be, NULL, &err);
    struct adamw opt;
    struct adamw_config ac = adamw_config_default();
    if (!m || adamw_init(&opt, &ac, be, 0, model_get_layout(m)->numel, &err)) {
        FAIL("set-up: %s", err.msg);
        model_free(m);
        return;
    }
    model_init_random(m, 0.02, 3);
    int n = batch * seq;
    int32_t *tokens = malloc(sizeof(int32_t) * n), *targets = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        tokens[i] = (i * 131 + 7) % cfg->vocab_size;
        targets[i] = (i * 37 + 1) % cfg->vocab_size;
    }
    struct model_batch b = {.batch = batch, .seq = seq, .tokens = tokens, .targets = targets};
    struct model_loss loss;
    model_zero_grads(m);
    CHECK_MSG(model_forward_backward(m, &b, 0, 1, &loss, &err) == 0, "step: %s", err.msg);
    adamw_step(&opt, model_get_layout(m), model_params(m), model_weights(m), model_grads(m),
               ac.lr, 0);
    free(tokens);
    free(targets);
    adamw_free(&opt);
    model_free(m);
}

/* The plan of a model whose arenas dominate the process (about 0.7 GB) against the peak
 * resident memory a step adds to the process: within 10%. */
static void test_plan_rss(void)
{
#if defined(__SANITIZE_ADDRESS__)
    printf("plan against peak RSS: skipped under AddressSanitizer (its shadow memory and "
           "quarantine are resident too)\n");
    return;
#endif
    struct model_config small = tiny(0, 2), cfg = tiny(0, 4);
    cfg.vocab_size = 32000;
    cfg.hidden_size = 512;
    cfg.intermediate_size = 1024;
    cfg.num_heads = cfg.num_kv_heads = 8;
    cfg.head_dim = 64;
    int batch = 2, seq = 64;
    train_one_step(&small, batch, seq);  /* BLAS's and OpenMP's buffers join the baseline */
    long base_kb = proc_status_kb("VmRSS");
    struct model_plan_layout lay = {.micro_batch = batch, .seq_len = seq, .compute = GALE_F32,
                                    .ep_size = 1};
    struct model_plan plan;
    gale_error err;
    CHECK(model_plan(&cfg, &lay, &plan, &err) == 0);
    train_one_step(&cfg, batch, seq);
    long peak_kb = proc_status_kb("VmHWM");
    double measured = (peak_kb - base_kb) * 1024.0, planned = (double)plan.total;
    printf("plan %.1f MB, measured peak %.1f MB above a baseline of %.1f MB: %+.1f%%\n",
           planned / 1e6, measured / 1e6, base_kb * 1024.0 / 1e6,
           100 * (measured - planned) / planned);
    CHECK_MSG(base_kb > 0 && peak_kb > 0 && measured > 0.9 * planned && measured < 1.1 * planned,
              "peak RSS grew by %.1f MB, the plan says %.1f MB", measured / 1e6, planned / 1e6);
}

static int no_moe(const struct gale_backend *be, enum gale_op op, enum gale_dtype dtype)
{
    return op != GALE_OP_MOE && inner->supports_op(be, op, dtype);
}

/* A model asks its backend for the ops it runs: one without experts cannot run a Mixtral. */
static void test_supports_op(void)
{
    static struct gale_ops ops;
    struct gale_backend *cpu = cpu_backend(), be = *cpu;
    inner = cpu->ops;
    ops = *cpu->ops;
    ops.supports_op = no_moe;
    be.ops = &ops;
    struct model_config dense = tiny(0, 2), moe = tiny(4, 2);
    gale_error err;
    struct model *m = model_create(&dense, &be, NULL, &err);
    CHECK_MSG(m != NULL, "a dense model on a backend without experts: %s", m ? "" : err.msg);
    model_free(m);
    m = model_create(&moe, &be, NULL, &err);
    CHECK_MSG(!m && strstr(err.msg, "does not run moe in fp32"),
              "a Mixtral on a backend without experts: %s", m ? "created" : err.msg);
    model_free(m);
}

int main(void)
{
    test_supports_op();
    test_plan_rss();
    test_transfers();
    test_head_rows();
    test_recompute();
    gale_backend_free(cpu_backend());
    return check_report("test_engine");
}
