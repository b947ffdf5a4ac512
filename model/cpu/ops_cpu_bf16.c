/* ops_cpu_bf16: the CPU backend's bf16 mode. Each op is the fp32 op, after which the outputs
 * that the precision policy keeps in the compute dtype (activations, their gradients, the
 * compute copy of the weights) are rounded to bf16, round to nearest even; what the policy
 * keeps in fp32 (weight gradients, norm statistics, attention's log-sum-exp, the router, the
 * logits and the loss) is left as computed. Values live in fp32 containers, so the mode
 * reproduces bf16 storage's rounding, not its memory; it is how the dtype plumbing and the bf16
 * tolerances are tested without a GPU, and the reference for a GPU backend's bf16 numerics.
 * Debian's OpenBLAS 0.3.21 is built without cblas_sbgemm, so products stay sgemm over the
 * rounded values: a bf16 x bf16 product with fp32 accumulation, as the tensor cores do. */
#include <string.h>

#include "model/ops.h"

float gale_round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))
        return x;  /* NaN: rounding could carry it into infinity */
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void round_rows(float *x, size_t rows, size_t cols, size_t ld)
{
#pragma omp parallel for if (rows * cols >= 32768)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            x[r * ld + c] = gale_round_bf16(x[r * ld + c]);
}

static void round_n(float *x, size_t n)
{
    round_rows(x, 1, n, n);
}

#define FP32 (gale_ops_cpu())

static void bf16_matmul(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k,
                        float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                        float *c, int ldc, struct gale_gemm_types types)
{
    FP32->matmul(be, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, types);
    if (types.c == GALE_BF16)
        round_rows(c, (size_t)m, (size_t)n, (size_t)ldc);
}

static void bf16_embedding_fwd(struct gale_backend *be, float *out, const float *table,
                               const int32_t *tokens, int rows, int dim)
{
    FP32->embedding_fwd(be, out, table, tokens, rows, dim);
    round_n(out, (size_t)rows * dim);
}

static void bf16_rmsnorm_fwd(struct gale_backend *be, float *out, float *rstd, const float *x,
                             const float *w, int rows, int dim, float eps)
{
    FP32->rmsnorm_fwd(be, out, rstd, x, w, rows, dim, eps);
    round_n(out, (size_t)rows * dim);
}

static void bf16_rmsnorm_bwd(struct gale_backend *be, float *dx, float *dw, const float *dout,
                             const float *x, const float *w, const float *rstd, int rows, int dim)
{
    FP32->rmsnorm_bwd(be, dx, dw, dout, x, w, rstd, rows, dim);
    round_n(dx, (size_t)rows * dim);
}

static void bf16_rope_fwd(struct gale_backend *be, float *x, const int32_t *positions, int rows,
                          int heads, int head_dim, float theta)
{
    FP32->rope_fwd(be, x, positions, rows, heads, head_dim, theta);
    round_n(x, (size_t)rows * heads * head_dim);
}

static void bf16_rope_bwd(struct gale_backend *be, float *dx, const int32_t *positions, int rows,
                          int heads, int head_dim, float theta)
{
    FP32->rope_bwd(be, dx, positions, rows, heads, head_dim, theta);
    round_n(dx, (size_t)rows * heads * head_dim);
}

static void bf16_attention_fwd(struct gale_backend *be, float *out, float *lse, const float *q,
                               const float *k, const float *v, const int32_t *segments, int batch,
                               int seq, int heads, int kv_heads, int head_dim, int window)
{
    FP32->attention_fwd(be, out, lse, q, k, v, segments, batch, seq, heads, kv_heads, head_dim,
                        window);
    round_n(out, (size_t)batch * seq * heads * head_dim);
}

static void bf16_attention_cached_fwd(struct gale_backend *be, float *out, const float *q,
                                      const float *k, const float *v, int n_q, int n_kv, int heads,
                                      int kv_heads, int head_dim, int window)
{
    FP32->attention_cached_fwd(be, out, q, k, v, n_q, n_kv, heads, kv_heads, head_dim, window);
    round_n(out, (size_t)n_q * heads * head_dim);
}

