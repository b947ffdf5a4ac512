/* kernels_cuda: the CUDA backend's row-wise kernels: embedding, RMSNorm, RoPE, SwiGLU, the
 * router, the expert permutation and the cross-entropy. Each follows the CPU op of the same
 * name (model/cpu/ops_cpu.c) formula for formula, with fp32 arithmetic where it has fp32 and
 * fp64 where it has fp64; compute-dtype buffers are loaded into fp32 and stored rounded to
 * nearest even. Reductions run in a fixed order, so results repeat to the bit. */
#include "model/cuda/cuda_backend.h"

#include <math.h>

#define THREADS 256

static unsigned grid_stride_blocks(size_t n)
{
    unsigned b = blocks_for(n, THREADS);
    return b < 65536 ? b : 65536;
}

#define FOR_EACH(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- embedding ---- */

template <typename T> __global__ void embedding_fwd_kernel(T *out, const T *table, const int32_t *tokens, int rows,
                                                           int dim)
{
    FOR_EACH(i, (size_t)rows * dim) {
        size_t r = i / dim, c = i % dim;
        out[i] = table[(size_t)tokens[r] * dim + c];
    }
}

void cuda_embedding_fwd(struct gale_backend *be, float *out, const float *table, const int32_t *tokens, int rows,
                        int dim)
{
    if (be->failed || rows <= 0)
        return;
    CUDA_DISPATCH(be, embedding_fwd_kernel<T><<<grid_stride_blocks((size_t)rows * dim), THREADS, 0, stream_of(be)>>>(
                          (T *)out, (const T *)table, tokens, rows, dim));
    cuda_after(be, cudaSuccess, "embedding_fwd: %d rows x %d", rows, dim);
}

void cuda_embedding_bwd(struct gale_backend *be, float *dtable, const float *dout, const int32_t *tokens, int rows,
                        int dim)
{
    cuda_scatter_add_rows(be, dtable, 0, dout, tokens, rows, dim, "embedding_bwd");
}

/* ---- RMSNorm ---- */

template <typename T> __global__ void rmsnorm_fwd_kernel(T *out, float *rstd, const T *x, const T *w, int dim, float eps)
{
    size_t row = (size_t)blockIdx.x * dim;
    double ss = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        double v = ld(x, row + i);
        ss += v * v;
    }
    ss = block_sum(ss);
    float s = (float)(1.0 / sqrt(ss / dim + eps));
    if (threadIdx.x == 0)
        rstd[blockIdx.x] = s;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        st(out, row + i, ld(x, row + i) * s * ld(w, i));
}

void cuda_rmsnorm_fwd(struct gale_backend *be, float *out, float *rstd, const float *x, const float *w, int rows,
                      int dim, float eps)
{
    if (be->failed || rows <= 0)
        return;
    CUDA_DISPATCH(be, rmsnorm_fwd_kernel<T><<<rows, THREADS, 0, stream_of(be)>>>((T *)out, rstd, (const T *)x,
                                                                                 (const T *)w, dim, eps));
    cuda_after(be, cudaSuccess, "rmsnorm_fwd: %d rows x %d", rows, dim);
}

template <typename T> __global__ void rmsnorm_bwd_dx_kernel(T *dx, const T *dout, const T *x, const T *w,
                                                            const float *rstd, int dim)
{
    size_t row = (size_t)blockIdx.x * dim;
    float s = rstd[blockIdx.x];
    double dot = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        dot += (double)ld(dout, row + i) * ld(w, i) * ld(x, row + i);
    dot = block_sum(dot);
    float c = (float)(dot * s * s * s / dim);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        st(dx, row + i, ld(dx, row + i) + (s * ld(w, i) * ld(dout, row + i) - c * ld(x, row + i)));
}

/* dw's partial sums over a chunk of rows: partial[chunk][i]; then added in chunk order. */
#define RMS_ROW_CHUNK 64

template <typename T> __global__ void rmsnorm_bwd_dw_partial_kernel(float *partial, const T *dout, const T *x,
                                                                    const float *rstd, int rows, int dim)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim)
        return;
    int r0 = blockIdx.y * RMS_ROW_CHUNK, r1 = min(rows, r0 + RMS_ROW_CHUNK);
    float acc = 0;
    for (int r = r0; r < r1; r++)
        acc += ld(dout, (size_t)r * dim + i) * ld(x, (size_t)r * dim + i) * rstd[r];
    partial[(size_t)blockIdx.y * dim + i] = acc;
}

