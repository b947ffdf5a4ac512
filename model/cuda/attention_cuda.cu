/* attention_cuda: causal GQA attention, flash-style: an online softmax over tiles of 32 keys,
 * so no T x T scores exist anywhere; the backward recomputes the probabilities from the saved
 * log-sum-exp. GQA reads the shared K/V head in place (head h uses kv head h / (heads /
 * kv_heads)), never a copy per head. The sliding window is Mistral's (query i sees keys
 * i - W < j <= i): a block of queries loops only over the key tiles its window reaches, so the
 * tiles it masks entirely are never loaded; segments (document masks) mask within them.
 *
 * Written for clarity first: one warp per query row (or, in the dK/dV kernel, per key row),
 * each lane owning one key (or query) of the tile for the scores and head_dim / 32 columns of
 * the accumulators; fp32 throughout, tiles in shared memory. */
#include "model/cuda/cuda_backend.h"

#include <math.h>

#define TILE 32          /* keys (or queries) per tile: one per lane */
#define ROWS 8           /* query (or key) rows per block: one per warp */
#define MAX_HD 256       /* head_dim <= 32 * PER_LANE */
#define PER_LANE (MAX_HD / 32)

struct attn_shape {
    int n_q, n_kv;   /* queries and keys per sequence */
    int q_first;     /* sequence index of query 0: 0 in training, n_kv - n_q in generation */
    int heads, kv_heads, hd, window;
    float scale;
};

__device__ __forceinline__ int first_key(int i, int window)
{
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

/* Forward: block (query tile, head, sequence); warp w owns query qi = tile * ROWS + w. */
template <typename T>
__global__ void attention_fwd_kernel(T *out, float *lse, const T *q, const T *k, const T *v, const int32_t *seg,
                                     struct attn_shape a)
{
    extern __shared__ float smem[];
    int hd = a.hd, ldt = hd + 1;
    float *ks = smem, *vs = ks + TILE * ldt, *qs = vs + TILE * ldt;
    int *segk = (int *)(qs + ROWS * hd);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
    int dq = a.heads * hd, dkv = a.kv_heads * hd;
    int q0 = blockIdx.x * ROWS, qi = q0 + warp, i = a.q_first + qi;
    int valid = qi < a.n_q;
    int last_q = min(q0 + ROWS, a.n_q) - 1;
    int lo = first_key(a.q_first + q0, a.window), hi = a.q_first + last_q;
    size_t q_row = (size_t)b * a.n_q + qi;
    for (int c = lane; c < hd; c += 32)
        qs[warp * hd + c] = valid ? ld(q, q_row * dq + (size_t)h * hd + c) : 0.0f;
    int segq = seg && valid ? seg[(size_t)b * a.n_kv + i] : 0;
    float m = -INFINITY, l = 0, acc[PER_LANE];
#pragma unroll
    for (int t = 0; t < PER_LANE; t++)
        acc[t] = 0;
    for (int j0 = lo; j0 <= hi; j0 += TILE) {
        __syncthreads();
        for (int x = threadIdx.x; x < TILE * hd; x += blockDim.x) {
            int r = x / hd, c = x % hd, j = j0 + r;
            size_t at = ((size_t)b * a.n_kv + j) * dkv + (size_t)g * hd + c;
            ks[r * ldt + c] = j <= hi ? ld(k, at) : 0.0f;
            vs[r * ldt + c] = j <= hi ? ld(v, at) : 0.0f;
        }
        if (threadIdx.x < TILE)
            segk[threadIdx.x] = seg && j0 + (int)threadIdx.x <= hi ? seg[(size_t)b * a.n_kv + j0 + threadIdx.x] : 0;
        __syncthreads();
        if (!valid)
            continue;
        int j = j0 + lane;
        int vis = j <= i && (a.window <= 0 || i - j < a.window) && (!seg || segk[lane] == segq);
        float s = -INFINITY;
        if (vis) {
            float dot = 0;
            for (int c = 0; c < hd; c++)
                dot += qs[warp * hd + c] * ks[lane * ldt + c];
            s = a.scale * dot;
        }
        float tile_max = warp_max(s);
        if (tile_max == -INFINITY)
            continue;  /* nothing visible in this tile for this query */
        float m_new = fmaxf(m, tile_max), corr = expf(m - m_new);
        float p = vis ? expf(s - m_new) : 0.0f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int t = 0; t < PER_LANE; t++)
            acc[t] *= corr;
        for (int jj = 0; jj < TILE; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            if (pj == 0)
                continue;
#pragma unroll
            for (int t = 0; t < PER_LANE; t++) {
                int c = lane + 32 * t;
                if (c < hd)
                    acc[t] += pj * vs[jj * ldt + c];
            }
        }
        m = m_new;
    }
    if (!valid)
        return;
#pragma unroll
    for (int t = 0; t < PER_LANE; t++) {
        int c = lane + 32 * t;
        if (c < hd)
            st(out, q_row * dq + (size_t)h * hd + c, acc[t] / l);
    }
    if (lse && lane == 0)
        lse[((size_t)b * a.heads + h) * a.n_q + qi] = m + logf(l);
}

