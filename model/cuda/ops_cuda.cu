/* ops_cuda: the CUDA backend's context, memory and transfers, dense products through
 * cuBLASLt, the optimizer and the reductions, and its ops table. The other kernels are in
 * kernels_cuda.cu and attention_cuda.cu. One stream per backend: every op queues on it, so the
 * ops run in the order the graph calls them and the scratch buffer serves one op at a time.
 * Errors are sticky (model/backend.h): a failed CUDA or cuBLAS call records the op and its
 * sizes, and the ops after it queue nothing. */
#include "model/cuda/cuda_backend.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuBLASLt's workspace: 32 MiB is what its heuristics ask of Hopper's largest tiles. */
#define LT_WORKSPACE_BYTES ((size_t)32 << 20)

/* GALE_CUDA_PROFILE=1: an event after every op on the stream; the time between an op's event
 * and the one before it is that op's (ops run one after another on the stream; a gap while
 * the host queues nothing counts to the next op). Summed per op and shape, printed to stderr
 * when the backend is destroyed. */
#define PROFILE_EVENTS 1024

struct profile_row {
    char what[96];
    double ms;
    long calls;
};

struct cuda_profile {
    cudaEvent_t events[PROFILE_EVENTS];
    char names[PROFILE_EVENTS][96];
    int n;                      /* events recorded since the last resolve */
    struct profile_row *rows;
    int n_rows, cap_rows;
};

static void profile_add(struct cuda_profile *p, const char *what, double ms)
{
    for (int i = 0; i < p->n_rows; i++)
        if (!strcmp(p->rows[i].what, what)) {
            p->rows[i].ms += ms;
            p->rows[i].calls++;
            return;
        }
    if (p->n_rows == p->cap_rows) {
        p->cap_rows = p->cap_rows ? 2 * p->cap_rows : 64;
        p->rows = (struct profile_row *)gale_xrealloc(p->rows, (size_t)p->cap_rows * sizeof *p->rows);
    }
    struct profile_row *r = &p->rows[p->n_rows++];
    snprintf(r->what, sizeof r->what, "%s", what);
    r->ms = ms;
    r->calls = 1;
}

/* Waits for the recorded events and adds up their intervals; the last stays as the next start. */
static void profile_resolve(struct cuda_ctx *c)
{
    struct cuda_profile *p = c->profile;
    if (p->n < 2)
        return;
    cudaEventSynchronize(p->events[p->n - 1]);
    for (int i = 1; i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->events[i - 1], p->events[i]) == cudaSuccess)
            profile_add(p, p->names[i], ms);
    }
    cudaEvent_t last = p->events[p->n - 1];
    p->events[p->n - 1] = p->events[0];
    p->events[0] = last;
    p->n = 1;
}

static void profile_mark(struct cuda_ctx *c, const char *what)
{
    struct cuda_profile *p = c->profile;
    if (p->n == PROFILE_EVENTS)
        profile_resolve(c);
    snprintf(p->names[p->n], sizeof p->names[p->n], "%s", what);
    cudaEventRecord(p->events[p->n++], c->stream);
}

static int compare_rows(const void *a, const void *b)
{
    double x = ((const struct profile_row *)a)->ms, y = ((const struct profile_row *)b)->ms;
    return (x < y) - (x > y);
}

static void profile_print(struct cuda_ctx *c)
{
    struct cuda_profile *p = c->profile;
    profile_resolve(c);
    double total = 0;
    for (int i = 0; i < p->n_rows; i++)
        total += p->rows[i].ms;
    qsort(p->rows, (size_t)p->n_rows, sizeof *p->rows, compare_rows);
    fprintf(stderr, "cuda profile: %.1f ms in %d kinds of op (GALE_CUDA_PROFILE)\n%10s %6s %8s  %s\n", total,
            p->n_rows, "ms", "%", "calls", "op and shape");
    for (int i = 0; i < p->n_rows; i++)
        fprintf(stderr, "%10.2f %5.1f%% %8ld  %s\n", p->rows[i].ms, total > 0 ? 100 * p->rows[i].ms / total : 0,
                p->rows[i].calls, p->rows[i].what);
}