__global__ void add_partials_kernel(float *dw, const float *partial, int chunks, int dim)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= dim)
        return;
    float acc = 0;
    for (int c = 0; c < chunks; c++)
        acc += partial[(size_t)c * dim + i];
    dw[i] += acc;
}

void cuda_rmsnorm_bwd(struct gale_backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                      const float *rstd, int rows, int dim)
{
    if (be->failed || rows <= 0)
        return;
    int chunks = (rows + RMS_ROW_CHUNK - 1) / RMS_ROW_CHUNK;
    float *partial = (float *)cuda_scratch(be, (size_t)chunks * dim * sizeof(float), "rmsnorm_bwd");
    if (!partial)
        return;
    cudaStream_t s = stream_of(be);
    dim3 grid(blocks_for((size_t)dim, THREADS), chunks);
    CUDA_DISPATCH(be, {
        rmsnorm_bwd_dx_kernel<T><<<rows, THREADS, 0, s>>>((T *)dx, (const T *)dout, (const T *)x, (const T *)w, rstd,
                                                          dim);
        rmsnorm_bwd_dw_partial_kernel<T><<<grid, THREADS, 0, s>>>(partial, (const T *)dout, (const T *)x, rstd, rows,
                                                                  dim);
    });
    add_partials_kernel<<<blocks_for((size_t)dim, THREADS), THREADS, 0, s>>>(dw, partial, chunks, dim);
    cuda_after(be, cudaSuccess, "rmsnorm_bwd: %d rows x %d", rows, dim);
}

/* ---- RoPE: one block per row; the angles in fp64, as the CPU computes them ---- */

template <typename T> __global__ void rope_kernel(T *x, const int32_t *positions, int heads, int head_dim,
                                                  float theta, double sign)
{
    int half = head_dim / 2;
    size_t row = (size_t)blockIdx.x * heads * head_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double angle = positions[blockIdx.x] * pow((double)theta, -2.0 * i / head_dim);
        float c = (float)cos(angle), s = (float)(sign * sin(angle));
        for (int h = 0; h < heads; h++) {
            size_t at = row + (size_t)h * head_dim + i;
            float a = ld(x, at), b = ld(x, at + half);
            st(x, at, a * c - b * s);
            st(x, at + half, b * c + a * s);
        }
    }
}

static void rope(struct gale_backend *be, float *x, const int32_t *positions, int rows, int heads, int head_dim,
                 float theta, double sign, const char *op)
{
    if (be->failed || rows <= 0)
        return;
    int threads = head_dim / 2 < 128 ? 32 * ((head_dim / 2 + 31) / 32) : 128;
    CUDA_DISPATCH(be, rope_kernel<T><<<rows, threads, 0, stream_of(be)>>>((T *)x, positions, heads, head_dim, theta,
                                                                           sign));
    cuda_after(be, cudaSuccess, "%s: %d rows x %d heads x %d", op, rows, heads, head_dim);
}

void cuda_rope_fwd(struct gale_backend *be, float *x, const int32_t *positions, int rows, int heads, int head_dim,
                   float theta)
{
    rope(be, x, positions, rows, heads, head_dim, theta, 1.0, "rope_fwd");
}

void cuda_rope_bwd(struct gale_backend *be, float *dx, const int32_t *positions, int rows, int heads, int head_dim,
                   float theta)
{
    rope(be, dx, positions, rows, heads, head_dim, theta, -1.0, "rope_bwd");
}

/* ---- SwiGLU ---- */

template <typename T> __global__ void swiglu_fwd_kernel(T *out, const T *gate, const T *up, size_t n)
{
    FOR_EACH(i, n) {
        float g = ld(gate, i);
        st(out, i, g / (1.0f + expf(-g)) * ld(up, i));
    }
}

template <typename T> __global__ void swiglu_bwd_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up,
                                                        size_t n)
{
    FOR_EACH(i, n) {
        float g = ld(gate, i), sig = 1.0f / (1.0f + expf(-g)), d = ld(dout, i), u = ld(up, i);
        st(dup, i, d * g * sig);
        st(dgate, i, d * u * sig * (1.0f + g * (1.0f - sig)));
    }
}

void cuda_swiglu_fwd(struct gale_backend *be, float *out, const float *gate, const float *up, size_t n)
{
    if (be->failed || !n)
        return;
    CUDA_DISPATCH(be, swiglu_fwd_kernel<T><<<grid_stride_blocks(n), THREADS, 0, stream_of(be)>>>(
                          (T *)out, (const T *)gate, (const T *)up, n));
    cuda_after(be, cudaSuccess, "swiglu_fwd: %zu elements", n);
}

