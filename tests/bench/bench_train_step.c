/* bench_train_step: the gale side of bench_train_cpu.sh and, with --backend cuda, of the GPU
 * benchmark in tests/cuda/device_check.sh. Times full training steps (forward + backward,
 * global-norm clip to 1.0, AdamW; the backend synchronized at each step's end) of the model in a folder
 * written by `bench_torch_step.py make-inputs` (config.json, model.safetensors, and
 * batch.safetensors: "tokens", I64 [B, T+1]), so that gale and the PyTorch reference train the
 * same weights on the same tokens. Prints one JSON line: median step time, tokens per second,
 * every timed step's duration, every step's loss and gradient norm (for the cross-check against
 * the PyTorch side), and the CLOCK_MONOTONIC window of the timed steps (so that a profile
 * recorded with `perf record -k monotonic` can keep only their samples).
 *
 *   bench_train_step --dir DIR [--steps N] [--warmup W] [--threads K] [--save OUT]
 *                    [--backend cpu|cuda] [--precision fp32|bf16] [--random B T]
 *                    [--mask-fraction F] [--head-all-rows]
 *
 * --mask-fraction F: the first F of each row's targets are ignored, as an SFT prompt's are
 * (the default data masks none); --head-all-rows runs the head over those rows anyway, as
 * before it skipped them, to time what the skip saves.
 *
 * --random B T: DIR holds only config.json; the weights are drawn (std 0.02) and the batch is
 * B x T random tokens (the GPU shapes, where no reference side shares the weights).
 *
 * --save writes the trained weights (config.json, model.safetensors) to OUT afterwards, to
 * compare them with the PyTorch reference's after the same steps.
 */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/config.h"
#include "model/cpu/blas_core.h"
#include "model/cpu/blas_pool.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/safetensors.h"
#include "optim/adamw.h"
#include "util/error.h"
#include "util/file.h"

struct bench_options {
    const char *dir;
    const char *save;      /* NULL: do not save the trained weights */
    const char *backend;   /* "cpu" or "cuda" */
    enum gale_dtype precision;
    int steps, warmup, threads;
    int random_batch, random_seq;  /* > 0: random weights and tokens */
    double mask_fraction;          /* of each row's targets ignored, from its start */
    int head_all_rows;             /* model_set_head_all_rows */
};

/* The batch of the folder: rows of T + 1 tokens split into inputs row[:-1], targets row[1:]. */
struct bench_batch {
    int batch, seq;
    int32_t *tokens, *targets;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n)
{
    qsort(values, (size_t)n, sizeof *values, compare_doubles);
    return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

static int parse_positive(const char *text, const char *flag, int minimum, int *out)
{
    char *end;
    long value = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || value < minimum || value > 1000000) {
        fprintf(stderr, "bench_train_step: %s wants an integer >= %d, got \"%s\"\n", flag, minimum, text);
        return -1;
    }
    *out = (int)value;
    return 0;
}

static void usage(FILE *to)
{
    fprintf(to, "usage: bench_train_step --dir DIR [--steps N] [--warmup W] [--threads K] [--save OUT]\n"
                "                        [--backend cpu|cuda] [--precision fp32|bf16] [--random B T]\n"
                "                        [--mask-fraction F] [--head-all-rows]\n"
                "Times training steps (forward, backward, clip 1.0, AdamW) of the model in DIR\n"
                "(config.json, model.safetensors, batch.safetensors from bench_torch_step.py make-inputs;\n"
                "with --random B T only config.json: random weights and B x T random tokens);\n"
                "--save writes the trained weights to OUT afterwards; --mask-fraction F ignores the\n"
                "first F of each row's targets (an SFT prompt); --head-all-rows runs the head over them.\n");
}