int cuda_after(struct gale_backend *be, cudaError_t status, const char *fmt, ...)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    if (status == cudaSuccess)
        status = cudaGetLastError();
    if (status == cudaSuccess && c->sync_each_op)
        status = cudaStreamSynchronize(c->stream);
    if (status == cudaSuccess && !c->profile)
        return 0;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (status == cudaSuccess) {
        profile_mark(c, what);
        return 0;
    }
    gale_backend_fail(be, "%s: %s (%s)", what, cudaGetErrorString(status), cudaGetErrorName(status));
    return -1;
}

void *cuda_scratch(struct gale_backend *be, size_t bytes, const char *op)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    if (bytes <= c->scratch_bytes)
        return c->scratch;
    if (c->scratch) {
        cudaStreamSynchronize(c->stream);  /* queued ops may still use the old buffer */
        cudaFree(c->scratch);
    }
    c->scratch = NULL;
    c->scratch_bytes = 0;
    size_t grown = bytes + bytes / 4;
    cudaError_t st = cudaMalloc(&c->scratch, grown);
    if (st != cudaSuccess) {
        c->scratch = NULL;
        gale_backend_fail(be, "%s: scratch of %zu bytes: %s", op, grown, cudaGetErrorString(st));
        return NULL;
    }
    c->scratch_bytes = grown;
    return c->scratch;
}

