/* bench_model_fwd_bwd: times the model's forward + backward alone (no optimizer, no data
 * loading) on the CPU backend, for a config.json and a batch shape, on random weights and
 * tokens. Prints one JSON line: median and min seconds per forward+backward, tokens per
 * second, the forward alone, and the process CPU seconds per forward+backward (on a shared
 * machine, with one thread, the CPU time is the better estimate of the uncontended time).
 *
 *   bench_model_fwd_bwd CONFIG.json [--batch B] [--seq T] [--steps N] [--threads K]
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/config.h"
#include "model/model.h"
#include "model/rng.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: bench_model_fwd_bwd CONFIG.json [--batch B] [--seq T] [--steps N] "
                        "[--threads K]\n");
        return 2;
    }
    int batch = 8, seq = 256, steps = 5;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq"))
            seq = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            omp_set_num_threads(atoi(argv[i + 1]));
    }
    gale_error err;
    struct model_config cfg;
    if (model_config_load(argv[1], &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    struct gale_backend *be = gale_backend_create("cpu", GALE_F32, &err);
    struct model *m = be ? model_create(&cfg, be, NULL, &err) : NULL;
    if (!m) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    model_own_backend(m);
    model_init_random(m, cfg.initializer_range, 1);
    int n = batch * seq;
    int32_t *tokens = malloc(sizeof(int32_t) * n), *targets = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        tokens[i] = (int32_t)(gale_rng_bits(2, i) % cfg.vocab_size);
        targets[i] = (int32_t)(gale_rng_bits(3, i) % cfg.vocab_size);
    }
    struct model_batch b = {batch, seq, tokens, targets, NULL, NULL};
    struct model_loss loss;
    double *t = malloc(sizeof(double) * (steps + 1)), fwd = 1e30, cpu = 0;
    model_forward_backward(m, &b, 0, 1, &loss, &err);  /* warm-up: allocations, page faults */
    for (int s = 0; s < steps; s++) {
        double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        model_forward_backward(m, &b, 0, 1, &loss, &err);
        t[s] = now() - t0;
        cpu += clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        t0 = now();
        model_forward(m, &b, 0, &loss, &err);
        double f = now() - t0;
        fwd = f < fwd ? f : fwd;
    }
    qsort(t, steps, sizeof *t, compare_doubles);
    printf("{\"config\": \"%s\", \"batch\": %d, \"seq\": %d, \"threads\": %d, \"params\": %lld, "
           "\"fwd_bwd_median_s\": %.4f, \"fwd_bwd_min_s\": %.4f, \"tokens_per_s\": %.0f, "
           "\"fwd_min_s\": %.4f, \"fwd_bwd_cpu_s\": %.4f, \"loss\": %.4f}\n",
           argv[1], batch, seq, omp_get_max_threads(), model_config_num_params(&cfg), t[steps / 2],
           t[0], n / t[steps / 2], fwd, cpu / steps, loss.loss);
    model_free(m);
    free(tokens), free(targets), free(t);
    return 0;
}