static int parse_options(int argc, char **argv, struct bench_options *opt)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},     {"steps", required_argument, NULL, 's'},
        {"warmup", required_argument, NULL, 'w'},  {"threads", required_argument, NULL, 't'},
        {"save", required_argument, NULL, 'o'},    {"help", no_argument, NULL, 'h'},
        {"backend", required_argument, NULL, 'b'}, {"precision", required_argument, NULL, 'p'},
        {"random", required_argument, NULL, 'r'},  {"mask-fraction", required_argument, NULL, 'm'},
        {"head-all-rows", no_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    *opt = (struct bench_options){.dir = NULL, .save = NULL, .backend = "cpu", .precision = GALE_F32,
                                  .steps = 10, .warmup = 2, .threads = 1};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case 'd': opt->dir = optarg; break;
        case 'o': opt->save = optarg; break;
        case 'b': opt->backend = optarg; break;
        case 'p':
            if (gale_dtype_parse(optarg, &opt->precision) ||
                (opt->precision != GALE_F32 && opt->precision != GALE_BF16)) {
                fprintf(stderr, "bench_train_step: --precision wants fp32 or bf16, got \"%s\"\n", optarg);
                rc = -1;
            }
            break;
        case 'r':
            rc = parse_positive(optarg, "--random B", 1, &opt->random_batch);
            if (rc == 0 && optind < argc)
                rc = parse_positive(argv[optind++], "--random T", 1, &opt->random_seq);
            else if (rc == 0)
                rc = -1;
            break;
        case 'm': {
            char *end;
            opt->mask_fraction = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(opt->mask_fraction >= 0 && opt->mask_fraction <= 1)) {
                fprintf(stderr, "bench_train_step: --mask-fraction wants a number in [0, 1], got \"%s\"\n", optarg);
                rc = -1;
            }
            break;
        }
        case 'a': opt->head_all_rows = 1; break;
        case 's': rc = parse_positive(optarg, "--steps", 1, &opt->steps); break;
        case 'w': rc = parse_positive(optarg, "--warmup", 0, &opt->warmup); break;
        case 't': rc = parse_positive(optarg, "--threads", 1, &opt->threads); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
        if (rc)
            return -1;
    }
    if (!opt->dir || optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static int load_batch(const char *dir, int vocab_size, struct bench_batch *out, gale_error *err)
{
    char *path = gale_path_join(dir, "batch.safetensors");
    struct safetensors_set set;
    int rc = -1;
    if (safetensors_open(path, &set, err)) {
        free(path);
        return -1;
    }
    const struct safetensors_tensor *t = safetensors_find(&set, "tokens");
    if (!t || t->ndim != 2 || t->shape[0] < 1 || t->shape[1] < 2) {
        gale_fail(err, "%s: wants a tensor \"tokens\" of shape [B, T+1] with T >= 1", path);
        goto done;
    }
    int64_t *rows = gale_xmalloc(t->numel * sizeof *rows);
    if (safetensors_read_i64(t, rows, err)) {
        free(rows);
        goto done;
    }
    out->batch = (int)t->shape[0];
    out->seq = (int)t->shape[1] - 1;
    size_t n = (size_t)out->batch * (size_t)out->seq;
    out->tokens = gale_xmalloc(n * sizeof *out->tokens);
    out->targets = gale_xmalloc(n * sizeof *out->targets);
    for (int b = 0; b < out->batch; b++)
        for (int s = 0; s <= out->seq; s++) {
            int64_t id = rows[(size_t)b * (size_t)(out->seq + 1) + (size_t)s];
            if (id < 0 || id >= vocab_size) {
                gale_fail(err, "%s: tokens[%d][%d] = %lld is outside the vocabulary of %d", path, b, s,
                          (long long)id, vocab_size);
                free(rows);
                free(out->tokens);
                free(out->targets);
                goto done;
            }
            if (s < out->seq)
                out->tokens[(size_t)b * (size_t)out->seq + (size_t)s] = (int32_t)id;
            if (s > 0)
                out->targets[(size_t)b * (size_t)out->seq + (size_t)(s - 1)] = (int32_t)id;
        }
    free(rows);
    rc = 0;
done:
    safetensors_close(&set);
    free(path);
    return rc;
}

/* B x T random tokens, each row's targets its inputs shifted by one. */
static void random_batch(int batch, int seq, int vocab_size, struct bench_batch *out)
{
    size_t n = (size_t)batch * seq;
    uint64_t x = 0x2545f4914f6cdd1dull;
    out->batch = batch;
    out->seq = seq;
    out->tokens = gale_xmalloc(n * sizeof *out->tokens);
    out->targets = gale_xmalloc(n * sizeof *out->targets);
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        out->tokens[i] = (int32_t)(x % (uint64_t)vocab_size);
    }
    for (size_t i = 0; i < n; i++)
        out->targets[i] = (i + 1) % (size_t)seq ? out->tokens[i + 1] : -100;
}

static void print_series(const char *key, const double *values, int n)
{
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++)
        printf("%s%.9g", i ? ", " : "", values[i]);
    printf("]");
}