void cuda_swiglu_bwd(struct gale_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n)
{
    if (be->failed || !n)
        return;
    CUDA_DISPATCH(be, swiglu_bwd_kernel<T><<<grid_stride_blocks(n), THREADS, 0, stream_of(be)>>>(
                          (T *)dgate, (T *)dup, (const T *)dout, (const T *)gate, (const T *)up, n));
    cuda_after(be, cudaSuccess, "swiglu_bwd: %zu elements", n);
}

/* ---- dropout (LoRA's input dropout) ---- */

/* gale_rng_uniform (model/rng.c) on the device: the same draw, so the CPU and the GPU drop the
 * same elements for the same seed. */
__device__ static uint64_t rng_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

__device__ static double rng_uniform(uint64_t seed, uint64_t counter)
{
    uint64_t bits = rng_mix(rng_mix(seed + 0x9e3779b97f4a7c15ULL) ^ (counter * 0x9e3779b97f4a7c15ULL + 1));
    return ((double)(bits >> 11) + 0.5) * 0x1.0p-53;
}

template <typename T> __global__ void dropout_kernel(T *out, const T *x, size_t n, float p, uint64_t seed,
                                                     int accumulate)
{
    float keep_scale = 1.0f / (1.0f - p);
    FOR_EACH(i, n) {
        float y = rng_uniform(seed, i) >= p ? ld(x, i) * keep_scale : 0.0f;
        st(out, i, accumulate ? ld(out, i) + y : y);
    }
}

void cuda_dropout(struct gale_backend *be, float *out, const float *x, size_t n, float p, uint64_t seed,
                  int accumulate)
{
    if (be->failed || !n)
        return;
    CUDA_DISPATCH(be, dropout_kernel<T><<<grid_stride_blocks(n), THREADS, 0, stream_of(be)>>>(
                          (T *)out, (const T *)x, n, p, seed, accumulate));
    cuda_after(be, cudaSuccess, "dropout: %zu elements, p %g", n, (double)p);
}


/* ---- router: one thread per row (a few experts) ---- */

#define MAX_EXPERTS 256

__global__ void router_fwd_kernel(float *probs, float *lse, int32_t *topk_idx, float *topk_w, const float *logits,
                                  int rows, int experts, int k)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows)
        gale_router_fwd_row(probs + (size_t)r * experts, lse + r, topk_idx + (size_t)r * k, topk_w + (size_t)r * k,
                            logits + (size_t)r * experts, experts, k);
}

void cuda_router_fwd(struct gale_backend *be, float *probs, float *lse, int32_t *topk_idx, float *topk_w,
                     const float *logits, int rows, int experts, int k)
{
    if (be->failed || rows <= 0)
        return;
    router_fwd_kernel<<<blocks_for((size_t)rows, 128), 128, 0, stream_of(be)>>>(probs, lse, topk_idx, topk_w, logits,
                                                                                rows, experts, k);
    cuda_after(be, cudaSuccess, "router_fwd: %d rows x %d experts, top %d", rows, experts, k);
}

__global__ void router_bwd_kernel(float *dlogits, const float *dtopk_w, const float *probs, const float *lse,
                                  const int32_t *topk_idx, const float *topk_w, const float *dprobs_const,
                                  float z_scale, int rows, int experts, int k)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    double dp[MAX_EXPERTS];
    if (r < rows)
        gale_router_bwd_row(dlogits + (size_t)r * experts, dp, probs + (size_t)r * experts, lse[r],
                            topk_idx + (size_t)r * k, topk_w + (size_t)r * k, dtopk_w + (size_t)r * k, dprobs_const,
                            z_scale, experts, k);
}

void cuda_router_bwd(struct gale_backend *be, float *dlogits, const float *dtopk_w, const float *probs, const float *lse,
                     const int32_t *topk_idx, const float *topk_w, const float *dprobs_const, float z_scale,
                     int rows, int experts, int k)
{
    if (be->failed || rows <= 0)
        return;
    if (experts > MAX_EXPERTS) {
        gale_backend_fail(be, "router_bwd: %d experts, the cuda kernel takes at most %d", experts, MAX_EXPERTS);
        return;
    }
    router_bwd_kernel<<<blocks_for((size_t)rows, 64), 64, 0, stream_of(be)>>>(
        dlogits, dtopk_w, probs, lse, topk_idx, topk_w, dprobs_const, z_scale, rows, experts, k);
    cuda_after(be, cudaSuccess, "router_bwd: %d rows x %d experts, top %d", rows, experts, k);
}

