/* ops_cpu: the fp32 reference backend. Dense products go to OpenBLAS (cblas_sgemm), including
 * attention's per-head QK^T and PV; everything else is OpenMP loops over rows. Host memory is
 * the device memory, so transfers are copies that are done when they return. Its context is
 * its thread team: the OpenMP threads it splits work over (OpenBLAS itself stays at one). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/cpu/kernels_cpu.h"
#include "model/ops.h"
#include "model/rng.h"
#include "util/error.h"

struct cpu_ctx {
    int threads;    /* the team's size */
};

static int cpu_threads(const struct gale_backend *be)
{
    return ((const struct cpu_ctx *)be->ctx)->threads;
}

static int cpu_init(struct gale_backend *be, gale_error *err)
{
    if (be->compute != GALE_F32 && be->compute != GALE_BF16)
        return gale_fail(err, "the cpu backend computes in fp32 or bf16, not %s",
                         gale_dtype_name(be->compute));
    struct cpu_ctx *ctx = gale_xcalloc(1, sizeof *ctx);
    ctx->threads = omp_get_max_threads();
    be->ctx = ctx;
    return 0;
}

static void cpu_destroy(struct gale_backend *be)
{
    free(be->ctx);
    be->ctx = NULL;
}

static void cpu_synchronize(struct gale_backend *be)
{
}

static int cpu_supports_op(const struct gale_backend *be, enum gale_op op, enum gale_dtype dtype)
{
    return op < GALE_OP_COUNT && (dtype == GALE_F32 || dtype == GALE_BF16);
}

static size_t cpu_dtype_bytes(const struct gale_backend *be, enum gale_dtype dtype)
{
    return sizeof(float);  /* every dtype in an fp32 container */
}

static void *cpu_alloc(struct gale_backend *be, size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p)
        gale_backend_fail(be, "alloc: out of memory for %zu bytes (%.2f GiB)", bytes,
                          bytes / (double)(1u << 30));
    return p;
}

static void cpu_free(struct gale_backend *be, void *p)
{
    free(p);
}

static void cpu_zero(struct gale_backend *be, void *p, size_t bytes)
{
    memset(p, 0, bytes);
}

static void cpu_copy(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        memcpy(dst, src, bytes);
}

static void cpu_convert(struct gale_backend *be, void *dst, enum gale_dtype dtype, const float *src,
                        size_t n)
{
    float *d = dst;
    if (dtype == GALE_F32) {
        cpu_copy(be, dst, src, n * sizeof(float));
        return;
    }
    if (dtype != GALE_BF16) {
        gale_backend_fail(be, "convert: %zu elements to %s: not supported by the cpu backend", n,
                          gale_dtype_name(dtype));
        return;
    }
#pragma omp parallel for if (n >= 32768)
    for (size_t i = 0; i < n; i++)
        d[i] = gale_round_bf16(src[i]);
}

/* Below this much work a kernel runs on the calling thread: waking the team and meeting at
 * its barrier costs more than the work (on a loaded machine, 5-40x slower for tiny models). */
#define PARALLEL_MIN_WORK 32768

static inline int parallel_worth(size_t work)
{
    return work >= PARALLEL_MIN_WORK;
}

/* Products are split over the OpenMP threads here, each block a single-threaded BLAS call:
 * letting OpenBLAS's own pthreads run beside the OpenMP threads of the other kernels
 * oversubscribes the cores (each pool spins while the other works), measured 2.5x slower on
 * 2 cores. So OpenBLAS is kept at one thread. */
static void blas_single_threaded(void)
{
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
}

/* Below this many multiply-adds a product runs on one thread. */
#define MATMUL_SPLIT_MIN (1 << 18)

/* One BLAS call. A single row of C (generation's one-token steps) goes to sgemv: sgemm would
 * first pack all of op(B), measured 60% of a decoding step's time. */
static void blas_product(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc)
{
    if (m != 1) {
        cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* c[0, :] = alpha * op(B)^T x + beta * c[0, :], x = op(A)'s only row */
    int incx = ta == CblasTrans ? lda : 1;
    if (tb == CblasTrans)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, alpha, b, ldb, a, incx, beta, c, 1);
    else
        cblas_sgemv(CblasRowMajor, CblasTrans, k, n, alpha, b, ldb, a, incx, beta, c, 1);
}