static size_t fwd_smem(int hd)
{
    return (2 * (size_t)TILE * (hd + 1) + (size_t)ROWS * hd) * sizeof(float) + TILE * sizeof(int);
}

static int check_shape(struct gale_backend *be, const char *op, int heads, int kv_heads, int hd)
{
    if (hd < 1 || hd > MAX_HD || kv_heads < 1 || heads % kv_heads) {
        gale_backend_fail(be, "%s: head_dim %d (at most %d) with %d heads over %d kv heads: not supported", op, hd,
                          MAX_HD, heads, kv_heads);
        return -1;
    }
    return 0;
}

template <typename K> static cudaError_t allow_smem(K kernel, size_t bytes)
{
    return bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes)
                             : cudaSuccess;
}

static void attention_forward(struct gale_backend *be, float *out, float *lse, const float *q, const float *k,
                              const float *v, const int32_t *seg, int batch, struct attn_shape a, const char *op)
{
    if (be->failed || a.n_q <= 0 || batch <= 0 || check_shape(be, op, a.heads, a.kv_heads, a.hd))
        return;
    size_t smem = fwd_smem(a.hd);
    dim3 grid((a.n_q + ROWS - 1) / ROWS, a.heads, batch);
    cudaError_t st = cudaSuccess;
    CUDA_DISPATCH(be, {
        st = allow_smem(attention_fwd_kernel<T>, smem);
        if (st == cudaSuccess)
            attention_fwd_kernel<T><<<grid, ROWS * 32, smem, stream_of(be)>>>((T *)out, lse, (const T *)q,
                                                                               (const T *)k, (const T *)v, seg, a);
    });
    cuda_after(be, st, "%s: %d x %d queries over %d keys, %d heads / %d kv heads x %d, window %d", op, batch, a.n_q,
               a.n_kv, a.heads, a.kv_heads, a.hd, a.window);
}

void cuda_attention_fwd(struct gale_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *segments, int batch, int seq, int heads, int kv_heads, int head_dim,
                        int window)
{
    struct attn_shape a = {seq, seq, 0, heads, kv_heads, head_dim, window, (float)(1.0 / sqrt((double)head_dim))};
    attention_forward(be, out, lse, q, k, v, segments, batch, a, "attention_fwd");
}

void cuda_attention_cached_fwd(struct gale_backend *be, float *out, const float *q, const float *k, const float *v,
                               int n_q, int n_kv, int heads, int kv_heads, int head_dim, int window)
{
    struct attn_shape a = {n_q, n_kv, n_kv - n_q, heads, kv_heads, head_dim, window,
                           (float)(1.0 / sqrt((double)head_dim))};
    attention_forward(be, out, NULL, q, k, v, NULL, 1, a, "attention_cached_fwd");
}

/* ---- backward ---- */

/* delta[b, h, i] = dO_i . O_i (one warp per query row and head) */
template <typename T>
__global__ void attention_delta_kernel(float *delta, const T *dout, const T *out, int rows, int heads, int hd, int seq)
{
    size_t w = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (w >= (size_t)rows * heads)
        return;
    size_t row = w / heads;
    int h = (int)(w % heads);
    size_t at = row * (size_t)heads * hd + (size_t)h * hd;
    double s = 0;
    for (int c = lane; c < hd; c += 32)
        s += (double)ld(dout, at + c) * ld(out, at + c);
    s = warp_sum(s);
    if (lane == 0) {
        size_t b = row / seq, i = row % seq;
        delta[(b * heads + h) * seq + i] = (float)s;
    }
}

/* dQ: block (query tile, head, sequence), warp per query; dq_i = scale sum_j dS_ij K_j with
 * dS_ij = P_ij (dO_i . V_j - delta_i), P recomputed from the saved log-sum-exp. */
