// Packs: PACK consecutive elements moved as one access (16 bytes when PACK * sizeof(T) is
// 16). The launch planner picks PACK > 1 only when both buffers and the row stride keep
// every pack aligned; otherwise the same kernels run with PACK = 1.
#pragma once
#include "emulation.cuh"
#include "numeric.cuh"

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* src, float (&dst)[N]) {
    CHECK_ALIGNED(src, sizeof(Pack<T, N>));
    const Pack<T, N> pack = *reinterpret_cast<const Pack<T, N>*>(src);
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i] = to_f32(pack.v[i]);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* dst, const float (&src)[N]) {
    CHECK_ALIGNED(dst, sizeof(Pack<T, N>));
    Pack<T, N> pack;
#pragma unroll
    for (int i = 0; i < N; ++i) pack.v[i] = from_f32<T>(src[i]);
    *reinterpret_cast<Pack<T, N>*>(dst) = pack;
}

// Reads the keys of the pack at `col` into `keys`: -inf for columns outside [start, end),
// which are never read. A pack wholly inside the window is one access.
template <typename T, int N>
__device__ __forceinline__ void load_keys(const T* row, int64_t col, int64_t start, int64_t end,
                                          const ScaleMap& sm, float (&keys)[N]) {
    if (col >= start && col + N <= end) {
        load_pack<T, N>(row + col, keys);
#pragma unroll
        for (int i = 0; i < N; ++i) keys[i] = sm.key(keys[i]);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int64_t c = col + i;
            keys[i] = (c >= start && c < end) ? sm.key(to_f32(row[c])) : -CUDART_INF_F;
        }
    }
}

// Writes the pack at `col`: whole if it lies within [0, k_len), else element by element.
template <typename T, int N>
__device__ __forceinline__ void store_values(T* row, int64_t col, int64_t k_len, const float (&values)[N]) {
    if (col + N <= k_len) {
        store_pack<T, N>(row + col, values);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i)
            if (col + i < k_len) row[col + i] = from_f32<T>(values[i]);
    }
}
