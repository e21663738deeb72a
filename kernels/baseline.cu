// The unfused path the benchmark compares against: the blog post's recipe as the simple
// kernels a cudarc user would write without this crate. Right padding and key lengths
// only, rows contiguous (row_stride = k_len), rows = batch * rows_per_batch.
//
//   baseline_build_mask        mask[r, j] = j < kv_len[r / rows_per_batch]   (u8)
//   baseline_masked_fill_<T>   t[r, j] = mask[r, j] ? x[r, j] : -inf
//   baseline_softmax_<T>       y = softmax(scale * t) per row, one block per row, three
//                              passes over global memory (max, sum, write)
#include "emulation.cuh"
#include "numeric.cuh"
#include "reduce.cuh"

extern "C" __global__ void baseline_build_mask(const int32_t* kv_lens, uint8_t* mask, int64_t rows,
                                               int64_t k_len, int64_t rows_per_batch) {
    const int64_t n = rows * k_len;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t row = i / k_len, j = i % k_len;
        mask[i] = j < kv_lens[row / rows_per_batch] ? 1 : 0;
    }
}
REGISTER_KERNEL(baseline_build_mask)

template <typename T>
__device__ __forceinline__ void masked_fill(const T* x, const uint8_t* mask, T* out, int64_t n) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        out[i] = mask[i] ? x[i] : from_f32<T>(-CUDART_INF_F);
}

template <typename T>
__device__ __forceinline__ void plain_softmax(const T* x, T* y, int64_t rows, int64_t k_len, float scale) {
    __shared__ float scratch[WARP];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * k_len;
        T* yr = y + row * k_len;
        float max = -CUDART_INF_F;
        for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x) max = fmaxf(max, scale * to_f32(xr[j]));
        max = block_max(max, scratch);
        float sum = 0.f;
        for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x) sum += expf(scale * to_f32(xr[j]) - max);
        sum = block_sum(sum, scratch);
        for (int64_t j = threadIdx.x; j < k_len; j += blockDim.x)
            yr[j] = from_f32<T>(expf(scale * to_f32(xr[j]) - max) / sum);
    }
}

#define BASELINE_KERNELS(SUFFIX, T)                                                                      \
    extern "C" __global__ void baseline_masked_fill_##SUFFIX(const T* x, const uint8_t* mask, T* out,    \
                                                             int64_t n) {                               \
        masked_fill<T>(x, mask, out, n);                                                                \
    }                                                                                                   \
    REGISTER_KERNEL(baseline_masked_fill_##SUFFIX)                                                      \
    extern "C" __global__ void baseline_softmax_##SUFFIX(const T* x, T* y, int64_t rows, int64_t k_len,  \
                                                         float scale) {                                 \
        plain_softmax<T>(x, y, rows, k_len, scale);                                                     \
    }                                                                                                   \
    REGISTER_KERNEL(baseline_softmax_##SUFFIX)

BASELINE_KERNELS(f32, float)
BASELINE_KERNELS(f16, __half)
BASELINE_KERNELS(bf16, __nv_bfloat16)

// Nothing at all: the benchmark times its launch as the latency floor of decode cases.
extern "C" __global__ void baseline_empty() {}
REGISTER_KERNEL(baseline_empty)