template <typename T>
__global__ void attention_dq_kernel(T *dq, const T *dout, const float *lse, const float *delta, const T *q, const T *k,
                                    const T *v, const int32_t *seg, struct attn_shape a)
{
    extern __shared__ float smem[];
    int hd = a.hd, ldt = hd + 1;
    float *ks = smem, *vs = ks + TILE * ldt, *qs = vs + TILE * ldt, *dos = qs + ROWS * hd;
    int *segk = (int *)(dos + ROWS * hd);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
    int dqw = a.heads * hd, dkv = a.kv_heads * hd;
    int q0 = blockIdx.x * ROWS, i = q0 + warp, valid = i < a.n_q;
    int hi = min(q0 + ROWS, a.n_q) - 1, lo = first_key(q0, a.window);
    size_t row = (size_t)b * a.n_q + i, at = row * dqw + (size_t)h * hd;
    for (int c = lane; c < hd; c += 32) {
        qs[warp * hd + c] = valid ? ld(q, at + c) : 0.0f;
        dos[warp * hd + c] = valid ? ld(dout, at + c) : 0.0f;
    }
    size_t stat = ((size_t)b * a.heads + h) * a.n_q + i;
    float li = valid ? lse[stat] : 0.0f, di = valid ? delta[stat] : 0.0f;
    int segq = seg && valid ? seg[row] : 0;
    float acc[PER_LANE];
#pragma unroll
    for (int t = 0; t < PER_LANE; t++)
        acc[t] = 0;
    for (int j0 = lo; j0 <= hi; j0 += TILE) {
        __syncthreads();
        for (int x = threadIdx.x; x < TILE * hd; x += blockDim.x) {
            int r = x / hd, c = x % hd, j = j0 + r;
            size_t kat = ((size_t)b * a.n_kv + j) * dkv + (size_t)g * hd + c;
            ks[r * ldt + c] = j <= hi ? ld(k, kat) : 0.0f;
            vs[r * ldt + c] = j <= hi ? ld(v, kat) : 0.0f;
        }
        if (threadIdx.x < TILE)
            segk[threadIdx.x] = seg && j0 + (int)threadIdx.x <= hi ? seg[(size_t)b * a.n_kv + j0 + threadIdx.x] : 0;
        __syncthreads();
        if (!valid)
            continue;
        int j = j0 + lane;
        int vis = j <= i && (a.window <= 0 || i - j < a.window) && (!seg || segk[lane] == segq);
        if (!__any_sync(0xffffffffu, vis))
            continue;
        float ds = 0;
        if (vis) {
            float s = 0, dp = 0;
            for (int c = 0; c < hd; c++) {
                s += qs[warp * hd + c] * ks[lane * ldt + c];
                dp += dos[warp * hd + c] * vs[lane * ldt + c];
            }
            float p = expf(a.scale * s - li);
            ds = p * (dp - di);
        }
        for (int jj = 0; jj < TILE; jj++) {
            float d = __shfl_sync(0xffffffffu, ds, jj);
            if (d == 0)
                continue;
#pragma unroll
            for (int t = 0; t < PER_LANE; t++) {
                int c = lane + 32 * t;
                if (c < hd)
                    acc[t] += d * ks[jj * ldt + c];
            }
        }
    }
    if (!valid)
        return;
#pragma unroll
    for (int t = 0; t < PER_LANE; t++) {
        int c = lane + 32 * t;
        if (c < hd)
            st(dq, at + c, a.scale * acc[t]);
    }
}

/* dK, dV: block (key tile, kv head, sequence), warp per key j; loops over every query head of
 * the group and the query tiles that can see its keys: dv_j = sum P_ij dO_i,
 * dk_j = scale sum dS_ij Q_i. Each key row is written by one warp: no atomics. */
