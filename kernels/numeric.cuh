// Loads and stores in the storage type, arithmetic in f32, and the running (max, sum)
// pair of a softmax with the contract's special values: no valid score or all -inf gives
// sum 0 (a zero row); NaN and +inf in a valid position poison the sum, as IEEE says.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Softmax statistics of a set of scaled scores: m = their max (NaN ignored), d = the sum
// of exp(s - m). d == 0 exactly when the set is empty or all -inf; a NaN score, or two
// +inf, make d NaN, which then reaches every output of the row.
struct SoftmaxStats {
    float max;
    float sum;
};

__device__ __forceinline__ SoftmaxStats stats_empty() { return SoftmaxStats{-CUDART_INF_F, 0.f}; }

__device__ __forceinline__ void stats_add(SoftmaxStats& st, float s) {
    if (s > st.max) {
        st.sum = st.sum * expf(st.max - s) + 1.f;
        st.max = s;
    } else if (s != -CUDART_INF_F) {
        st.sum += expf(s - st.max);  // NaN s (or +inf twice) makes the sum NaN
    }
}

// A part whose max is -inf contributes its sum unchanged: 0, or NaN if it saw a NaN.
__device__ __forceinline__ float stats_rescaled_sum(SoftmaxStats st, float max) {
    return st.max == -CUDART_INF_F ? st.sum : st.sum * expf(st.max - max);
}

__device__ __forceinline__ SoftmaxStats stats_merge(SoftmaxStats a, SoftmaxStats b) {
    const float max = fmaxf(a.max, b.max);
    return SoftmaxStats{max, stats_rescaled_sum(a, max) + stats_rescaled_sum(b, max)};
}

// Merge across the 32 lanes of a warp; every lane gets the row's stats.
__device__ __forceinline__ SoftmaxStats warp_merge(SoftmaxStats st) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        SoftmaxStats other;
        other.max = __shfl_xor_sync(0xffffffffu, st.max, offset);
        other.sum = __shfl_xor_sync(0xffffffffu, st.sum, offset);
        st = stats_merge(st, other);
    }
    return st;
}
