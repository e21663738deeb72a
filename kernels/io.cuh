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

// Reads the pack at `col` of `row` into `out` as f32: `valid(v)` for columns inside
// [start, end), `fill` for the others, which are never read. A pack wholly inside the
// window is one access.
template <typename T, int N, typename F>
__device__ __forceinline__ void load_window(const T* row, int64_t col, int64_t start, int64_t end, float fill,
                                            F valid, float (&out)[N]) {
    if (col >= start && col + N <= end) {
        load_pack<T, N>(row + col, out);
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = valid(out[i]);
    } else if (col >= end || col + N <= start) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = fill;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int64_t c = col + i;
            out[i] = (c >= start && c < end) ? valid(to_f32(row[c])) : fill;
        }
    }
}

// The keys of a pack (forward): masked columns get -inf, which weighs 0.
template <typename T, int N>
__device__ __forceinline__ void load_keys(const T* row, int64_t col, int64_t start, int64_t end,
                                          const ScaleMap& sm, float (&keys)[N]) {
    load_window<T, N>(row, col, start, end, -CUDART_INF_F, [&](float v) { return sm.key(v); }, keys);
}

// The values of a pack (backward): masked columns get 0.
template <typename T, int N>
__device__ __forceinline__ void load_values(const T* row, int64_t col, int64_t start, int64_t end,
                                            float (&values)[N]) {
    load_window<T, N>(row, col, start, end, 0.f, [](float v) { return v; }, values);
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

// Writes the pack at `col` of a row: value(j) for its columns inside [start, end), +0.0 for
// the others (value is not called for them); nothing past k_len. Whole packs inside or
// outside the window skip the per-column test.
template <typename T, int N, typename F>
__device__ __forceinline__ void store_window(T* row, int64_t col, int64_t k_len, int64_t start, int64_t end,
                                             F value) {
    float out[N];
    if (col >= start && col + N <= end) {
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = value(j);
    } else if (col >= end || col + N <= start) {
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = 0.f;
    } else {
#pragma unroll
        for (int j = 0; j < N; ++j) {
            const int64_t c = col + j;
            out[j] = (c >= start && c < end) ? value(j) : 0.f;
        }
    }
    store_values<T, N>(row, col, k_len, out);
}