/* stats[e] for e < experts: block e sums column e; block `experts` sums lse^2 */
__global__ void router_stats_kernel(double *stats, const float *probs, const float *lse, int rows, int experts)
{
    int e = blockIdx.x;
    double s = 0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x)
        s += e < experts ? (double)probs[(size_t)r * experts + e] : (double)lse[r] * lse[r];
    s = block_sum(s);
    if (threadIdx.x == 0)
        stats[e] = s;
}

void cuda_router_stats(struct gale_backend *be, double *stats, const float *probs, const float *lse, int rows,
                       int experts)
{
    if (be->failed)
        return;
    router_stats_kernel<<<experts + 1, THREADS, 0, stream_of(be)>>>(stats, probs, lse, rows, experts);
    cuda_after(be, cudaSuccess, "router_stats: %d rows x %d experts", rows, experts);
}

/* ---- expert permutation ---- */

__global__ void count_kernel(int32_t *counts, const int32_t *keys, size_t n)
{
    FOR_EACH(i, n)
        atomicAdd(&counts[keys[i]], 1);
}

/* slots in expert order, and within an expert in slot order: the CPU's counting sort */
__global__ void moe_slots_kernel(int32_t *slot_rows, int32_t *slot_of, const int32_t *order, int n, int k)
{
    FOR_EACH(pos, (size_t)n) {
        int s = order[pos];
        slot_rows[pos] = s / k;
        slot_of[s] = (int32_t)pos;
    }
}

void cuda_moe_plan(struct gale_backend *be, int32_t *counts, int32_t *slot_rows, int32_t *slot_of,
                   const int32_t *topk_idx, int rows, int experts, int k)
{
    if (be->failed)
        return;
    int n = rows * k;
    cudaStream_t s = stream_of(be);
    if (cuda_after(be, cudaMemsetAsync(counts, 0, sizeof(int32_t) * (size_t)experts, s), "moe_plan: counts"))
        return;
    if (n <= 0)
        return;
    count_kernel<<<grid_stride_blocks((size_t)n), THREADS, 0, s>>>(counts, topk_idx, (size_t)n);
    int32_t *sorted = NULL, *order = NULL;
    if (cuda_stable_order(be, topk_idx, n, &sorted, &order, "moe_plan"))
        return;
    moe_slots_kernel<<<grid_stride_blocks((size_t)n), THREADS, 0, s>>>(slot_rows, slot_of, order, n, k);
    cuda_after(be, cudaSuccess, "moe_plan: %d rows x top %d of %d experts", rows, k, experts);
}

template <typename T> __global__ void moe_gather_kernel(T *xe, const T *x, const int32_t *slot_rows, int slots, int dim)
{
    FOR_EACH(i, (size_t)slots * dim) {
        size_t s = i / dim, c = i % dim;
        xe[i] = x[(size_t)slot_rows[s] * dim + c];
    }
}

void cuda_moe_gather(struct gale_backend *be, float *xe, const float *x, const int32_t *slot_rows, int slots, int dim)
{
    if (be->failed || slots <= 0)
        return;
    CUDA_DISPATCH(be, moe_gather_kernel<T><<<grid_stride_blocks((size_t)slots * dim), THREADS, 0, stream_of(be)>>>(
                          (T *)xe, (const T *)x, slot_rows, slots, dim));
    cuda_after(be, cudaSuccess, "moe_gather: %d slots x %d", slots, dim);
}

template <typename T> __global__ void moe_combine_kernel(T *out, const T *ye, const float *topk_w,
                                                         const int32_t *slot_of, int rows, int k, int dim)
{
    FOR_EACH(i, (size_t)rows * dim) {
        size_t r = i / dim, c = i % dim;
        float o = ld(out, i);
        for (int j = 0; j < k; j++)
            o += topk_w[r * k + j] * ld(ye, (size_t)slot_of[r * k + j] * dim + c);
        st(out, i, o);
    }
}

