/* sort_cuda: a stable sort of int32 keys (CUB's radix sort) and the scatter-add built on it.
 * Scatter-adds (embedding_bwd, moe_scatter_add) hit a destination row once per occurrence of
 * its key; sorting the keys first lets one thread per destination element add its sources in
 * index order in fp32 and round once, as the CPU does, with no atomics: the result repeats to
 * the bit and matches the CPU's order of additions. Kept in its own file: CUB's templates are
 * most of the backend's compile time. */
#include "model/cuda/cuda_backend.h"

#include <cub/device/device_radix_sort.cuh>

__global__ void iota_kernel(int32_t *x, int n)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        x[i] = i;
}

static size_t round_up(size_t n)
{
    return (n + 255) / 256 * 256;
}

int cuda_stable_order(struct gale_backend *be, const int32_t *keys, int n, int32_t **sorted_keys, int32_t **order,
                      const char *op)
{
    size_t temp_bytes = 0;
    cudaError_t st = cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const uint32_t *)keys, (uint32_t *)NULL,
                                                     (const int32_t *)NULL, (int32_t *)NULL, n, 0, 31, stream_of(be));
    if (cuda_after(be, st, "%s: sort of %d keys (sizing)", op, n))
        return -1;
    size_t arr = round_up((size_t)n * sizeof(int32_t));
    char *scratch = (char *)cuda_scratch(be, 3 * arr + temp_bytes, op);
    if (!scratch)
        return -1;
    int32_t *iota = (int32_t *)scratch;
    *sorted_keys = (int32_t *)(scratch + arr);
    *order = (int32_t *)(scratch + 2 * arr);
    unsigned blocks = blocks_for((size_t)n, 256);
    iota_kernel<<<blocks < 4096 ? blocks : 4096, 256, 0, stream_of(be)>>>(iota, n);
    st = cub::DeviceRadixSort::SortPairs(scratch + 3 * arr, temp_bytes, (const uint32_t *)keys,
                                         (uint32_t *)*sorted_keys, iota, *order, n, 0, 31, stream_of(be));
    return cuda_after(be, st, "%s: sort of %d keys", op, n);
}

/* Thread (position p, column c): when p starts a run of equal keys, the run's sources in
 * order into the destination element. */
template <typename D, typename S>
__global__ void scatter_add_sorted_kernel(D *dst, const S *src, const int32_t *sorted, const int32_t *order, int n,
                                          int dim)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim)
        return;
    for (int p = blockIdx.y; p < n; p += gridDim.y) {
        int key = sorted[p];
        if (p > 0 && sorted[p - 1] == key)
            continue;
        size_t at = (size_t)key * dim + c;
        float acc = ld(dst, at);
        for (int q = p; q < n && sorted[q] == key; q++)
            acc += ld(src, (size_t)order[q] * dim + c);
        st(dst, at, acc);
    }
}

void cuda_scatter_add_rows(struct gale_backend *be, float *dst, int dst_bf16, const float *src, const int32_t *keys,
                           int n, int dim, const char *op)
{
    if (be->failed || n <= 0)
        return;
    int32_t *sorted = NULL, *order = NULL;
    if (cuda_stable_order(be, keys, n, &sorted, &order, op))
        return;
    dim3 grid(blocks_for((size_t)dim, 128), n < 65535 ? n : 65535);
    cudaStream_t s = stream_of(be);
    CUDA_DISPATCH(be, {
        if (dst_bf16)
            scatter_add_sorted_kernel<bf16, T><<<grid, 128, 0, s>>>((bf16 *)dst, (const T *)src, sorted, order, n, dim);
        else
            scatter_add_sorted_kernel<float, T><<<grid, 128, 0, s>>>(dst, (const T *)src, sorted, order, n, dim);
    });
    cuda_after(be, cudaSuccess, "%s: %d rows x %d", op, n, dim);
}
