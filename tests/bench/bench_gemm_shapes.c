/* bench_gemm_shapes: the products of the CPU training-step benchmark's Mistral (batch 4 x seq 256
 * = 1,024 rows, hidden 256, 8 heads / 4 KV heads of 32, SwiGLU 1,024, vocab 32,000), one
 * single-threaded OpenBLAS sgemm each as gale's CPU backend calls it (row-major; N: as stored,
 * T: transposed), timed in thread CPU time (best of R), so that other load on a shared machine
 * counts little. Prints one JSON line per shape, which bench_gemm_shapes.sh hands to
 * bench_gemm_shapes_torch.py to time MKL (torch) on the same shapes.
 * The first line is the core's fp32 multiply-add peak, measured (AVX2+FMA: independent chains of
 * 8-lane FMAs, best of R), which every product's speed is read against.
 * Built with -DBENCH_GEMM_BLIS against BLIS instead (bench_gemm_shapes.sh does, when Debian's
 * libblis-dev is installed), it times BLIS's sgemm on the same shapes: a BLAS that picks its
 * kernels by CPU features at run time, the other way to a fast sgemm.
 *
 *   bench_gemm_shapes [--repeats R]
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef BENCH_GEMM_BLIS
#include <blis.h>
#include <cblas.h>
static void blas_pool_stop(void) { bli_thread_set_num_threads(1); }
static const char *blas_name(void) { return bli_arch_string(bli_arch_query_id()); }
#else
#include <cblas.h>
#include "model/cpu/blas_pool.h"
static const char *blas_name(void) { return openblas_get_corename(); }
#endif

/* C[m, n] = op(A) op(B), op: as stored or transposed. */
static const struct shape {
    const char *name;
    int ta, tb, m, n, k;
} shapes[] = {
    {"lm_head forward, one chunk of 1,024 rows", 0, 1, 1024, 32000, 256},
    {"lm_head forward, a chunk of 262 rows (x4)", 0, 1, 262, 32000, 256},
    {"lm_head weight gradient", 1, 0, 32000, 256, 1024},
    {"lm_head input gradient", 0, 0, 1024, 256, 32000},
    {"q/o forward", 0, 1, 1024, 256, 256},
    {"k/v forward", 0, 1, 1024, 128, 256},
    {"gate/up forward", 0, 1, 1024, 1024, 256},
    {"down forward", 0, 1, 1024, 256, 1024},
    {"q/o weight gradient", 1, 0, 256, 256, 1024},
    {"gate/up weight gradient", 1, 0, 1024, 256, 1024},
    {"down weight gradient", 1, 0, 256, 1024, 1024},
    {"q/o input gradient", 0, 0, 1024, 256, 256},
    {"gate/up input gradient", 0, 0, 1024, 256, 1024},
    {"down input gradient", 0, 0, 1024, 1024, 256},
    {"attention scores, a 64-query block", 0, 1, 64, 256, 32},
};

static double thread_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* GFLOP/s of fp32 FMAs on this core, in thread CPU time: 12 independent chains of 8-lane FMAs,
 * enough to keep two FMA pipes of latency 4-5 busy; 0 without AVX2+FMA. */
__attribute__((target("avx2,fma"))) static double fma_chains_gflops(void)
{
    enum { CHAINS = 12, ITERATIONS = 20000000 };
    __m256 acc[CHAINS], mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm256_set1_ps((float)c);
    double t = thread_seconds();
    for (int i = 0; i < ITERATIONS; i++)
#pragma GCC unroll 12 /* the chains in registers: through memory each FMA waits on a store */
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    t = thread_seconds() - t;
    float sink = 0, lanes[8];
    for (int c = 0; c < CHAINS; c++) {
        _mm256_storeu_ps(lanes, acc[c]);
        sink += lanes[0];
    }
    if (sink == 12345.0f) /* keeps the chains from being optimised away */
        puts("");
    return 2.0 * 8 * CHAINS * (double)ITERATIONS / t * 1e-9;
}

static double fma_peak_gflops(int repeats)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return 0;
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        double g = fma_chains_gflops();
        best = g > best ? g : best;
    }
    return best;
}

int main(int argc, char **argv)
{
    int repeats = 6;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc) {
            repeats = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: bench_gemm_shapes [--repeats R]\n");
            return 2;
        }
    }
    blas_pool_stop();
    printf("{\"peak_gflops\": %.2f, \"isa\": \"AVX2+FMA\"}\n", fma_peak_gflops(repeats));
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const struct shape *p = &shapes[s];
        size_t na = (size_t)p->m * p->k, nb = (size_t)p->k * p->n, nc = (size_t)p->m * p->n;
        float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c = calloc(nc, sizeof *c);
        for (size_t i = 0; i < na; i++)
            a[i] = (float)(i % 7) * 0.01f;
        for (size_t i = 0; i < nb; i++)
            b[i] = (float)(i % 5) * 0.01f;
        int lda = p->ta ? p->m : p->k, ldb = p->tb ? p->k : p->n;
        double best = 1e30;
        for (int r = 0; r < repeats; r++) {
            double t = thread_seconds();
            cblas_sgemm(CblasRowMajor, p->ta ? CblasTrans : CblasNoTrans, p->tb ? CblasTrans : CblasNoTrans,
                        p->m, p->n, p->k, 1.0f, a, lda, b, ldb, 0.0f, c, p->n);
            t = thread_seconds() - t;
            best = t < best ? t : best;
        }
        printf("{\"name\": \"%s\", \"op\": \"%c%c\", \"m\": %d, \"n\": %d, \"k\": %d, \"ms\": %.4f, "
               "\"gflops\": %.2f, \"kernels\": \"%s\"}\n",
               p->name, p->ta ? 'T' : 'N', p->tb ? 'T' : 'N', p->m, p->n, p->k, best * 1e3,
               2.0 * p->m * p->n * p->k / best * 1e-9, blas_name());
        free(a), free(b), free(c);
    }
    return 0;
}