static void cpu_matmul(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k,
                       float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                       float *c, int ldc, struct gale_gemm_types types)
{
    if (m == 0 || n == 0)
        return;
    if (k == 0) {  /* BLAS leaves C untouched for k = 0 only when beta is 1 */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * c[(size_t)i * ldc + j];
        return;
    }
    blas_single_threaded();
    CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    int threads = omp_in_parallel() ? 1 : cpu_threads(be);
    if ((double)m * n * k < MATMUL_SPLIT_MIN || threads == 1) {
        blas_product(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* split the larger of C's dimensions into one block per thread */
    int split_rows = m >= n, extent = split_rows ? m : n;
    int blocks = threads < extent ? threads : extent;
#pragma omp parallel for num_threads(blocks)
    for (int blk = 0; blk < blocks; blk++) {
        int lo = (int)((long)extent * blk / blocks), hi = (int)((long)extent * (blk + 1) / blocks);
        if (split_rows) {
            const float *ab = trans_a ? a + lo : a + (size_t)lo * lda;
            blas_product(ta, tb, hi - lo, n, k, alpha, ab, lda, b, ldb, beta,
                         c + (size_t)lo * ldc, ldc);
        } else {
            const float *bb = trans_b ? b + (size_t)lo * ldb : b + lo;
            blas_product(ta, tb, m, hi - lo, k, alpha, a, lda, bb, ldb, beta, c + lo, ldc);
        }
    }
}

static void cpu_embedding_fwd(struct gale_backend *be, float *out, const float *table,
                              const int32_t *tokens, int rows, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * dim))
    for (int r = 0; r < rows; r++)
        memcpy(out + (size_t)r * dim, table + (size_t)tokens[r] * dim, sizeof(float) * dim);
}

/* Scatter-adds run in parallel over blocks of columns (rows may repeat, so not over rows);
 * a block is long enough for contiguous, vectorised inner loops. */
#define COLUMN_BLOCK 64

static void cpu_embedding_bwd(struct gale_backend *be, float *dtable, const float *dout,
                              const int32_t *tokens, int rows, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * dim))
    for (int c0 = 0; c0 < dim; c0 += COLUMN_BLOCK) {
        int c1 = c0 + COLUMN_BLOCK < dim ? c0 + COLUMN_BLOCK : dim;
        for (int r = 0; r < rows; r++) {
            float *d = dtable + (size_t)tokens[r] * dim;
            const float *g = dout + (size_t)r * dim;
            for (int c = c0; c < c1; c++)
                d[c] += g[c];
        }
    }
}

static void cpu_rmsnorm_fwd(struct gale_backend *be, float *out, float *rstd, const float *x,
                            const float *w, int rows, int dim, float eps)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * dim))
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        double ss = 0;
        for (int i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float s = (float)(1.0 / sqrt(ss / dim + eps));
        rstd[r] = s;
        for (int i = 0; i < dim; i++)
            o[i] = xr[i] * s * w[i];
    }
}

static void cpu_rmsnorm_bwd(struct gale_backend *be, float *dx, float *dw, const float *dout,
                            const float *x, const float *w, const float *rstd, int rows, int dim)
{
#pragma omp parallel if (parallel_worth((size_t)rows * dim))
    {
        float *dw_local = gale_xcalloc((size_t)dim, sizeof(float));
#pragma omp for
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * dim, *dy = dout + (size_t)r * dim;
            float *dxr = dx + (size_t)r * dim;
            float s = rstd[r];
            double dot = 0;
            for (int i = 0; i < dim; i++) {
                dot += (double)dy[i] * w[i] * xr[i];
                dw_local[i] += dy[i] * xr[i] * s;
            }
            float c = (float)(dot * s * s * s / dim);
            for (int i = 0; i < dim; i++)
                dxr[i] += s * w[i] * dy[i] - c * xr[i];
        }
        if (dw) {
#pragma omp critical
            for (int i = 0; i < dim; i++)
                dw[i] += dw_local[i];
        }
        free(dw_local);
    }
}

