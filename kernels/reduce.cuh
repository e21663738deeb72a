// Reductions across the lanes of a group (GROUP consecutive lanes of a warp, a power of two
// up to 32) and across a block. Every lane of the warp must take part in a group
// reduction (the shuffles use the full mask), so callers keep their loops warp-uniform.
#pragma once
#include "numeric.cuh"

constexpr int WARP = 32;
constexpr unsigned FULL_MASK = 0xffffffffu;

template <int GROUP>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
    for (int offset = GROUP / 2; offset > 0; offset /= 2) v = max_nan(v, __shfl_xor_sync(FULL_MASK, v, offset, GROUP));
    return v;
}

template <int GROUP>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int offset = GROUP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(FULL_MASK, v, offset, GROUP);
    return v;
}

__device__ __forceinline__ SoftmaxStats warp_stats_merge(SoftmaxStats st, const ScaleMap& sm) {
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        SoftmaxStats other;
        other.max_key = __shfl_xor_sync(FULL_MASK, st.max_key, offset);
        other.sum = __shfl_xor_sync(FULL_MASK, st.sum, offset);
        st = stats_merge(st, other, sm);
    }
    return st;
}

// Block-wide reductions through `scratch` (one slot per warp, at least 32). Every thread of
// the block must call them; all get the result. They end with a barrier, so `scratch` can
// be reused right away.
template <float (*WARP_REDUCE)(float)>
__device__ __forceinline__ float block_reduce(float v, float identity, float* scratch) {
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, warps = blockDim.x / WARP;
    v = WARP_REDUCE(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
    v = WARP_REDUCE(v);
    __syncthreads();
    return v;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    return block_reduce<group_max<WARP>>(v, -CUDART_INF_F, scratch);
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    return block_reduce<group_sum<WARP>>(v, 0.f, scratch);
}

__device__ __forceinline__ SoftmaxStats block_stats_merge(SoftmaxStats st, float2* scratch, const ScaleMap& sm) {
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, warps = blockDim.x / WARP;
    st = warp_stats_merge(st, sm);
    if (lane == 0) scratch[warp] = make_float2(st.max_key, st.sum);
    __syncthreads();
    st = stats_empty();
    if (lane < warps) st = SoftmaxStats{scratch[lane].x, scratch[lane].y};
    st = warp_stats_merge(st, sm);
    __syncthreads();
    return st;
}