static int cuda_init(struct gale_backend *be, gale_error *err)
{
    if (be->compute != GALE_F32 && be->compute != GALE_BF16)
        return gale_fail(err, "the cuda backend computes in fp32 or bf16, not %s", gale_dtype_name(be->compute));
    int count = 0;
    cudaError_t st = cudaGetDeviceCount(&count);
    if (st != cudaSuccess || count == 0)
        return gale_fail(err, "backend cuda: no CUDA device (%s)",
                         st != cudaSuccess ? cudaGetErrorString(st) : "none found");
    struct cuda_ctx *c = (struct cuda_ctx *)gale_xcalloc(1, sizeof *c);
    const char *dev = getenv("GALE_CUDA_DEVICE");
    c->device = dev ? atoi(dev) : 0;
    const char *sync = getenv("GALE_CUDA_SYNC"), *prof = getenv("GALE_CUDA_PROFILE");
    c->sync_each_op = sync && atoi(sync) != 0;
    cublasStatus_t bst = CUBLAS_STATUS_SUCCESS;
    if ((st = cudaSetDevice(c->device)) != cudaSuccess ||
        (st = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (st = cudaMalloc(&c->workspace, LT_WORKSPACE_BYTES)) != cudaSuccess ||
        (bst = cublasLtCreate(&c->lt)) != CUBLAS_STATUS_SUCCESS ||
        (bst = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS ||
        (bst = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bst = cublasSetWorkspace(c->blas, c->workspace, LT_WORKSPACE_BYTES)) != CUBLAS_STATUS_SUCCESS) {
        gale_fail(err, "backend cuda: device %d: %s", c->device,
                  st != cudaSuccess ? cudaGetErrorString(st) : cublasLtGetStatusString(bst));
        be->ctx = c;
        be->ops->destroy(be);
        return -1;
    }
    c->workspace_bytes = LT_WORKSPACE_BYTES;
    be->ctx = c;
    if (prof && atoi(prof) != 0) {
        c->profile = (struct cuda_profile *)gale_xcalloc(1, sizeof *c->profile);
        for (int i = 0; i < PROFILE_EVENTS; i++)
            cudaEventCreate(&c->profile->events[i]);
        profile_mark(c, "start");
    }
    return 0;
}

static void cuda_destroy(struct gale_backend *be)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    if (c->profile) {
        profile_print(c);
        for (int i = 0; i < PROFILE_EVENTS; i++)
            cudaEventDestroy(c->profile->events[i]);
        free(c->profile->rows);
        free(c->profile);
    }
    for (int i = 0; i < c->n_plans; i++) {
        cublasLtMatmulDescDestroy(c->plans[i].desc);
        cublasLtMatrixLayoutDestroy(c->plans[i].la);
        cublasLtMatrixLayoutDestroy(c->plans[i].lb);
        cublasLtMatrixLayoutDestroy(c->plans[i].lc);
    }
    free(c->plans);
    if (c->lt)
        cublasLtDestroy(c->lt);
    if (c->blas)
        cublasDestroy(c->blas);
    cudaFree(c->workspace);
    cudaFree(c->scratch);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
    be->ctx = NULL;
}

static void cuda_synchronize(struct gale_backend *be)
{
    cudaError_t st = cudaStreamSynchronize(stream_of(be));
    if (st != cudaSuccess)
        gale_backend_fail(be, "synchronize: a queued kernel or copy failed: %s (%s); run with "
                              "GALE_CUDA_SYNC=1 to name the op", cudaGetErrorString(st), cudaGetErrorName(st));
}

static int cuda_supports_op(const struct gale_backend *be, enum gale_op op, enum gale_dtype dtype)
{
    return op < GALE_OP_COUNT && (dtype == GALE_F32 || dtype == GALE_BF16);
}

static size_t cuda_dtype_bytes(const struct gale_backend *be, enum gale_dtype dtype)
{
    return gale_dtype_size(dtype);
}

static void *cuda_alloc(struct gale_backend *be, size_t bytes)
{
    if (be->failed)
        return NULL;
    void *p = NULL;
    cudaError_t st = cudaMalloc(&p, bytes ? bytes : 1);
    if (st != cudaSuccess) {
        gale_backend_fail(be, "alloc: %zu bytes (%.2f GiB): %s", bytes, bytes / (double)(1u << 30),
                          cudaGetErrorString(st));
        cudaGetLastError();  /* an allocation failure is not sticky in CUDA itself */
        return NULL;
    }
    if (cuda_after(be, cudaMemsetAsync(p, 0, bytes, stream_of(be)), "alloc: zero %zu bytes", bytes)) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cuda_free(struct gale_backend *be, void *p)
{
    cudaStreamSynchronize(stream_of(be));
    cudaFree(p);
}

static void *cuda_host_alloc(struct gale_backend *be, size_t bytes)
{
    if (be->failed)
        return NULL;
    void *p = NULL;
    cudaError_t st = cudaMallocHost(&p, bytes ? bytes : 1);
    if (st != cudaSuccess) {
        gale_backend_fail(be, "host_alloc: %zu pinned bytes: %s", bytes, cudaGetErrorString(st));
        cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cuda_host_free(struct gale_backend *be, void *p)
{
    cudaStreamSynchronize(stream_of(be));
    cudaFreeHost(p);
}

static void cuda_zero(struct gale_backend *be, void *p, size_t bytes)
{
    if (!be->failed && bytes)
        cuda_after(be, cudaMemsetAsync(p, 0, bytes, stream_of(be)), "zero: %zu bytes", bytes);
}

static void cuda_upload(struct gale_backend *be, void *dst, const void *host_src, size_t bytes)
{
    if (!be->failed && bytes)
        cuda_after(be, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_of(be)),
                   "upload: %zu bytes", bytes);
}

static void cuda_download(struct gale_backend *be, void *host_dst, const void *src, size_t bytes)
{
    if (!be->failed && bytes)
        cuda_after(be, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(be)),
                   "download: %zu bytes", bytes);
}

static void cuda_copy(struct gale_backend *be, void *dst, const void *src, size_t bytes)
{
    if (!be->failed && bytes)
        cuda_after(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(be)),
                   "copy: %zu bytes", bytes);
}

__global__ void convert_kernel(bf16 *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

/* Grid-stride kernels take at most this many blocks of 256. */
static unsigned stride_blocks(size_t n)
{
    unsigned b = blocks_for(n, 256);
    return b < 65536 ? b : 65536;
}

static void cuda_convert(struct gale_backend *be, void *dst, enum gale_dtype dtype, const float *src, size_t n)
{
    if (be->failed || !n)
        return;
    if (dtype == GALE_F32) {
        cuda_copy(be, dst, src, n * sizeof(float));
        return;
    }
    if (dtype != GALE_BF16) {
        gale_backend_fail(be, "convert: %zu elements to %s: not supported by the cuda backend", n,
                          gale_dtype_name(dtype));
        return;
    }
    convert_kernel<<<stride_blocks(n), 256, 0, stream_of(be)>>>((bf16 *)dst, src, n);
    cuda_after(be, cudaSuccess, "convert: %zu elements to bf16", n);
}

/* ---- products ---- */

static cudaDataType_t lt_type(enum gale_dtype dt)
{
    return dt == GALE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* The largest power of two up to 16 dividing every address and row stride in bytes. */
static int alignment_of(const void *a, const void *b, const void *c, size_t sa, size_t sb, size_t sc)
{
    uintptr_t bits = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | sa | sb | sc | 16;
    return (int)(bits & (~bits + 1));
}

/* The cached plan of a product's shape, made on first use. cuBLASLt is column-major: a
 * row-major C[m,n] is the column-major C^T[n,m] = op(B)^T op(A)^T, so cuBLAS's "A" is our B and
 * its "B" our A, each keeping its own transposition. */
static struct lt_plan *lt_plan_for(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k, int lda,
                                   int ldb, int ldc, struct gale_gemm_types t, int align)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    for (int i = 0; i < c->n_plans; i++) {
        struct lt_plan *p = &c->plans[i];
        if (p->trans_a == trans_a && p->trans_b == trans_b && p->m == m && p->n == n && p->k == k &&
            p->lda == lda && p->ldb == ldb && p->ldc == ldc && p->ta == (int)t.a && p->tb == (int)t.b &&
            p->tc == (int)t.c && p->align == align)
            return p;
    }
    struct lt_plan p;
    memset(&p, 0, sizeof p);
    p.trans_a = trans_a, p.trans_b = trans_b, p.m = m, p.n = n, p.k = k;
    p.lda = lda, p.ldb = ldb, p.ldc = ldc, p.ta = t.a, p.tb = t.b, p.tc = t.c, p.align = align;
    cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    size_t ws = c->workspace_bytes;
    uint32_t al = (uint32_t)align;
    /* stored shapes, column-major: our B is n x k (no trans) or k x n; our A is k x m or m x k */
    if ((st = cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) ||
        (st = cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof op_b)) ||
        (st = cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof op_a)) ||
        (st = cublasLtMatrixLayoutCreate(&p.la, lt_type(t.b), trans_b ? k : n, trans_b ? n : k, ldb)) ||
        (st = cublasLtMatrixLayoutCreate(&p.lb, lt_type(t.a), trans_a ? m : k, trans_a ? k : m, lda)) ||
        (st = cublasLtMatrixLayoutCreate(&p.lc, lt_type(t.c), n, m, ldc)) ||
        (st = cublasLtMatmulPreferenceCreate(&pref)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al)) ||
        (st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al))) {
        gale_backend_fail(be, "matmul %c%c m=%d n=%d k=%d lda=%d ldb=%d ldc=%d A %s B %s C %s: descriptors: %s",
                          trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, lda, ldb, ldc, gale_dtype_name(t.a),
                          gale_dtype_name(t.b), gale_dtype_name(t.c), cublasLtGetStatusString(st));
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (p.desc) cublasLtMatmulDescDestroy(p.desc);
        if (p.la) cublasLtMatrixLayoutDestroy(p.la);
        if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
        if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
        return NULL;
    }
    /* no algorithm (e.g. rows of an odd number of bf16 elements: 2-byte aligned): cublasGemmEx */
    st = cublasLtMatmulAlgoGetHeuristic(c->lt, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p.use_gemm_ex = st != CUBLAS_STATUS_SUCCESS || found == 0;
    if (!p.use_gemm_ex)
        p.algo = heur.algo;
    if (c->n_plans == c->cap_plans) {
        c->cap_plans = c->cap_plans ? 2 * c->cap_plans : 64;
        c->plans = (struct lt_plan *)gale_xrealloc(c->plans, (size_t)c->cap_plans * sizeof *c->plans);
    }
    c->plans[c->n_plans] = p;
    return &c->plans[c->n_plans++];
}