/* Rotates each head's pairs (i, i + hd/2) by angle sign * pos * theta^(-2i/hd). The angles
 * are computed in double: an fp32 product pos * inv_freq loses digits as positions grow. */
static void rope_rotate(float *x, const int32_t *positions, int rows, int heads, int head_dim,
                        float theta, double sign)
{
    int half = head_dim / 2;
    double *inv_freq = gale_xmalloc(sizeof(double) * (size_t)half);
    for (int i = 0; i < half; i++)
        inv_freq[i] = pow((double)theta, -2.0 * i / head_dim);
#pragma omp parallel if (parallel_worth((size_t)rows * heads * head_dim))
    {
        float *cs = gale_xmalloc(sizeof(float) * 2 * (size_t)half);
#pragma omp for
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < half; i++) {
                double angle = positions[r] * inv_freq[i];
                cs[2 * i] = (float)cos(angle);
                cs[2 * i + 1] = (float)(sign * sin(angle));
            }
            for (int h = 0; h < heads; h++) {
                float *v = x + ((size_t)r * heads + h) * head_dim;
                for (int i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half], c = cs[2 * i], s = cs[2 * i + 1];
                    v[i] = a * c - b * s;
                    v[i + half] = b * c + a * s;
                }
            }
        }
        free(cs);
    }
    free(inv_freq);
}

static void cpu_rope_fwd(struct gale_backend *be, float *x, const int32_t *positions, int rows,
                         int heads, int head_dim, float theta)
{
    rope_rotate(x, positions, rows, heads, head_dim, theta, 1.0);
}

static void cpu_rope_bwd(struct gale_backend *be, float *dx, const int32_t *positions, int rows,
                         int heads, int head_dim, float theta)
{
    rope_rotate(dx, positions, rows, heads, head_dim, theta, -1.0);
}

/* Whether query i may see key j. */
static inline int attends(int i, int j, int window, const int32_t *seg)
{
    return j <= i && (window <= 0 || i - j < window) && (!seg || seg[i] == seg[j]);
}

/* The first key query i may see (causal with a window). */
static inline int first_key(int i, int window)
{
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

/* Queries are taken in blocks of this many rows: a block sees keys [first_key(i0), i1) only, so
 * the causal half (and, with a window, all but W keys) is never computed, and the score
 * buffers are block x seq instead of seq x seq. */
#define ATTENTION_BLOCK 64

/* s[rows, cols] holds the scaled scores of queries i0.. against keys j0..; turns them into
 * softmax probabilities (masked entries 0). The forward writes each row's log-sum-exp to
 * lse_out[row]; the backward's recomputation reads it from lse_in[row] instead. */
static void attention_probs(float *s, int i0, int rows, int j0, int cols, float *lse_out,
                            const float *lse_in, int window, const int32_t *seg)
{
    if (!seg) { /* the keys row i sees are the contiguous lo..i: vectorised */
        for (int r = 0; r < rows; r++) {
            int i = i0 + r, lo = first_key(i, window), n = i - lo + 1;
            float *row = s + (size_t)r * cols, *seen = row + (lo - j0);
            if (lse_in) {
                kernel_exp_sum(seen, seen, n, lse_in[r]);
            } else {
                float mx = kernel_max(seen, n);
                double sum = kernel_exp_sum(seen, seen, n, mx);
                kernel_scale(seen, n, (float)(1.0 / sum));
                lse_out[r] = mx + (float)log(sum);
            }
            memset(row, 0, sizeof(float) * (lo - j0));
            memset(seen + n, 0, sizeof(float) * (cols - (i - j0) - 1));
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        int i = i0 + r;
        float *row = s + (size_t)r * cols;
        int lo = first_key(i, window);
        float l;
        if (lse_in) {
            l = lse_in[r];
        } else {
            float mx = -INFINITY;
            for (int j = lo; j <= i; j++)
                if (attends(i, j, window, seg) && row[j - j0] > mx)
                    mx = row[j - j0];
            double sum = 0;
            for (int j = lo; j <= i; j++)
                if (attends(i, j, window, seg))
                    sum += exp((double)row[j - j0] - mx);
            l = mx + (float)log(sum);
            lse_out[r] = l;
        }
        for (int c = 0; c < cols; c++) {
            int j = j0 + c;
            row[c] = j >= lo && attends(i, j, window, seg) ? expf(row[c] - l) : 0.0f;
        }
    }
}

/* One head's queries i0 .. i0+rows-1 of a sequence (qb: the first one's row, ob: its output
 * row) against the keys they may see; lse[rows] gets the softmaxes' log-sum-exps. s is
 * rows x (i0 + rows) scratch. */
static void attention_block_fwd(float *ob, float *lse, const float *qb, const float *kh,
                                const float *vh, int dqw, int dkvw, int head_dim, float scale,
                                int i0, int rows, int window, const int32_t *seg, float *s)
{
    int j0 = first_key(i0, window), cols = i0 + rows - j0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, scale, qb, dqw,
                kh + (size_t)j0 * dkvw, dkvw, 0.0f, s, cols);
    attention_probs(s, i0, rows, j0, cols, lse, NULL, window, seg);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols, 1.0f, s, cols,
                vh + (size_t)j0 * dkvw, dkvw, 0.0f, ob, dqw);
}