static int run(const struct bench_options *opt, gale_error *err)
{
    char *config_path = gale_path_join(opt->dir, "config.json");
    struct model_config cfg;
    int rc = model_config_load(config_path, &cfg, err);
    free(config_path);
    if (rc)
        return -1;
    struct bench_batch data;
    if (opt->random_batch > 0)
        random_batch(opt->random_batch, opt->random_seq, cfg.vocab_size, &data);
    else if (load_batch(opt->dir, cfg.vocab_size, &data, err))
        return -1;
    struct gale_backend *be = gale_backend_create(opt->backend, opt->precision, err);
    const struct model_options model_opts = {.aux_form = MODEL_AUX_HF, .router_z_loss_coef = 0.0};
    struct model *m = be ? model_create(&cfg, be, &model_opts, err) : NULL;
    if (m)
        model_own_backend(m);
    else
        gale_backend_free(be);
    if (m && opt->random_batch > 0)
        model_init_random(m, 0.02, 1);
    if (!m || (opt->random_batch == 0 && model_load_hf(m, opt->dir, err))) {
        model_free(m);
        free(data.tokens);
        free(data.targets);
        return -1;
    }
    const struct model_layout *layout = model_get_layout(m);
    struct adamw_config adamw_cfg = adamw_config_default();
    struct adamw adamw;
    if (adamw_init(&adamw, &adamw_cfg, be, 0, layout->numel, err)) {
        model_free(m);
        free(data.tokens);
        free(data.targets);
        return -1;
    }
    int prompt = (int)(opt->mask_fraction * data.seq);
    for (int b = 0; b < data.batch; b++)
        for (int t = 0; t < prompt; t++)
            data.targets[(size_t)b * data.seq + t] = -100;
    model_set_head_all_rows(m, opt->head_all_rows);
    const struct model_batch batch = {.batch = data.batch, .seq = data.seq, .tokens = data.tokens,
                                      .targets = data.targets};

    int total = opt->warmup + opt->steps;
    double *losses = gale_xcalloc((size_t)total, sizeof *losses);
    double *norms = gale_xcalloc((size_t)total, sizeof *norms);
    double *times = gale_xcalloc((size_t)opt->steps, sizeof *times);
    double timed_from = 0, timed_to = 0;
    rc = 0;
    for (int step = 0; step < total && rc == 0; step++) {
        double start = now_seconds();
        struct model_loss loss;
        model_zero_grads(m);
        rc = model_forward_backward(m, &batch, 0.0, 1.0, &loss, err);
        if (rc)
            break;
        /* clip to 1.0, the factor fused into AdamW's pass on the device as the trainer does;
         * reading the norm back waits for the step's queued work, as a GPU's step ends */
        adamw_step(&adamw, layout, model_params(m), model_weights(m), model_grads(m), adamw_cfg.lr,
                   1.0);
        rc = adamw_step_norm(&adamw, &norms[step], err);
        double end = now_seconds();
        losses[step] = loss.loss;
        if (step == opt->warmup)
            timed_from = start;
        if (step >= opt->warmup)
            times[step - opt->warmup] = end - start;
        timed_to = end;
    }
    if (rc == 0) {
        printf("{\"impl\": \"gale %s\", \"precision\": \"%s\", \"threads\": %d, \"batch\": %d, \"seq\": %d, \"warmup\": %d, "
               "\"steps\": %d, \"mask_fraction\": %g, \"head_all_rows\": %d, \"timed_from\": %.9f, \"timed_to\": %.9f",
               be->ops->name, gale_dtype_name(be->compute), omp_get_max_threads(), data.batch, data.seq, opt->warmup, opt->steps,
               opt->mask_fraction, opt->head_all_rows, timed_from, timed_to);
        char blas[256];
        blas_core_describe(blas, sizeof blas);
        printf(", \"blas\": \"%s\"", blas);
        print_series("step_times", times, opt->steps);
        double median_step = median(times, opt->steps);  /* sorts times: printed before */
        printf(", \"median_step_s\": %.9g, \"min_step_s\": %.9g, \"tokens_per_s\": %.9g",
               median_step, times[0], (double)data.batch * data.seq / median_step);
        print_series("losses", losses, total);
        print_series("grad_norms", norms, total);
        printf("}\n");
        if (opt->save && (gale_mkdir_p(opt->save, err) || model_save_hf(m, opt->save, err)))
            rc = -1;
    }
    free(losses);
    free(norms);
    free(times);
    adamw_free(&adamw);
    model_free(m);
    free(data.tokens);
    free(data.targets);
    return rc;
}

int main(int argc, char **argv)
{
    struct bench_options opt;
    if (parse_options(argc, argv, &opt))
        return 2;
    /* gale's CPU backend splits its work over OpenMP threads (products included, each block a
     * single-threaded BLAS call): --threads is the OpenMP team's size, as torch.set_num_threads
     * is on the PyTorch side, and OpenBLAS's own pool is stopped as `gale` does at start. */
    blas_core_select(argv);
    omp_set_num_threads(opt.threads);
    blas_pool_stop();
    gale_error err;
    if (run(&opt, &err)) {
        fprintf(stderr, "bench_train_step: %s\n", err.msg);
        return 1;
    }
    return 0;
}