__global__ void scale_rows_kernel(float *c, int m, int n, int ldc, float beta, int bf)
{
    size_t total = (size_t)m * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t at = (i / n) * (size_t)ldc + i % n;
        if (bf) {
            bf16 *cb = (bf16 *)c;
            cb[at] = __float2bfloat16_rn(beta == 0 ? 0.0f : beta * __bfloat162float(cb[at]));
        } else {
            c[at] = beta == 0 ? 0.0f : beta * c[at];
        }
    }
}

/* The product of the policy's mixed cases (the fp32 logit and router gradients times a bf16
 * operand) goes through tensor cores as bf16 x bf16: the fp32 operand is rounded to bf16 in
 * scratch first (cuBLASLt has no fp32 x bf16 product). */
static void cuda_matmul(struct gale_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc,
                        struct gale_gemm_types types)
{
    if (be->failed || m == 0 || n == 0)
        return;
    if (k == 0) {  /* C = beta C, as BLAS would */
        if (beta != 1)
            scale_rows_kernel<<<stride_blocks((size_t)m * n), 256, 0, stream_of(be)>>>(c, m, n, ldc, beta,
                                                                                      types.c == GALE_BF16);
        cuda_after(be, cudaSuccess, "matmul m=%d n=%d k=0", m, n);
        return;
    }
    const void *pa = a;
    if (types.a != types.b) {
        size_t rows = trans_a ? (size_t)k : (size_t)m, cols = trans_a ? (size_t)m : (size_t)k;
        size_t elems = (rows - 1) * (size_t)lda + cols;
        void *tmp = cuda_scratch(be, elems * sizeof(bf16), "matmul");
        if (!tmp)
            return;
        if (types.a != GALE_F32 || types.b != GALE_BF16) {
            gale_backend_fail(be, "matmul: A %s with B %s is not a product of the precision policy",
                              gale_dtype_name(types.a), gale_dtype_name(types.b));
            return;
        }
        convert_kernel<<<stride_blocks(elems), 256, 0, stream_of(be)>>>((bf16 *)tmp, a, elems);
        pa = tmp;
        types.a = GALE_BF16;
    }
    size_t ea = gale_dtype_size(types.a), eb = gale_dtype_size(types.b), ec = gale_dtype_size(types.c);
    int align = alignment_of(pa, b, c, (size_t)lda * ea, (size_t)ldb * eb, (size_t)ldc * ec);
    struct lt_plan *p = lt_plan_for(be, trans_a, trans_b, m, n, k, lda, ldb, ldc, types, align);
    if (!p)
        return;
    struct cuda_ctx *cx = cuda_ctx_of(be);
    cublasStatus_t st;
    if (p->use_gemm_ex)
        st = cublasGemmEx(cx->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k,
                          &alpha, b, lt_type(types.b), ldb, pa, lt_type(types.a), lda, &beta, c, lt_type(types.c), ldc,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasLtMatmul(cx->lt, p->desc, &alpha, b, p->la, pa, p->lb, &beta, c, p->lc, c, p->lc, &p->algo,
                            cx->workspace, cx->workspace_bytes, cx->stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
        gale_backend_fail(be, "matmul %c%c m=%d n=%d k=%d: %s", trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k,
                          cublasLtGetStatusString(st));
        return;
    }
    cuda_after(be, cudaSuccess, "matmul %c%c m=%d n=%d k=%d", trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k);
}

/* ---- optimizer and reductions (fp32 buffers) ---- */

template <typename T>
__global__ void adamw_kernel(float *p, T *p_compute, const float *g, float *m, float *v, size_t n,
                             const float *grad_scale_at, float beta1, float beta2, float eps, float decay,
                             float step_size, float bc2_sqrt)
{
    float grad_scale = *grad_scale_at;
    if (isnan(grad_scale))
        return; /* a non-finite gradient norm: the step is skipped */
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        /* the clipping factor applied in this pass, as the CPU's fused AdamW does */
        float gi = g[i] * grad_scale, pi = p[i] * decay, mi = m[i], vi = v[i];
        mi += (1.0f - beta1) * (gi - mi);
        vi = beta2 * vi + (1.0f - beta2) * gi * gi;
        pi -= step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (p_compute)
            st(p_compute, i, pi);
    }
}

