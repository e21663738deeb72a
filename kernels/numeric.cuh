// Loads and stores in the storage type with arithmetic in f32, and the softmax numerics
// every kernel shares.
//
// The scaled score is s = scale * x, but kernels never form it: they compare "keys"
// k = x * sign(scale) (exact; 0 * x for scale 0) and compute exp(s - s_max) as
// exp((k - k_max) * |scale|), whose argument is <= 0. So no finite score can overflow, at
// any scale (ScaleMap::weight says how k - k_max stays finite at tiny and huge scales),
// and the result is the f64 reference's up to f32 rounding. The contract's special values
// fall out of three rules: the max is NaN-propagating (a NaN score makes the row NaN), a
// key of -inf weighs exactly 0, and a row whose max key is -inf (no valid key, or only
// -inf) is all zeros.
#pragma once
#include <stdint.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <type_traits>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Pairs of 16-bit values (__half2, __nv_bfloat162), for arithmetic on two at once. The
// CUDA intrinsics are overloaded for both pair types; only the type and the splat differ.
template <typename T> struct Pair16Of;
template <> struct Pair16Of<__half> {
    using type = __half2;
    __device__ __forceinline__ static type splat(float v) { return __float2half2_rn(v); }
};
template <> struct Pair16Of<__nv_bfloat16> {
    using type = __nv_bfloat162;
    __device__ __forceinline__ static type splat(float v) { return __float2bfloat162_rn(v); }
};
template <typename T>
struct Pair16 : Pair16Of<T> {
    using type = typename Pair16Of<T>::type;
    __device__ __forceinline__ static type mul(type a, type b) { return __hmul2(a, b); }
    __device__ __forceinline__ static type max_nan(type a, type b) { return __hmax2_nan(a, b); }
    __device__ __forceinline__ static float low(type v) { return __low2float(v); }
    __device__ __forceinline__ static float high(type v) { return __high2float(v); }
};

// max(a, b), NaN if either is NaN (fmaxf would drop the NaN).
__device__ __forceinline__ float max_nan(float a, float b) {
#ifdef MASKED_SOFTMAX_EMULATION
    return (a != a || b != b) ? a + b : fmaxf(a, b);
#else
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#endif
}

// 2^x. On the GPU one MUFU instruction (ex2.approx.ftz: relative error about 2^-22, a
// result below 2^-126 flushed to 0, i.e. a probability below 1e-38 written as 0); expf
// costs several instructions more per element, which 16-bit rows at full bandwidth cannot
// afford.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef MASKED_SOFTMAX_EMULATION
    return exp2f(x);
#else
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}

// 1 / s for a row's sum of weights, correctly rounded: the sum is NaN or in [1, keys] (the
// max key weighs ex2(0) = 1, every other key at most 1; rows_forward takes it for a lane's
// row of at most 8 keys), where 1.f / s's fast path
// (an approximate reciprocal and one Newton step, the sm_80/sm_90 SASS of rcp.rn) is its
// whole answer; 1.f / s would add a range test and a branch to a called slow path for
// subnormal and huge divisors, about 6 instructions a row of a rows kernel. A NaN sum
// gives NaN.
__device__ __forceinline__ float reciprocal_of_sum(float s) {
#ifdef MASKED_SOFTMAX_EMULATION
    return 1.f / s;
#else
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
    return fmaf(r, fmaf(-s, r, 1.f), r);
#endif
}

// The scale, split into the sign that orders keys and the magnitude that weighs them.
struct ScaleMap {
    static constexpr float LOG2E = 1.4426950408889634f;
    float key_sign;    // +1, -1, or 0 for scale 0 (then keys are 0, or NaN for +-inf and NaN)
    float log2_scale;  // |scale| * log2(e): exp(d * |scale|) = 2^(d * log2_scale)
    float abs_scale;   // |scale|

    __device__ __forceinline__ static ScaleMap of(float scale) {
        return ScaleMap{scale > 0.f ? 1.f : (scale < 0.f ? -1.f : 0.f), fabsf(scale) * LOG2E, fabsf(scale)};
    }
    __device__ __forceinline__ float key(float x) const { return x * key_sign; }
    // Below this |scale|, k - max_key can overflow f32 (two finite keys more than FLT_MAX
    // apart) where the weight, exp((k - max_key) * |scale|), is not 0. From it on, such a
    // gap times |scale| is past 2^64, and ex2(-inf) = 0 is the weight.
    static constexpr float PLAIN_MIN_SCALE = 0x1p-64f;
    // PLAIN_MIN_SCALE <= |scale| and |scale| * log2(e) < inf: then a -inf key weighs 0
    // without a test, as ex2((-inf - max_key) * log2_scale) = ex2(-inf) = +0 (for a finite
    // or +inf max key). Other scales take weight().
    __device__ __forceinline__ bool plain() const {
        return abs_scale >= PLAIN_MIN_SCALE && log2_scale < CUDART_INF_F;
    }
    // exp(s - s_max) for a key `k` and the row's max key `max_key`, for any finite scale. A
    // -inf key (a masked slot, or a -inf score) weighs exactly 0, at scale 0 too, where
    // -inf * 0 would be NaN. Nothing overflows where the weight is not 0:
    // - the difference is halved, (k - max_key) / 2 in one FMA (exact but for subnormal
    //   keys, which weigh 1 at the scales where this matters), so two finite keys more than
    //   FLT_MAX apart still give a finite gap (tiny scales);
    // - |scale| and 2 log2(e) multiply one after the other, so that a scale whose
    //   log2_scale overflows still gives the max key weight 1 (not 0 * inf = NaN) and the
    //   others theirs (the first product overflows only where the weight is 0).
    __device__ __forceinline__ float weight(float k, float max_key) const {
        return k == -CUDART_INF_F ? 0.f : fast_exp2(fmaf(k, 0.5f, -0.5f * max_key) * abs_scale * (2.f * LOG2E));
    }
    // weight(), or for the usual scale (PLAIN: plain() holds) one subtract, one multiply
    // and one ex2, with no test: a -inf key weighs ex2(-inf) = 0 against a max key that is
    // not -inf.
    template <bool PLAIN>
    __device__ __forceinline__ float weigh(float k, float max_key) const {
        if constexpr (PLAIN)
            return fast_exp2((k - max_key) * log2_scale);
        else
            return weight(k, max_key);
    }
};