template <typename T>
__global__ void attention_dkv_kernel(T *dk, T *dv, const T *dout, const float *lse, const float *delta, const T *q,
                                     const T *k, const T *v, const int32_t *seg, struct attn_shape a)
{
    extern __shared__ float smem[];
    int hd = a.hd, ldt = hd + 1;
    float *qs = smem, *dos = qs + TILE * ldt, *kw = dos + TILE * ldt, *vw = kw + ROWS * hd;
    float *lt = vw + ROWS * hd, *dt = lt + TILE;
    int *segt = (int *)(dt + TILE);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
    int dqw = a.heads * hd, dkv = a.kv_heads * hd;
    int k0 = blockIdx.x * ROWS, j = k0 + warp, valid = j < a.n_kv;
    int last_k = min(k0 + ROWS, a.n_kv) - 1;
    int qhi = a.window > 0 ? min(a.n_q - 1, last_k + a.window - 1) : a.n_q - 1;
    size_t krow = (size_t)b * a.n_kv + j, kat = krow * dkv + (size_t)g * hd;
    for (int c = lane; c < hd; c += 32) {
        kw[warp * hd + c] = valid ? ld(k, kat + c) : 0.0f;
        vw[warp * hd + c] = valid ? ld(v, kat + c) : 0.0f;
    }
    int segj = seg && valid ? seg[krow] : 0;
    float adk[PER_LANE], adv[PER_LANE];
#pragma unroll
    for (int t = 0; t < PER_LANE; t++)
        adk[t] = adv[t] = 0;
    for (int h = g * group; h < (g + 1) * group; h++) {
        for (int i0 = k0; i0 <= qhi; i0 += TILE) {
            __syncthreads();
            for (int x = threadIdx.x; x < TILE * hd; x += blockDim.x) {
                int r = x / hd, c = x % hd, i = i0 + r;
                size_t qat = ((size_t)b * a.n_q + i) * dqw + (size_t)h * hd + c;
                qs[r * ldt + c] = i <= qhi ? ld(q, qat) : 0.0f;
                dos[r * ldt + c] = i <= qhi ? ld(dout, qat) : 0.0f;
            }
            if (threadIdx.x < TILE) {
                int i = i0 + threadIdx.x;
                size_t stat = ((size_t)b * a.heads + h) * a.n_q + i;
                lt[threadIdx.x] = i <= qhi ? lse[stat] : 0.0f;
                dt[threadIdx.x] = i <= qhi ? delta[stat] : 0.0f;
                segt[threadIdx.x] = seg && i <= qhi ? seg[(size_t)b * a.n_q + i] : 0;
            }
            __syncthreads();
            if (!valid)
                continue;
            int i = i0 + lane;
            int vis = i <= qhi && j <= i && (a.window <= 0 || i - j < a.window) && (!seg || segt[lane] == segj);
            if (!__any_sync(0xffffffffu, vis))
                continue;
            float p = 0, ds = 0;
            if (vis) {
                float s = 0, dp = 0;
                for (int c = 0; c < hd; c++) {
                    s += qs[lane * ldt + c] * kw[warp * hd + c];
                    dp += dos[lane * ldt + c] * vw[warp * hd + c];
                }
                p = expf(a.scale * s - lt[lane]);
                ds = p * (dp - dt[lane]);
            }
            for (int ii = 0; ii < TILE; ii++) {
                float pi = __shfl_sync(0xffffffffu, p, ii), di = __shfl_sync(0xffffffffu, ds, ii);
                if (pi == 0 && di == 0)
                    continue;
#pragma unroll
                for (int t = 0; t < PER_LANE; t++) {
                    int c = lane + 32 * t;
                    if (c < hd) {
                        adv[t] += pi * dos[ii * ldt + c];
                        adk[t] += di * qs[ii * ldt + c];
                    }
                }
            }
        }
    }
    if (!valid)
        return;
#pragma unroll
    for (int t = 0; t < PER_LANE; t++) {
        int c = lane + 32 * t;
        if (c < hd) {
            st(dk, kat + c, a.scale * adk[t]);
            st(dv, kat + c, adv[t]);
        }
    }
}

void cuda_attention_bwd(struct gale_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v, const int32_t *segments,
                        int batch, int seq, int heads, int kv_heads, int head_dim, int window)
{
    if (be->failed || batch <= 0 || seq <= 0 || check_shape(be, "attention_bwd", heads, kv_heads, head_dim))
        return;
    struct attn_shape a = {seq, seq, 0, heads, kv_heads, head_dim, window, (float)(1.0 / sqrt((double)head_dim))};
    size_t rows = (size_t)batch * seq;
    float *delta = (float *)cuda_scratch(be, rows * heads * sizeof(float), "attention_bwd");
    if (!delta)
        return;
    int hd = head_dim, ldt = hd + 1;
    size_t dq_smem = (2 * (size_t)TILE * ldt + 2 * (size_t)ROWS * hd) * sizeof(float) + TILE * sizeof(int);
    size_t dkv_smem = (2 * (size_t)TILE * ldt + 2 * (size_t)ROWS * hd + 2 * TILE) * sizeof(float) + TILE * sizeof(int);
    dim3 qgrid((seq + ROWS - 1) / ROWS, heads, batch), kgrid((seq + ROWS - 1) / ROWS, kv_heads, batch);
    cudaStream_t s = stream_of(be);
    cudaError_t st = cudaSuccess;
    CUDA_DISPATCH(be, {
        attention_delta_kernel<T><<<blocks_for(rows * heads * 32, 256), 256, 0, s>>>(
            delta, (const T *)dout, (const T *)out, (int)rows, heads, hd, seq);
        st = allow_smem(attention_dq_kernel<T>, dq_smem);
        if (st == cudaSuccess)
            st = allow_smem(attention_dkv_kernel<T>, dkv_smem);
        if (st == cudaSuccess) {
            attention_dq_kernel<T><<<qgrid, ROWS * 32, dq_smem, s>>>((T *)dq, (const T *)dout, lse, delta,
                                                                     (const T *)q, (const T *)k, (const T *)v,
                                                                     segments, a);
            attention_dkv_kernel<T><<<kgrid, ROWS * 32, dkv_smem, s>>>((T *)dk, (T *)dv, (const T *)dout, lse, delta,
                                                                       (const T *)q, (const T *)k, (const T *)v,
                                                                       segments, a);
        }
    });
    cuda_after(be, st, "attention_bwd: %d x %d rows, %d heads / %d kv heads x %d, window %d", batch, seq, heads,
               kv_heads, head_dim, window);
}