static void bf16_attention_bwd(struct gale_backend *be, float *dq, float *dk, float *dv,
                               const float *dout, const float *out, const float *lse,
                               const float *q, const float *k, const float *v,
                               const int32_t *segments, int batch, int seq, int heads,
                               int kv_heads, int head_dim, int window)
{
    FP32->attention_bwd(be, dq, dk, dv, dout, out, lse, q, k, v, segments, batch, seq, heads,
                        kv_heads, head_dim, window);
    size_t rows = (size_t)batch * seq;
    round_n(dq, rows * heads * head_dim);
    round_n(dk, rows * kv_heads * head_dim);
    round_n(dv, rows * kv_heads * head_dim);
}

static void bf16_swiglu_fwd(struct gale_backend *be, float *out, const float *gate,
                            const float *up, size_t n)
{
    FP32->swiglu_fwd(be, out, gate, up, n);
    round_n(out, n);
}

static void bf16_swiglu_bwd(struct gale_backend *be, float *dgate, float *dup, const float *dout,
                            const float *gate, const float *up, size_t n)
{
    FP32->swiglu_bwd(be, dgate, dup, dout, gate, up, n);
    round_n(dgate, n);
    round_n(dup, n);
}

static void bf16_moe_combine(struct gale_backend *be, float *out, const float *ye,
                             const float *topk_w, const int32_t *slot_of, int rows, int k, int dim)
{
    FP32->moe_combine(be, out, ye, topk_w, slot_of, rows, k, dim);
    round_n(out, (size_t)rows * dim);
}

static void bf16_moe_combine_bwd(struct gale_backend *be, float *dye, float *dtopk_w,
                                 const float *dout, const float *ye, const float *topk_w,
                                 const int32_t *slot_of, int rows, int k, int dim)
{
    FP32->moe_combine_bwd(be, dye, dtopk_w, dout, ye, topk_w, slot_of, rows, k, dim);
    round_n(dye, (size_t)rows * k * dim);
}

static void bf16_moe_scatter_add(struct gale_backend *be, float *dx, const float *dxe,
                                 const int32_t *slot_rows, int slots, int dim)
{
    FP32->moe_scatter_add(be, dx, dxe, slot_rows, slots, dim);
    /* dx's rows are the tokens: as many as the slots' distinct rows, at most `slots` */
    for (int s = 0; s < slots; s++)
        round_n(dx + (size_t)slot_rows[s] * dim, (size_t)dim);
}

static void bf16_dropout(struct gale_backend *be, float *out, const float *x, size_t n, float p,
                         uint64_t seed, int accumulate)
{
    FP32->dropout(be, out, x, n, p, seed, accumulate);
    round_n(out, n);
}

static struct gale_ops bf16_ops;

const struct gale_ops *gale_ops_cpu_bf16(void)
{
    if (!bf16_ops.name) {
        struct gale_ops o = *FP32;
        o.name = "cpu-bf16";
        o.matmul = bf16_matmul;
        o.embedding_fwd = bf16_embedding_fwd;
        o.rmsnorm_fwd = bf16_rmsnorm_fwd;
        o.rmsnorm_bwd = bf16_rmsnorm_bwd;
        o.rope_fwd = bf16_rope_fwd;
        o.rope_bwd = bf16_rope_bwd;
        o.attention_fwd = bf16_attention_fwd;
        o.attention_cached_fwd = bf16_attention_cached_fwd;
        o.attention_bwd = bf16_attention_bwd;
        o.swiglu_fwd = bf16_swiglu_fwd;
        o.swiglu_bwd = bf16_swiglu_bwd;
        o.dropout = bf16_dropout;
        o.moe_combine = bf16_moe_combine;
        o.moe_combine_bwd = bf16_moe_combine_bwd;
        o.moe_scatter_add = bf16_moe_scatter_add;
        bf16_ops = o;
    }
    return &bf16_ops;
}