void cuda_moe_combine(struct gale_backend *be, float *out, const float *ye, const float *topk_w, const int32_t *slot_of,
                      int rows, int k, int dim)
{
    if (be->failed || rows <= 0)
        return;
    CUDA_DISPATCH(be, moe_combine_kernel<T><<<grid_stride_blocks((size_t)rows * dim), THREADS, 0, stream_of(be)>>>(
                          (T *)out, (const T *)ye, topk_w, slot_of, rows, k, dim));
    cuda_after(be, cudaSuccess, "moe_combine: %d rows x top %d x %d", rows, k, dim);
}

/* one block per (row, choice) */
template <typename T> __global__ void moe_combine_bwd_kernel(T *dye, float *dtopk_w, const T *dout, const T *ye,
                                                             const float *topk_w, const int32_t *slot_of, int k,
                                                             int dim)
{
    size_t rj = blockIdx.x, r = rj / k, s = (size_t)slot_of[rj];
    float w = topk_w[rj];
    double dot = 0;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        float d = ld(dout, r * dim + c);
        st(dye, s * dim + c, w * d);
        dot += (double)d * ld(ye, s * dim + c);
    }
    dot = block_sum(dot);
    if (threadIdx.x == 0)
        dtopk_w[rj] = (float)dot;
}

void cuda_moe_combine_bwd(struct gale_backend *be, float *dye, float *dtopk_w, const float *dout, const float *ye,
                          const float *topk_w, const int32_t *slot_of, int rows, int k, int dim)
{
    if (be->failed || rows <= 0)
        return;
    CUDA_DISPATCH(be, moe_combine_bwd_kernel<T><<<rows * k, THREADS, 0, stream_of(be)>>>(
                          (T *)dye, dtopk_w, (const T *)dout, (const T *)ye, topk_w, slot_of, k, dim));
    cuda_after(be, cudaSuccess, "moe_combine_bwd: %d rows x top %d x %d", rows, k, dim);
}

void cuda_moe_scatter_add(struct gale_backend *be, float *dx, const float *dxe, const int32_t *slot_rows, int slots,
                          int dim)
{
    cuda_scatter_add_rows(be, dx, is_bf16(be), dxe, slot_rows, slots, dim, "moe_scatter_add");
}

/* ---- cross-entropy: one block per row over the whole vocabulary; the row's loss and
 * whether it counted go to scratch, then one block adds them to the step's sums ---- */

__global__ void cross_entropy_kernel(float *logits, const int32_t *targets, int vocab, float grad_scale,
                                     double *row_loss, double *row_counted)
{
    float *x = logits + (size_t)blockIdx.x * vocab;
    int t = targets[blockIdx.x];
    if (t < 0) {
        if (grad_scale != 0)
            for (int v = threadIdx.x; v < vocab; v += blockDim.x)
                x[v] = 0;
        if (threadIdx.x == 0)
            row_loss[blockIdx.x] = row_counted[blockIdx.x] = 0;
        return;
    }
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x)
        mx = fmaxf(mx, x[v]);
    mx = block_max(mx);
    float xt = x[t];
    double sum = 0;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x)
        sum += expf(x[v] - mx);
    sum = block_sum(sum);
    if (threadIdx.x == 0) {
        row_loss[blockIdx.x] = mx + log(sum) - xt;
        row_counted[blockIdx.x] = 1;
    }
    if (grad_scale == 0)
        return;
    float scale = (float)(grad_scale / sum);
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float g = expf(x[v] - mx) * scale;
        x[v] = v == t ? g - grad_scale : g;
    }
}

__global__ void add_row_sums_kernel(double *sums, const double *row_loss, const double *row_counted, int rows)
{
    double loss = 0, counted = 0;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        loss += row_loss[r];
        counted += row_counted[r];
    }
    loss = block_sum(loss);
    counted = block_sum(counted);
    if (threadIdx.x == 0) {
        sums[0] += loss;
        sums[1] += counted;
    }
}

void cuda_cross_entropy(struct gale_backend *be, float *logits, const int32_t *targets, int rows, int vocab,
                        float grad_scale, double *sums)
{
    if (be->failed || rows <= 0)
        return;
    double *row = (double *)cuda_scratch(be, 2 * (size_t)rows * sizeof(double), "cross_entropy");
    if (!row)
        return;
    cudaStream_t s = stream_of(be);
    cross_entropy_kernel<<<rows, 512, 0, s>>>(logits, targets, vocab, grad_scale, row, row + rows);
    add_row_sums_kernel<<<1, 1024, 0, s>>>(sums, row, row + rows, rows);
    cuda_after(be, cudaSuccess, "cross_entropy: %d rows x %d", rows, vocab);
}
