// Length-masked softmax backward: dx = scale * y * (dy - sum_valid(y * dy)) on the valid
// positions of each row, +0.0 on masked positions and on rows with no valid position. The
// same ladder as the forward (src/plan.rs), sharing its mask, loads, stores and reductions:
//
//   masked_softmax_bwd_rows_g<G>_p<P>x<N>_<dtype>   G lanes per row, N packs of P elements
//       of y and dy per lane in registers: one read of each, one write of dx.
//   masked_softmax_bwd_block_cached_p<P>_<dtype>    one block per row, y and dy cached in
//       dynamic shared memory (8 bytes per column).
//   masked_softmax_bwd_block_stream_p<P>_<dtype>    one block per row, any length: a pass
//       for the dot product, then a second read of y and dy to write.
//
// Only valid positions of y and dy are read; dx may alias dy (each element is read, then
// written, by the same thread). Arguments: (const T* y, const T* dy, T* dx, MaskParams).
#include "emulation.cuh"
#include "io.cuh"
#include "ladder.cuh"
#include "mask.cuh"
#include "numeric.cuh"
#include "reduce.cuh"
#include "work.cuh"

// The gradient of one valid position.
__device__ __forceinline__ float softmax_grad(float y, float dy, float dot, float scale) {
    return scale * y * (dy - dot);
}

template <typename T, int PACK, int PACKS, int GROUP>
__device__ __forceinline__ void rows_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    for_each_group_row<GROUP>(p, [&](const GroupRow& r) {
        float ys[PACKS][PACK], dys[PACKS][PACK];
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            const int64_t col = lane_pack_column<GROUP, PACK>(i, r.member);
            load_values<T, PACK>(y + r.offset, col, r.window.start, r.window.end, ys[i]);
            load_values<T, PACK>(dy + r.offset, col, r.window.start, r.window.end, dys[i]);
#pragma unroll
            for (int j = 0; j < PACK; ++j) dot += ys[i][j] * dys[i][j];
        }
        dot = group_sum<GROUP>(dot);

        store_group_row<T, PACK, PACKS, GROUP>(dx, r, p.k_len, [&](int i, int j) {
            return softmax_grad(ys[i][j], dys[i][j], dot, p.scale);
        });
    });
}

// y and dy of the valid packs cached in shared memory ([y..][dy..] per pack slot); thread t
// owns packs t, t + blockDim, ... in both passes. Dynamic shared memory:
// [2 * packs * PACK floats][32 floats of scratch].
template <typename T, int PACK>
__device__ __forceinline__ void block_cached_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    const int64_t row_packs = packs_in<PACK>(p.k_len);
    float* cache_y = dynamic_shared<float>();
    float* cache_dy = cache_y + row_packs * PACK;
    float* scratch = cache_dy + row_packs * PACK;
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowWindow w = row_window(p, row);
        const int64_t offset = row * p.row_stride;
        const int64_t first_pack = w.start / PACK, end_pack = (w.end + PACK - 1) / PACK;

        float dot = 0.f;
        for (int64_t i = first_owned(first_pack, threadIdx.x, blockDim.x); i < end_pack; i += blockDim.x) {
            float ys[PACK], dys[PACK];
            load_values<T, PACK>(y + offset, i * PACK, w.start, w.end, ys);
            load_values<T, PACK>(dy + offset, i * PACK, w.start, w.end, dys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                dot += ys[j] * dys[j];
                cache_y[i * PACK + j] = ys[j];
                cache_dy[i * PACK + j] = dys[j];
            }
        }
        dot = block_sum(dot, scratch);

        for (int64_t i = threadIdx.x; i < row_packs; i += blockDim.x) {
            float out[PACK];
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const int64_t c = i * PACK + j;
                out[j] = (c >= w.start && c < w.end) ? softmax_grad(cache_y[c], cache_dy[c], dot, p.scale) : 0.f;
            }
            store_values<T, PACK>(dx + offset, i * PACK, p.k_len, out);
        }
    }
}

// Any row length: the dot product, then a second read of y and dy to write dx. Dynamic
// shared memory: 32 floats of scratch.
template <typename T, int PACK>
__device__ __forceinline__ void block_stream_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    float* scratch = dynamic_shared<float>();
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowWindow w = row_window(p, row);
        const int64_t offset = row * p.row_stride;
        const int64_t first_pack = w.start / PACK, end_pack = (w.end + PACK - 1) / PACK;

        float dot = 0.f;
        for (int64_t i = first_pack + threadIdx.x; i < end_pack; i += blockDim.x) {
            float ys[PACK], dys[PACK];
            load_values<T, PACK>(y + offset, i * PACK, w.start, w.end, ys);
            load_values<T, PACK>(dy + offset, i * PACK, w.start, w.end, dys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) dot += ys[j] * dys[j];
        }
        dot = block_sum(dot, scratch);

        for (int64_t i = threadIdx.x; i < packs_in<PACK>(p.k_len); i += blockDim.x) {
            float ys[PACK], dys[PACK], out[PACK];
            load_values<T, PACK>(y + offset, i * PACK, w.start, w.end, ys);
            load_values<T, PACK>(dy + offset, i * PACK, w.start, w.end, dys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const int64_t c = i * PACK + j;
                out[j] = (c >= w.start && c < w.end) ? softmax_grad(ys[j], dys[j], dot, p.scale) : 0.f;
            }
            store_values<T, PACK>(dx + offset, i * PACK, p.k_len, out);
        }
    }
}

// ---------------------------------------------------------------- instantiations
// The Rust planner (src/plan.rs, KernelKind::all with Direction::Backward) lists exactly these.

#define BWD_SIGNATURE(T) (const T* y, const T* dy, T* dx, MaskParams p)

#define BWD_ROWS_KERNEL(SUFFIX, T, G, P, N)                                                         \
    extern "C" __global__ void masked_softmax_bwd_rows_g##G##_p##P##x##N##_##SUFFIX BWD_SIGNATURE(T) { \
        rows_backward<T, P, N, G>(y, dy, dx, p);                                                   \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_rows_g##G##_p##P##x##N##_##SUFFIX)

#define BWD_BLOCK_KERNELS(SUFFIX, T, P)                                                             \
    extern "C" __global__ void masked_softmax_bwd_block_cached_p##P##_##SUFFIX BWD_SIGNATURE(T) {   \
        block_cached_backward<T, P>(y, dy, dx, p);                                                 \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_block_cached_p##P##_##SUFFIX)                               \
    extern "C" __global__ void masked_softmax_bwd_block_stream_p##P##_##SUFFIX BWD_SIGNATURE(T) {   \
        block_stream_backward<T, P>(y, dy, dx, p);                                                 \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_block_stream_p##P##_##SUFFIX)

// Two values per element in registers: half the forward's packs per lane.
#define BWD_TYPE_KERNELS(SUFFIX, T, VP)                  \
    ROWS_GROUP_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, VP)    \
    ROWS_WARP_LADDER_4(BWD_ROWS_KERNEL, SUFFIX, T, VP)   \
    BWD_BLOCK_KERNELS(SUFFIX, T, VP)                     \
    ROWS_GROUP_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, 1)     \
    ROWS_WARP_LADDER_16(BWD_ROWS_KERNEL, SUFFIX, T, 1)   \
    BWD_BLOCK_KERNELS(SUFFIX, T, 1)

BWD_TYPE_KERNELS(f32, float, 4)
BWD_TYPE_KERNELS(f16, __half, 8)
BWD_TYPE_KERNELS(bf16, __nv_bfloat16, 8)