static void cpu_attention_fwd(struct gale_backend *be, float *out, float *lse, const float *q,
                              const float *k, const float *v, const int32_t *segments, int batch,
                              int seq, int heads, int kv_heads, int head_dim, int window)
{
    int dq = heads * head_dim, dkv = kv_heads * head_dim, group = heads / kv_heads;
    float scale = (float)(1.0 / sqrt((double)head_dim));
    blas_single_threaded();
#pragma omp parallel if (parallel_worth((size_t)batch * heads * seq * seq * head_dim))
    {
        float *s = gale_xmalloc(sizeof(float) * ATTENTION_BLOCK * (size_t)seq);
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++) {
                size_t row0 = (size_t)b * seq;
                const float *qh = q + row0 * dq + (size_t)h * head_dim;
                const float *kh = k + row0 * dkv + (size_t)(h / group) * head_dim;
                const float *vh = v + row0 * dkv + (size_t)(h / group) * head_dim;
                float *oh = out + row0 * dq + (size_t)h * head_dim;
                const int32_t *seg = segments ? segments + row0 : NULL;
                float *l = lse + ((size_t)b * heads + h) * seq;
                for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK) {
                    int rows = seq - i0 < ATTENTION_BLOCK ? seq - i0 : ATTENTION_BLOCK;
                    attention_block_fwd(oh + (size_t)i0 * dq, l + i0, qh + (size_t)i0 * dq, kh,
                                        vh, dq, dkv, head_dim, scale, i0, rows, window, seg, s);
                }
            }
        free(s);
    }
}

static void cpu_attention_cached_fwd(struct gale_backend *be, float *out, const float *q,
                                     const float *k, const float *v, int n_q, int n_kv, int heads,
                                     int kv_heads, int head_dim, int window)
{
    int dq = heads * head_dim, dkv = kv_heads * head_dim, group = heads / kv_heads;
    int first = n_kv - n_q;  /* the sequence index of query 0 */
    float scale = (float)(1.0 / sqrt((double)head_dim));
    blas_single_threaded();
#pragma omp parallel if (parallel_worth((size_t)heads * n_q * n_kv * head_dim))
    {
        float *s = gale_xmalloc(sizeof(float) * ATTENTION_BLOCK * (size_t)n_kv);
        float lse[ATTENTION_BLOCK];
#pragma omp for schedule(dynamic)
        for (int h = 0; h < heads; h++) {
            const float *kh = k + (size_t)(h / group) * head_dim;
            const float *vh = v + (size_t)(h / group) * head_dim;
            for (int r0 = 0; r0 < n_q; r0 += ATTENTION_BLOCK) {
                int rows = n_q - r0 < ATTENTION_BLOCK ? n_q - r0 : ATTENTION_BLOCK;
                size_t at = (size_t)r0 * dq + (size_t)h * head_dim;
                attention_block_fwd(out + at, lse, q + at, kh, vh, dq, dkv, head_dim, scale,
                                    first + r0, rows, window, NULL, s);
            }
        }
        free(s);
    }
}