// Runs body(std::true_type) where the scale is the usual one (ScaleMap::plain()), else
// body(std::false_type): kernels branch once per row and then take the per-column code
// without the tests the unusual scales need.
template <typename Body>
__device__ __forceinline__ void with_plain_scale(const ScaleMap& sm, Body body) {
    if (sm.plain())
        body(std::true_type{});
    else
        body(std::false_type{});
}

// Turns a thread's keys into weights against the row's max key (all 0 in a zero row, whose
// max is -inf) and returns their sum: the middle of every register-resident kernel. Packs
// for which live(i) is false (wholly outside the row's window, whose outputs are zeros
// whatever their keys: see store_window) are skipped: their weights would all be 0.
template <int PACKS, int PACK, typename Live>
__device__ __forceinline__ float weigh_keys(float (&keys)[PACKS][PACK], float max_key, const ScaleMap& sm,
                                            Live live) {
    float sum = 0.f;
    if (max_key == -CUDART_INF_F) {
#pragma unroll
        for (int i = 0; i < PACKS; ++i)
#pragma unroll
            for (int j = 0; j < PACK; ++j) keys[i][j] = 0.f;
        return sum;
    }
    // The usual scale: one subtract, one multiply and one ex2 per key (ScaleMap::weigh).
    with_plain_scale(sm, [&](auto plain) {
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (!live(i)) continue;
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                keys[i][j] = sm.weigh<decltype(plain)::value>(keys[i][j], max_key);
                sum += keys[i][j];
            }
        }
    });
    return sum;
}

// Softmax statistics of a set of keys: their max (NaN-propagating) and the sum of their
// weights. An empty set, or one of only -inf keys, has max -inf and sum 0.
struct SoftmaxStats {
    float max_key;
    float sum;
};

__device__ __forceinline__ SoftmaxStats stats_empty() { return SoftmaxStats{-CUDART_INF_F, 0.f}; }

// Adds N keys (online softmax): one rescale of the running sum per N keys, not per key.
// PLAIN: see ScaleMap::weigh (here max_key is never -inf).
template <bool PLAIN, int N>
__device__ __forceinline__ void stats_add(SoftmaxStats& st, const float (&keys)[N], const ScaleMap& sm) {
    float max_key = st.max_key;
#pragma unroll
    for (int j = 0; j < N; ++j) max_key = max_nan(max_key, keys[j]);
    if (max_key == -CUDART_INF_F) return;  // nothing but -inf so far: everything weighs 0
    float sum = st.sum * sm.weigh<PLAIN>(st.max_key, max_key);  // an empty st weighs 0 * 0
#pragma unroll
    for (int j = 0; j < N; ++j) sum += sm.weigh<PLAIN>(keys[j], max_key);
    st = SoftmaxStats{max_key, sum};
}

// The sum of a part, rescaled to a larger max.
__device__ __forceinline__ float stats_rescaled(SoftmaxStats st, float max_key, const ScaleMap& sm) {
    return st.max_key == -CUDART_INF_F ? 0.f : st.sum * sm.weight(st.max_key, max_key);
}

__device__ __forceinline__ SoftmaxStats stats_merge(SoftmaxStats a, SoftmaxStats b, const ScaleMap& sm) {
    const float max_key = max_nan(a.max_key, b.max_key);
    return SoftmaxStats{max_key, stats_rescaled(a, max_key, sm) + stats_rescaled(b, max_key, sm)};
}

// A row's final statistics, ready to write: the max key and the reciprocal of the sum (one
// division per row; each element is then a multiply), or `zero` for a row with no weight.
// A zero row's keys are all -inf, and its max key is taken as 0: then every key weighs
// ex2(-inf) = 0 and the plain path needs no test per column (-inf - -inf would be NaN).
struct RowSoftmax {
    float max_key;
    float inv_sum;
    bool zero;
};

// The max key to weigh a row's keys against: a zero row's (-inf: no valid key, or only -inf
// ones) is taken as 0, so that its -inf keys weigh 0 (not NaN) with no test per key.
__device__ __forceinline__ float max_to_weigh_against(float max_key) {
    return max_key == -CUDART_INF_F ? 0.f : max_key;
}

__device__ __forceinline__ RowSoftmax row_softmax(SoftmaxStats st) {
    const bool zero = st.max_key == -CUDART_INF_F;
    return RowSoftmax{max_to_weigh_against(st.max_key), zero ? 0.f : 1.f / st.sum, zero};
}

// The probability of key `k` (0 in a zero row). PLAIN: see ScaleMap::weigh.
template <bool PLAIN>
__device__ __forceinline__ float probability(const RowSoftmax& r, float k, const ScaleMap& sm) {
    if constexpr (PLAIN)
        return sm.weigh<true>(k, r.max_key) * r.inv_sum;
    else
        return r.zero ? 0.f : sm.weight(k, r.max_key) * r.inv_sum;
}
