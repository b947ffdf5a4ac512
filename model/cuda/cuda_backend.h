/* cuda_backend: what the CUDA backend's files share. The context (stream, cuBLASLt handle and
 * workspace, the product plans cached per shape, a grow-only scratch buffer), the sticky-error
 * helpers that name the op and its sizes, element access for the two compute dtypes, and the
 * launchers each file provides to the ops table (ops_cuda.cu).
 *
 * Element types: a compute-dtype buffer holds float (fp32 mode) or __nv_bfloat16 (bf16 mode);
 * kernels are templates over that type T and load into fp32, compute in fp32 and store with
 * round to nearest even, as the CPU's bf16 mode rounds its fp32 results. */
#ifndef GALE_MODEL_CUDA_BACKEND_H
#define GALE_MODEL_CUDA_BACKEND_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "model/ops.h"
}

typedef __nv_bfloat16 bf16;

/* One cached cuBLASLt product: its shape and types, and the descriptors and algorithm. */
struct lt_plan {
    int trans_a, trans_b, m, n, k, lda, ldb, ldc;
    int ta, tb, tc;      /* enum gale_dtype */
    int align;           /* smallest alignment in bytes of the pointers and row strides */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    int use_gemm_ex;     /* no cuBLASLt algorithm for it: cublasGemmEx (any alignment) */
};

struct cuda_ctx {
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    cublasHandle_t blas;        /* cublasGemmEx: products no cuBLASLt algorithm takes */
    void *workspace;
    size_t workspace_bytes;
    struct lt_plan *plans;
    int n_plans, cap_plans;
    void *scratch;              /* grow-only, for one op at a time (stream order) */
    size_t scratch_bytes;
    int sync_each_op;           /* GALE_CUDA_SYNC=1: wait after every op to name a failing kernel */
    struct cuda_profile *profile; /* GALE_CUDA_PROFILE=1: time per op and shape (ops_cuda.cu) */
};

static inline struct cuda_ctx *cuda_ctx_of(struct gale_backend *be)
{
    return (struct cuda_ctx *)be->ctx;
}

static inline cudaStream_t stream_of(struct gale_backend *be)
{
    return cuda_ctx_of(be)->stream;
}

static inline int is_bf16(const struct gale_backend *be)
{
    return be->compute == GALE_BF16;
}

/* After queuing an op's kernels: records a launch failure (or, with GALE_CUDA_SYNC=1, any
 * failure of the op's kernels) naming the op and its sizes; returns -1 when failed. */
int cuda_after(struct gale_backend *be, cudaError_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The scratch buffer, at least `bytes` (NULL and a failure when out of memory). */
void *cuda_scratch(struct gale_backend *be, size_t bytes, const char *op);

/* Element access: fp32 in, fp32 out, round to nearest even on bf16 stores. */
__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float x) { p[i] = x; }
__device__ __forceinline__ void st(bf16 *p, size_t i, float x) { p[i] = __float2bfloat16_rn(x); }