/* The backward of one head over one query block: dq of the block, dk and dv += over its keys.
 * p and dp are block x seq scratch. */
static void attention_block_bwd(float *dqh, float *dkh, float *dvh, const float *doh,
                                const float *oh, const float *l, const float *qh, const float *kh,
                                const float *vh, int dqw, int dkvw, int head_dim, float scale,
                                int i0, int rows, int window, const int32_t *seg, float *p,
                                float *dp)
{
    int j0 = first_key(i0, window), cols = i0 + rows - j0;
    const float *qb = qh + (size_t)i0 * dqw, *dob = doh + (size_t)i0 * dqw;
    const float *kb = kh + (size_t)j0 * dkvw, *vb = vh + (size_t)j0 * dkvw;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, scale, qb, dqw, kb,
                dkvw, 0.0f, p, cols);
    attention_probs(p, i0, rows, j0, cols, NULL, l + i0, window, seg);
    /* dP = dO V^T; delta_i = dO_i . O_i; dS = P (dP - delta) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, 1.0f, dob, dqw, vb,
                dkvw, 0.0f, dp, cols);
    for (int r = 0; r < rows; r++) {
        const float *o = oh + (size_t)(i0 + r) * dqw, *d = dob + (size_t)r * dqw;
        double delta = 0;
        for (int c = 0; c < head_dim; c++)
            delta += (double)d[c] * o[c];
        for (int c = 0; c < cols; c++) {
            size_t rc = (size_t)r * cols + c;
            dp[rc] = p[rc] * (dp[rc] - (float)delta);
        }
    }
    /* dV += P^T dO, dQ = scale dS K, dK += scale dS^T Q */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, head_dim, rows, 1.0f, p, cols, dob,
                dqw, 1.0f, dvh + (size_t)j0 * dkvw, dkvw);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols, scale, dp, cols,
                kb, dkvw, 0.0f, dqh + (size_t)i0 * dqw, dqw);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, head_dim, rows, scale, dp, cols, qb,
                dqw, 1.0f, dkh + (size_t)j0 * dkvw, dkvw);
}

static void cpu_attention_bwd(struct gale_backend *be, float *dq, float *dk, float *dv,
                              const float *dout, const float *out, const float *lse, const float *q,
                              const float *k, const float *v, const int32_t *segments, int batch,
                              int seq, int heads, int kv_heads, int head_dim, int window)
{
    int dqw = heads * head_dim, dkvw = kv_heads * head_dim, group = heads / kv_heads;
    float scale = (float)(1.0 / sqrt((double)head_dim));
    /* One task per (sequence, kv head): the query heads sharing a kv head accumulate into
     * the same dk, dv, so they run in one task. */
    blas_single_threaded();
#pragma omp parallel if (parallel_worth((size_t)batch * heads * seq * seq * head_dim))
    {
        float *p = gale_xmalloc(sizeof(float) * ATTENTION_BLOCK * (size_t)seq);
        float *dp = gale_xmalloc(sizeof(float) * ATTENTION_BLOCK * (size_t)seq);
#pragma omp for collapse(2) schedule(dynamic)
        for (int b = 0; b < batch; b++)
            for (int g = 0; g < kv_heads; g++) {
                size_t row0 = (size_t)b * seq;
                const float *kh = k + row0 * dkvw + (size_t)g * head_dim;
                const float *vh = v + row0 * dkvw + (size_t)g * head_dim;
                float *dkh = dk + row0 * dkvw + (size_t)g * head_dim;
                float *dvh = dv + row0 * dkvw + (size_t)g * head_dim;
                const int32_t *seg = segments ? segments + row0 : NULL;
                for (int t = 0; t < seq; t++) {
                    memset(dkh + (size_t)t * dkvw, 0, sizeof(float) * head_dim);
                    memset(dvh + (size_t)t * dkvw, 0, sizeof(float) * head_dim);
                }
                for (int h = g * group; h < (g + 1) * group; h++) {
                    size_t col = (size_t)h * head_dim;
                    for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK)
                        attention_block_bwd(dq + row0 * dqw + col, dkh, dvh,
                                            dout + row0 * dqw + col, out + row0 * dqw + col,
                                            lse + ((size_t)b * heads + h) * seq,
                                            q + row0 * dqw + col, kh, vh, dqw, dkvw, head_dim,
                                            scale, i0,
                                            seq - i0 < ATTENTION_BLOCK ? seq - i0 : ATTENTION_BLOCK,
                                            window, seg, p, dp);
                }
            }
        free(p);
        free(dp);
    }
}

