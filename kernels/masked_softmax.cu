// Length-masked softmax forward: the mask is built from the lengths inside the kernel,
// masked positions are never read, and every output element is written.
//
// masked_softmax_fwd_warp_<dtype>: one warp per row, grid-stride over rows. Pass 1 reads
// the row's valid scores once and keeps a running (max, sum) per lane, merged with warp
// shuffles; pass 2 reads them again and writes exp(s - max) / sum, zeros elsewhere. Works
// for every k_len; x may alias y (each element is read and then written by one lane).
#include "emulation.cuh"
#include "mask.cuh"
#include "numeric.cuh"

constexpr int WARP = 32;

template <typename T>
__device__ __forceinline__ void warp_row_forward(const T* x, T* y, const MaskParams& p, int64_t row,
                                                 int lane) {
    const RowWindow w = row_window(p, row);
    const T* x_row = x + row * p.row_stride;
    T* y_row = y + row * p.row_stride;

    SoftmaxStats st = stats_empty();
    for (int64_t j = w.start + lane; j < w.end; j += WARP) stats_add(st, to_f32(x_row[j]) * p.scale);
    st = warp_merge(st);

    // sum == 0: no valid key, or all -inf: the row is all zeros.
    const bool zero_row = st.sum == 0.f;
    for (int64_t j = lane; j < p.k_len; j += WARP) {
        float v = 0.f;
        if (!zero_row && j >= w.start && j < w.end) v = expf(to_f32(x_row[j]) * p.scale - st.max) / st.sum;
        y_row[j] = from_f32<T>(v);
    }
}

template <typename T>
__device__ __forceinline__ void warp_forward(const T* x, T* y, const MaskParams& p) {
    const int lane = threadIdx.x % WARP;
    const int64_t warps_per_block = blockDim.x / WARP;
    const int64_t first_row = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / WARP;
    const int64_t row_step = int64_t(gridDim.x) * warps_per_block;
    for (int64_t row = first_row; row < p.rows; row += row_step) warp_row_forward(x, y, p, row, lane);
}

#define DEFINE_FORWARD(SUFFIX, T)                                                                  \
    extern "C" __global__ void masked_softmax_fwd_warp_##SUFFIX(const T* x, T* y, MaskParams p) { \
        warp_forward<T>(x, y, p);                                                                  \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_fwd_warp_##SUFFIX)

DEFINE_FORWARD(f32, float)
DEFINE_FORWARD(f16, __half)
DEFINE_FORWARD(bf16, __nv_bfloat16)