static void cuda_adamw_step(struct gale_backend *be, float *p, float *p_compute, const float *g, float *m, float *v,
                            size_t n, const float *grad_scale, float lr, float beta1, float beta2, float eps,
                            float weight_decay, int step)
{
    if (be->failed || !n)
        return;
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), decay = 1.0f - lr * weight_decay;
    CUDA_DISPATCH(be, adamw_kernel<T><<<stride_blocks(n), 256, 0, stream_of(be)>>>(
                          p, (T *)p_compute, g, m, v, n, grad_scale, beta1, beta2, eps, decay, step_size,
                          bc2_sqrt));
    cuda_after(be, cudaSuccess, "adamw_step: %zu elements", n);
}

/* Deterministic sums: each of a fixed number of blocks sums a fixed stride of the input in
 * fp64, then one block adds the partials in order. */
#define SUM_BLOCKS 256
#define SUM_THREADS 256

__global__ void sumsq_partial_kernel(double *partial, const float *x, size_t n)
{
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * x[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

__global__ void add_partials_kernel(double *acc, const double *partial, int n)
{
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        *acc += s;
}

/* acc stays on the device: clipping's factor is computed from it there (clip_factor) */
static void cuda_sumsq(struct gale_backend *be, double *acc, const float *x, size_t n)
{
    if (be->failed)
        return;
    double *partial = (double *)cuda_scratch(be, SUM_BLOCKS * sizeof(double), "sumsq");
    if (!partial)
        return;
    cudaStream_t s = stream_of(be);
    sumsq_partial_kernel<<<SUM_BLOCKS, SUM_THREADS, 0, s>>>(partial, x, n);
    add_partials_kernel<<<1, SUM_THREADS, 0, s>>>(acc, partial, SUM_BLOCKS);
    cuda_after(be, cudaSuccess, "sumsq: %zu elements", n);
}

__global__ void clip_factor_kernel(float *factor, const double *sumsq, double max_norm)
{
    *factor = (float)gale_clip_factor(*sumsq, max_norm);
}

static void cuda_clip_factor(struct gale_backend *be, float *factor, const double *sumsq, double max_norm)
{
    if (be->failed)
        return;
    clip_factor_kernel<<<1, 1, 0, stream_of(be)>>>(factor, sumsq, max_norm);
    cuda_after(be, cudaSuccess, "clip_factor");
}

__global__ void axpy_kernel(float *y, const float *x, size_t n, float a)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += a * x[i];
}

static void cuda_axpy(struct gale_backend *be, float *y, const float *x, size_t n, float a)
{
    if (be->failed || !n)
        return;
    axpy_kernel<<<stride_blocks(n), 256, 0, stream_of(be)>>>(y, x, n, a);
    cuda_after(be, cudaSuccess, "axpy: %zu elements", n);
}

/* A few dozen router statistics: one thread, in the CPU's order. */
__global__ void dot_f64_kernel(double *acc, const double *x, const double *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * w[i];
    acc[0] += s;
}

static void cuda_dot_f64(struct gale_backend *be, double *acc, const double *x, const double *w, size_t n)
{
    if (be->failed)
        return;
    dot_f64_kernel<<<1, 1, 0, stream_of(be)>>>(acc, x, w, n);
    cuda_after(be, cudaSuccess, "dot_f64: %zu elements", n);
}

static const struct gale_ops cuda_ops = {
    "cuda",
    cuda_init,
    cuda_destroy,
    cuda_synchronize,
    cuda_supports_op,
    cuda_dtype_bytes,
    cuda_alloc,
    cuda_free,
    cuda_host_alloc,
    cuda_host_free,
    cuda_zero,
    cuda_upload,
    cuda_download,
    cuda_copy,
    cuda_convert,
    cuda_matmul,
    cuda_embedding_fwd,
    cuda_embedding_bwd,
    cuda_rmsnorm_fwd,
    cuda_rmsnorm_bwd,
    cuda_rope_fwd,
    cuda_rope_bwd,
    cuda_attention_fwd,
    cuda_attention_cached_fwd,
    cuda_attention_bwd,
    cuda_swiglu_fwd,
    cuda_swiglu_bwd,
    cuda_router_fwd,
    cuda_router_bwd,
    cuda_moe_plan,
    cuda_router_stats,
    cuda_moe_gather,
    cuda_moe_combine,
    cuda_moe_combine_bwd,
    cuda_moe_scatter_add,
    cuda_cross_entropy,
    cuda_adamw_step,
    cuda_dropout,
    cuda_sumsq,
    cuda_clip_factor,
    cuda_axpy,
    cuda_dot_f64,
};

extern "C" const struct gale_ops *gale_ops_cuda(void)
{
    return &cuda_ops;
}