/* The streaming kernels split [0, n) into one contiguous block per thread; block b starts at
 * block_start(n, b, blocks). */
static int stream_blocks(size_t n)
{
    return parallel_worth(n) ? omp_get_max_threads() : 1;
}

static inline size_t block_start(size_t n, int b, int blocks)
{
    return n / blocks * b + n % blocks * b / blocks;
}

static void cpu_dropout(struct gale_backend *be, float *out, const float *x, size_t n, float p,
                        uint64_t seed, int accumulate)
{
    (void)be;
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for if (parallel_worth(n))
    for (size_t i = 0; i < n; i++) {
        float y = gale_rng_uniform(seed, i) >= p ? x[i] * keep_scale : 0.0f;
        out[i] = accumulate ? out[i] + y : y;
    }
}

static void cpu_swiglu_fwd(struct gale_backend *be, float *out, const float *gate, const float *up,
                           size_t n)
{
    int blocks = stream_blocks(n);
#pragma omp parallel for num_threads(blocks) if (blocks > 1)
    for (int b = 0; b < blocks; b++) {
        size_t lo = block_start(n, b, blocks), hi = block_start(n, b + 1, blocks);
        kernel_swiglu_fwd(out + lo, gate + lo, up + lo, hi - lo);
    }
}

static void cpu_swiglu_bwd(struct gale_backend *be, float *dgate, float *dup, const float *dout,
                           const float *gate, const float *up, size_t n)
{
    int blocks = stream_blocks(n);
#pragma omp parallel for num_threads(blocks) if (blocks > 1)
    for (int b = 0; b < blocks; b++) {
        size_t lo = block_start(n, b, blocks), hi = block_start(n, b + 1, blocks);
        kernel_swiglu_bwd(dgate + lo, dup + lo, dout + lo, gate + lo, up + lo, hi - lo);
    }
}

static void cpu_router_fwd(struct gale_backend *be, float *probs, float *lse, int32_t *topk_idx,
                           float *topk_w, const float *logits, int rows, int experts, int k)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * experts * k))
    for (int r = 0; r < rows; r++)
        gale_router_fwd_row(probs + (size_t)r * experts, lse + r, topk_idx + (size_t)r * k, topk_w + (size_t)r * k,
                            logits + (size_t)r * experts, experts, k);
}

static void cpu_router_bwd(struct gale_backend *be, float *dlogits, const float *dtopk_w,
                           const float *probs, const float *lse, const int32_t *topk_idx,
                           const float *topk_w, const float *dprobs_const, float z_scale, int rows,
                           int experts, int k)
{
#pragma omp parallel if (parallel_worth((size_t)rows * experts))
    {
        double *dp = gale_xmalloc(sizeof(double) * (size_t)experts);
#pragma omp for
        for (int r = 0; r < rows; r++)
            gale_router_bwd_row(dlogits + (size_t)r * experts, dp, probs + (size_t)r * experts, lse[r],
                                topk_idx + (size_t)r * k, topk_w + (size_t)r * k, dtopk_w + (size_t)r * k,
                                dprobs_const, z_scale, experts, k);
        free(dp);
    }
}

