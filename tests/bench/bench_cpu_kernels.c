/* bench_cpu_kernels: the CPU backend's non-BLAS hot spots of a training step, on one thread, best
 * of 5: cross-entropy forward + gradient over 1,024 x 32,000 logits (the benchmark models' head),
 * the clip's gradient norm and the clip + AdamW update over 29.8 M parameters (the benchmark
 * Mixtral). Prints one line each.
 *
 *   build/bench_cpu_kernels */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "model/ops.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void)
{
    omp_set_num_threads(1);
    gale_error err;
    struct gale_backend *be = gale_backend_create("cpu", GALE_F32, &err);
    if (!be) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    const struct gale_ops *ops = be->ops;
    int rows = 1024, vocab = 32000;
    size_t nl = (size_t)rows * vocab;
    float *x = malloc(nl * sizeof *x), *work = malloc(nl * sizeof *work);
    int32_t *targets = malloc(rows * sizeof *targets);
    for (size_t i = 0; i < nl; i++)
        x[i] = (float)((i * 2654435761u) % 1000) / 100.0f;
    for (int r = 0; r < rows; r++)
        targets[r] = (r * 7919) % vocab;
    double best = 1e9;
    double sums[2] = {0, 0}; /* the CPU's device memory is the host's */
    for (int k = 0; k < 5; k++) {
        for (size_t i = 0; i < nl; i++)
            work[i] = x[i];
        double a = now();
        ops->cross_entropy(be, work, targets, rows, vocab, 1.0f / rows, sums);
        double took = now() - a;
        best = took < best ? took : best;
    }
    printf("cross-entropy forward + gradient: %.1f ms, %.2f ns per logit\n", best * 1e3, best * 1e9 / nl);
    size_t n = 29800000;
    float *p = malloc(n * 4), *g = malloc(n * 4), *m = calloc(n, 4), *v = calloc(n, 4);
    for (size_t i = 0; i < n; i++) {
        p[i] = 0.01f;
        g[i] = 0.001f * (float)(i % 7);
    }
    double best_norm = 1e9, best_step = 1e9;
    for (int k = 0; k < 5; k++) {
        double a = now();
        double sumsq = 0;
        float factor;
        ops->sumsq(be, &sumsq, g, n);
        ops->clip_factor(be, &factor, &sumsq, 1.0);
        double b = now();
        ops->adamw_step(be, p, NULL, g, m, v, n, &factor, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, k + 1);
        double e = now();
        best_norm = b - a < best_norm ? b - a : best_norm;
        best_step = e - b < best_step ? e - b : best_step;
    }
    printf("clip norm: %.1f ms; clip + AdamW: %.1f ms (29.8 M parameters)\n", best_norm * 1e3, best_step * 1e3);
    free(x);
    free(work);
    free(targets);
    free(p);
    free(g);
    free(m);
    free(v);
    gale_backend_free(be);
    return 0;
}
