// Packs: PACK consecutive elements moved as one access (16 bytes when PACK * sizeof(T) is
// 16). The launch planner picks PACK > 1 only when both buffers and the row stride keep
// every pack aligned; otherwise the same kernels run with PACK = 1.
#pragma once
#include <stdint.h>
#include <string.h>

#include "emulation.cuh"
#include "numeric.cuh"

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

// A fetched pack's raw bits as 32-bit words: a 16-byte pack is one 128-bit load into four
// registers. Kept as words rather than elements until it is decoded, so that nothing
// unpacks a 16-bit pack (and so waits for its load) before every load is issued.
template <typename T, int N>
struct RawPack {
    static constexpr int BYTES = N * int(sizeof(T));
    static constexpr int WORDS = (BYTES + 3) / 4;
    uint32_t w[WORDS];

    __device__ __forceinline__ T get(int k) const {
        T v;
        if constexpr (sizeof(T) == 4) {
            memcpy(static_cast<void*>(&v), &w[k], 4);
        } else {
            const uint16_t bits = uint16_t(w[k / 2] >> (16 * (k % 2)));
            memcpy(static_cast<void*>(&v), &bits, 2);
        }
        return v;
    }
    __device__ __forceinline__ void set(int k, T v) {
        if constexpr (sizeof(T) == 4) {
            memcpy(&w[k], static_cast<const void*>(&v), 4);
        } else {
            uint16_t bits;
            memcpy(&bits, static_cast<const void*>(&v), 2);
            const int shift = 16 * (k % 2);
            w[k / 2] = (w[k / 2] & ~(0xffffu << shift)) | (uint32_t(bits) << shift);
        }
    }
};

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* dst, const float (&src)[N]) {
    CHECK_ALIGNED(dst, sizeof(Pack<T, N>));
    Pack<T, N> pack;
#pragma unroll
    for (int i = 0; i < N; ++i) pack.v[i] = from_f32<T>(src[i]);
    *reinterpret_cast<Pack<T, N>*>(dst) = pack;
}

// Reading a pack takes two phases. fetch_window issues the loads: the raw pack at `col`,
// reading only columns inside [start, end) (the others hold zero bits and are never read).
// Nothing there uses what it loads, so a thread that fetches all its packs before decoding
// any has all their loads in flight at once; fetching and using pack by pack would wait
// out the memory latency once per pack (the branches keep the compiler from reordering).
template <typename T, int N>
__device__ __forceinline__ void fetch_window(const T* row, int64_t col, int64_t start, int64_t end,
                                             RawPack<T, N>& raw) {
    using Raw = RawPack<T, N>;
    if (col >= start && col + N <= end) {
        CHECK_ALIGNED(row + col, Raw::BYTES);
        if constexpr (Raw::BYTES == 16) {
            const uint4 v = *reinterpret_cast<const uint4*>(row + col);
            raw.w[0] = v.x;
            raw.w[1] = v.y;
            raw.w[2] = v.z;
            raw.w[3] = v.w;
        } else if constexpr (Raw::BYTES == 4) {
            raw.w[0] = *reinterpret_cast<const uint32_t*>(row + col);
        } else {
            static_assert(Raw::BYTES == 2, "packs are 16 bytes or one element");
            raw.w[0] = *reinterpret_cast<const uint16_t*>(row + col);
        }
    } else {
#pragma unroll
        for (int i = 0; i < Raw::WORDS; ++i) raw.w[i] = 0;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int64_t c = col + i;
            if (c >= start && c < end) raw.set(i, row[c]);
        }
    }
}

// decode_window turns a fetched pack into f32: valid(v) for columns inside [start, end),
// `fill` for the others.
template <typename T, int N, typename F>
__device__ __forceinline__ void decode_window(const RawPack<T, N>& raw, int64_t col, int64_t start, int64_t end,
                                              float fill, F valid, float (&out)[N]) {
    if (col >= start && col + N <= end) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = valid(to_f32(raw.get(i)));
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const int64_t c = col + i;
            out[i] = (c >= start && c < end) ? valid(to_f32(raw.get(i))) : fill;
        }
    }
}

// The keys of a fetched pack (forward): masked columns get -inf, which weighs 0.
template <typename T, int N>
__device__ __forceinline__ void decode_keys(const RawPack<T, N>& raw, int64_t col, int64_t start, int64_t end,
                                            const ScaleMap& sm, float (&keys)[N]) {
    decode_window<T, N>(raw, col, start, end, -CUDART_INF_F, [&](float v) { return sm.key(v); }, keys);
}

// The values of a fetched pack (backward): masked columns get 0.
template <typename T, int N>
__device__ __forceinline__ void decode_values(const RawPack<T, N>& raw, int64_t col, int64_t start, int64_t end,
                                              float (&values)[N]) {
    decode_window<T, N>(raw, col, start, end, 0.f, [](float v) { return v; }, values);
}

// A pack of y and the pack of dy at the same columns (the backward's unit of work).
template <typename T, int N>
struct PackPair {
    RawPack<T, N> y;
    RawPack<T, N> dy;
};

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