static void cpu_moe_plan(struct gale_backend *be, int32_t *counts, int32_t *slot_rows,
                         int32_t *slot_of, const int32_t *topk_idx, int rows, int experts, int k)
{
    int *next = gale_xcalloc((size_t)experts + 1, sizeof(int));
    memset(counts, 0, sizeof(int32_t) * (size_t)experts);
    for (size_t s = 0; s < (size_t)rows * k; s++)
        counts[topk_idx[s]]++;
    for (int e = 1; e <= experts; e++)
        next[e] = next[e - 1] + counts[e - 1];
    for (size_t s = 0; s < (size_t)rows * k; s++) {
        int pos = next[topk_idx[s]]++;
        slot_rows[pos] = (int32_t)(s / k);
        slot_of[s] = pos;
    }
    free(next);
}

static void cpu_router_stats(struct gale_backend *be, double *stats, const float *probs,
                             const float *lse, int rows, int experts)
{
    memset(stats, 0, sizeof(double) * ((size_t)experts + 1));
    for (int r = 0; r < rows; r++) {
        for (int e = 0; e < experts; e++)
            stats[e] += probs[(size_t)r * experts + e];
        stats[experts] += (double)lse[r] * lse[r];
    }
}

static void cpu_moe_gather(struct gale_backend *be, float *xe, const float *x,
                           const int32_t *slot_rows, int slots, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)slots * dim))
    for (int s = 0; s < slots; s++)
        memcpy(xe + (size_t)s * dim, x + (size_t)slot_rows[s] * dim, sizeof(float) * dim);
}

static void cpu_moe_combine(struct gale_backend *be, float *out, const float *ye,
                            const float *topk_w, const int32_t *slot_of, int rows, int k, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * k * dim))
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < k; j++) {
            float w = topk_w[(size_t)r * k + j];
            const float *y = ye + (size_t)slot_of[(size_t)r * k + j] * dim;
            float *o = out + (size_t)r * dim;
            for (int c = 0; c < dim; c++)
                o[c] += w * y[c];
        }
}

static void cpu_moe_combine_bwd(struct gale_backend *be, float *dye, float *dtopk_w,
                                const float *dout, const float *ye, const float *topk_w,
                                const int32_t *slot_of, int rows, int k, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)rows * k * dim))
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < k; j++) {
            size_t s = (size_t)slot_of[(size_t)r * k + j];
            float w = topk_w[(size_t)r * k + j];
            const float *d = dout + (size_t)r * dim, *y = ye + s * dim;
            float *dy = dye + s * dim;
            double dot = 0;
            for (int c = 0; c < dim; c++) {
                dy[c] = w * d[c];
                dot += (double)d[c] * y[c];
            }
            dtopk_w[(size_t)r * k + j] = (float)dot;
        }
}

static void cpu_moe_scatter_add(struct gale_backend *be, float *dx, const float *dxe,
                                const int32_t *slot_rows, int slots, int dim)
{
#pragma omp parallel for if (parallel_worth((size_t)slots * dim))
    for (int c0 = 0; c0 < dim; c0 += COLUMN_BLOCK) {
        int c1 = c0 + COLUMN_BLOCK < dim ? c0 + COLUMN_BLOCK : dim;
        for (int s = 0; s < slots; s++) {
            float *d = dx + (size_t)slot_rows[s] * dim;
            const float *g = dxe + (size_t)s * dim;
            for (int c = c0; c < c1; c++)
                d[c] += g[c];
        }
    }
}

static void cpu_cross_entropy(struct gale_backend *be, float *logits, const int32_t *targets,
                              int rows, int vocab, float grad_scale, double *sums)
{
    double total = 0;
    long n = 0;
#pragma omp parallel for if (parallel_worth((size_t)rows * vocab)) reduction(+ : total, n) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *x = logits + (size_t)r * vocab;
        int t = targets[r];
        if (t < 0) {
            if (grad_scale != 0)
                memset(x, 0, sizeof(float) * vocab);
            continue;
        }
        float mx = kernel_max(x, vocab), xt = x[t];
        /* with a gradient, one exp per logit: exp(x - max) stays in place, then is scaled */
        double sum = kernel_exp_sum(grad_scale != 0 ? x : NULL, x, vocab, mx);
        total += mx + log(sum) - xt;
        n++;
        if (grad_scale != 0) {
            kernel_scale(x, vocab, (float)(grad_scale / sum));
            x[t] -= grad_scale;
        }
    }
    sums[0] += total;
    sums[1] += (double)n;
}