/* Deterministic block reductions (fixed order; blockDim.x a multiple of 32, at most 1024). */
template <typename V> __device__ __forceinline__ V warp_sum(V x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

template <typename V> __device__ __forceinline__ V warp_max(V x)
{
    for (int o = 16; o > 0; o >>= 1)
        x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* op 0: sum, 1: max; every thread gets the result */
template <typename V, int op> __device__ V block_reduce(V x)
{
    __shared__ V part[32];
    x = op ? warp_max(x) : warp_sum(x);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();  /* the previous call's readers are done with part[] */
    if (lane == 0)
        part[w] = x;
    __syncthreads();
    if (w == 0) {
        x = lane < nw ? part[lane] : part[0];
        x = op ? warp_max(x) : warp_sum(lane < nw ? x : (V)0);
        if (lane == 0)
            part[0] = x;
    }
    __syncthreads();
    return part[0];
}

template <typename V> __device__ V block_sum(V x) { return block_reduce<V, 0>(x); }
template <typename V> __device__ V block_max(V x) { return block_reduce<V, 1>(x); }

/* Grid size for n items of `per_block`, at most 2^31 - 1 blocks. */
static inline unsigned blocks_for(size_t n, unsigned per_block)
{
    size_t b = (n + per_block - 1) / per_block;
    return (unsigned)(b ? (b < 0x7fffffffu ? b : 0x7fffffffu) : 1);
}

/* Runs the statements with T = bf16 or float, the backend's compute dtype. */
#define CUDA_DISPATCH(be, ...) \
    do { \
        if (is_bf16(be)) { \
            typedef bf16 T; \
            __VA_ARGS__; \
        } else { \
            typedef float T; \
            __VA_ARGS__; \
        } \
    } while (0)

/* ---- launchers (kernels_cuda.cu) ---- */
void cuda_embedding_fwd(struct gale_backend *be, float *out, const float *table, const int32_t *tokens, int rows, int dim);
void cuda_embedding_bwd(struct gale_backend *be, float *dtable, const float *dout, const int32_t *tokens, int rows, int dim);
void cuda_rmsnorm_fwd(struct gale_backend *be, float *out, float *rstd, const float *x, const float *w, int rows, int dim,
                      float eps);
void cuda_rmsnorm_bwd(struct gale_backend *be, float *dx, float *dw, const float *dout, const float *x, const float *w,
                      const float *rstd, int rows, int dim);
void cuda_rope_fwd(struct gale_backend *be, float *x, const int32_t *positions, int rows, int heads, int head_dim,
                   float theta);
void cuda_rope_bwd(struct gale_backend *be, float *dx, const int32_t *positions, int rows, int heads, int head_dim,
                   float theta);
void cuda_swiglu_fwd(struct gale_backend *be, float *out, const float *gate, const float *up, size_t n);
void cuda_dropout(struct gale_backend *be, float *out, const float *x, size_t n, float p, uint64_t seed,
                  int accumulate);
void cuda_swiglu_bwd(struct gale_backend *be, float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, size_t n);
void cuda_router_fwd(struct gale_backend *be, float *probs, float *lse, int32_t *topk_idx, float *topk_w,
                     const float *logits, int rows, int experts, int k);
void cuda_router_bwd(struct gale_backend *be, float *dlogits, const float *dtopk_w, const float *probs, const float *lse,
                     const int32_t *topk_idx, const float *topk_w, const float *dprobs_const, float z_scale,
                     int rows, int experts, int k);
void cuda_router_stats(struct gale_backend *be, double *stats, const float *probs, const float *lse, int rows,
                       int experts);
void cuda_moe_plan(struct gale_backend *be, int32_t *counts, int32_t *slot_rows, int32_t *slot_of,
                   const int32_t *topk_idx, int rows, int experts, int k);
void cuda_moe_gather(struct gale_backend *be, float *xe, const float *x, const int32_t *slot_rows, int slots, int dim);
void cuda_moe_combine(struct gale_backend *be, float *out, const float *ye, const float *topk_w, const int32_t *slot_of,
                      int rows, int k, int dim);
void cuda_moe_combine_bwd(struct gale_backend *be, float *dye, float *dtopk_w, const float *dout, const float *ye,
                          const float *topk_w, const int32_t *slot_of, int rows, int k, int dim);
void cuda_moe_scatter_add(struct gale_backend *be, float *dx, const float *dxe, const int32_t *slot_rows, int slots,
                          int dim);
void cuda_cross_entropy(struct gale_backend *be, float *logits, const int32_t *targets, int rows, int vocab,
                        float grad_scale, double *sums);

/* ---- attention (attention_cuda.cu) ---- */
void cuda_attention_fwd(struct gale_backend *be, float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *segments, int batch, int seq, int heads, int kv_heads, int head_dim,
                        int window);
void cuda_attention_cached_fwd(struct gale_backend *be, float *out, const float *q, const float *k, const float *v,
                               int n_q, int n_kv, int heads, int kv_heads, int head_dim, int window);
void cuda_attention_bwd(struct gale_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *out,
                        const float *lse, const float *q, const float *k, const float *v, const int32_t *segments,
                        int batch, int seq, int heads, int kv_heads, int head_dim, int window);

/* ---- sorting (sort_cuda.cu) ---- */
/* Sorts n keys in [0, 2^31) stably: *sorted_keys and *order (device arrays of n in the
 * context's scratch, valid until the next op that takes scratch) are the keys in ascending
 * order and the index each came from, ties in index order. -1 on failure. */
int cuda_stable_order(struct gale_backend *be, const int32_t *keys, int n, int32_t **sorted_keys, int32_t **order,
                      const char *op);
/* dst[keys[s], :] += src[s, :] for s < n, each destination row summed in fp32 in s order and
 * rounded once (DstT float or bf16; src in the compute dtype). */
void cuda_scatter_add_rows(struct gale_backend *be, float *dst, int dst_bf16, const float *src,
                           const int32_t *keys, int n, int dim, const char *op);

#endif