static void cpu_adamw_step(struct gale_backend *be, float *p, float *p_compute, const float *g,
                           float *m, float *v, size_t n, const float *grad_scale, float lr,
                           float beta1, float beta2, float eps, float weight_decay, int step)
{
    if (isnan(*grad_scale))
        return; /* a non-finite gradient norm: the step is skipped */
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    struct adamw_kernel_args a = {.grad_scale = *grad_scale, .decay = 1.0f - lr * weight_decay,
                                  .beta1 = beta1, .beta2 = beta2, .step_size = (float)(lr / bc1),
                                  .bc2_sqrt = (float)sqrt(bc2), .eps = eps};
    int blocks = stream_blocks(n);
#pragma omp parallel for num_threads(blocks) if (blocks > 1)
    for (int b = 0; b < blocks; b++) {
        size_t lo = block_start(n, b, blocks), hi = block_start(n, b + 1, blocks);
        kernel_adamw(p + lo, g + lo, m + lo, v + lo, hi - lo, &a);
    }
    if (p_compute)
        cpu_convert(be, p_compute, be->compute, p, n);
}

/* The blocks' partial sums are added in block order: the same result for the same thread count. */
static void cpu_sumsq(struct gale_backend *be, double *acc, const float *x, size_t n)
{
    int blocks = stream_blocks(n);
    double *part = gale_xmalloc(sizeof(double) * (size_t)blocks), s = 0;
#pragma omp parallel for num_threads(blocks) if (blocks > 1)
    for (int b = 0; b < blocks; b++) {
        size_t lo = block_start(n, b, blocks), hi = block_start(n, b + 1, blocks);
        part[b] = kernel_sumsq(x + lo, hi - lo);
    }
    for (int b = 0; b < blocks; b++)
        s += part[b];
    free(part);
    acc[0] += s;
}

static void cpu_clip_factor(struct gale_backend *be, float *factor, const double *sumsq,
                            double max_norm)
{
    factor[0] = (float)gale_clip_factor(sumsq[0], max_norm);
}

static void cpu_axpy(struct gale_backend *be, float *y, const float *x, size_t n, float a)
{
#pragma omp parallel for if (parallel_worth(n))
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void cpu_dot_f64(struct gale_backend *be, double *acc, const double *x, const double *w,
                        size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * w[i];
    acc[0] += s;
}

static const struct gale_ops cpu_ops = {
    .name = "cpu",
    .init = cpu_init,
    .destroy = cpu_destroy,
    .synchronize = cpu_synchronize,
    .supports_op = cpu_supports_op,
    .dtype_bytes = cpu_dtype_bytes,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .zero = cpu_zero,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .convert = cpu_convert,
    .matmul = cpu_matmul,
    .embedding_fwd = cpu_embedding_fwd,
    .embedding_bwd = cpu_embedding_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .rope_fwd = cpu_rope_fwd,
    .rope_bwd = cpu_rope_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_cached_fwd = cpu_attention_cached_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .dropout = cpu_dropout,
    .swiglu_bwd = cpu_swiglu_bwd,
    .router_fwd = cpu_router_fwd,
    .router_bwd = cpu_router_bwd,
    .moe_plan = cpu_moe_plan,
    .router_stats = cpu_router_stats,
    .moe_gather = cpu_moe_gather,
    .moe_combine = cpu_moe_combine,
    .moe_combine_bwd = cpu_moe_combine_bwd,
    .moe_scatter_add = cpu_moe_scatter_add,
    .cross_entropy = cpu_cross_entropy,
    .adamw_step = cpu_adamw_step,
    .sumsq = cpu_sumsq,
    .clip_factor = cpu_clip_factor,
    .axpy = cpu_axpy,
    .dot_f64 = cpu_dot_f64,
};

const struct gale_ops *gale_ops_cpu(void)
{
    return &cpu_ops;
}
