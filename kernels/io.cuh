// Packs: PACK consecutive elements moved as one access (16 bytes when PACK * sizeof(T) is
// 16). The launch planner picks PACK > 1 when every buffer sits alike against 16-byte
// boundaries, seeing rows that start off one shifted (PackShift, below); otherwise the
// same kernels run with PACK = 1.
#pragma once
#include <stdint.h>
#include <string.h>

#include "emulation.cuh"
#include "mask.cuh"
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
    // Element k as f32. In a bf16 pack a value's bits go straight into place, one
    // instruction (a shift for the low half of a word, a mask for the high one), where
    // to_f32(get(k)) took two for the high half (shifted down to 16 bits, then back up:
    // SHF, IMAD.U32 on sm_90). A single element keeps to_f32(get(k)): loaded as 16 bits,
    // the shift made its kernels longer (sm_90 rows_g1_p1x8_bf16: 610 -> 633 a batch).
    __device__ __forceinline__ float f32_at(int k) const {
        if constexpr (std::is_same<T, __nv_bfloat16>::value && N > 1) {
            const uint32_t bits = k % 2 == 0 ? w[k / 2] << 16 : w[k / 2] & 0xffff0000u;
            float v;
            memcpy(&v, &bits, 4);
            return v;
        } else {
            return to_f32(get(k));
        }
    }
    // Elements 2k and 2k + 1 of a 16-bit pack, as a __half2 or __nv_bfloat162.
    template <typename Pair>
    __device__ __forceinline__ Pair pair_at(int k) const {
        static_assert(sizeof(Pair) == 4 && sizeof(T) == 2, "16-bit pairs");
        Pair v;
        memcpy(static_cast<void*>(&v), &w[k], 4);
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

// packs[i] for an index not known at compile time, by selects: indexing an array held in
// registers with a variable would move it to local memory.
template <typename T, int N, int PACKS>
__device__ __forceinline__ RawPack<T, N> pick(const RawPack<T, N> (&packs)[PACKS], int i) {
    RawPack<T, N> r = packs[0];
#pragma unroll
    for (int k = 1; k < PACKS; ++k)
        if (i == k) r = packs[k];
    return r;
}

// Tells the compiler that a fetched pack's registers may hold new values, so that nothing
// computed from them before this point is reused after it (no instruction is emitted).
template <typename T, int N>
__device__ __forceinline__ void forget_values(RawPack<T, N>& raw) {
#ifdef MASKED_SOFTMAX_EMULATION
    (void)raw;
#else
#pragma unroll
    for (int k = 0; k < RawPack<T, N>::WORDS; ++k) asm volatile("" : "+r"(raw.w[k]));
#endif
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* dst, const float (&src)[N]) {
    CHECK_ALIGNED(dst, sizeof(Pack<T, N>));
    Pack<T, N> pack;
#pragma unroll
    for (int i = 0; i < N; ++i) pack.v[i] = from_f32<T>(src[i]);
    *reinterpret_cast<Pack<T, N>*>(dst) = pack;
}

// store_pack for a 16-byte pack, as one 128-bit store whatever the code around it: in the
// streaming kernels' loops over whole packs (work.cuh, for_window_packs) the compiler
// split store_pack's stores of a batch of packs into 4-byte ones (sm_90, v17). In PTX,
// with a memory clobber (as __stwb has) that keeps every other memory access on its side:
// harmless there, where a batch's loads all come before its stores. (__stwb itself, the
// `.wb` store, came out as STG.E.128.STRONG.SM, not the plain STG.E.128.)
template <typename T, int N>
__device__ __forceinline__ void store_pack_128(T* dst, const float (&src)[N]) {
    static_assert(sizeof(T) * N == 16, "16-byte packs");
    CHECK_ALIGNED(dst, 16);
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if constexpr (sizeof(T) == 4) {
            memcpy(&w[k], &src[k], 4);
        } else {
            const T lo = from_f32<T>(src[2 * k]), hi = from_f32<T>(src[2 * k + 1]);
            uint16_t lo_bits, hi_bits;
            memcpy(&lo_bits, static_cast<const void*>(&lo), 2);
            memcpy(&hi_bits, static_cast<const void*>(&hi), 2);
            w[k] = uint32_t(lo_bits) | (uint32_t(hi_bits) << 16);
        }
    }
#ifdef MASKED_SOFTMAX_EMULATION
    memcpy(static_cast<void*>(dst), w, 16);
#else
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[0]),
                 "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
#endif
}

// A whole pack of the window (so within the row's own columns): 16-byte packs by
// store_pack_128, single elements as they are.
template <typename T, int N>
__device__ __forceinline__ void store_whole(T* dst, const float (&src)[N]) {
    if constexpr (sizeof(T) * N == 16)
        store_pack_128<T, N>(dst, src);
    else
        store_pack<T, N>(dst, src);
}

// Column arithmetic within a row is in an integer type I that the kernel picks: int32_t
// where its rows are short enough (the register kernels, up to 16384 columns, which the
// planner's capacity checks guarantee: src/plan.rs, Problem::configure; where a
// 64-bit compare costs two instructions per pack and test), int64_t in the kernels that take
// any k_len. Every helper below takes its columns in one type I.

// Whether the N columns from `col` reach into [start, end): a pack wholly outside the
// window is neither read nor weighed, only written (zeros).
template <int N, typename I>
__device__ __forceinline__ bool pack_overlaps(I col, I start, I end) {
    return col < end && col + N > start;
}

// For a pack that straddles an edge of [start, end): the offsets [lo, hi) within the pack of
// its columns inside, in 32-bit arithmetic (one subtraction per edge instead of two compares
// per column).
struct PackCut {
    int lo, hi;
    __device__ __forceinline__ bool has(int j) const { return j >= lo && j < hi; }
};

template <int N, typename I>
__device__ __forceinline__ PackCut pack_cut(I col, I start, I end) {
    const I lo = start - col, hi = end - col;
    return PackCut{lo > 0 ? int(lo) : 0, hi < N ? int(hi) : N};
}

// The same columns for any pack: [first, last) within it, each clamped to [0, N] (an
// empty span for a pack outside).
struct PackSpan {
    int first, last;
};

template <int N, typename I>
__device__ __forceinline__ PackSpan pack_span(I col, I start, I end) {
    const I lo = start - col, hi = end - col;
    return PackSpan{lo > 0 ? (lo < N ? int(lo) : N) : 0, hi > 0 ? (hi < N ? int(hi) : N) : 0};
}

// The same columns as bits (bit j: column col + j inside [start, end)), for any pack: all N
// for a pack inside, none for a pack outside. On sm_90 two clamps, two shifts and a mask,
// then one R2P makes the bits predicates, and a select a column applies them.
template <int N, typename I>
__device__ __forceinline__ uint32_t pack_bits(I col, I start, I end) {
    static_assert(N < 32, "packs of fewer than 32 elements");
    constexpr uint32_t ALL = (1u << N) - 1;
    const PackSpan span = pack_span<N>(col, start, end);
    return (ALL << span.first) & ~(ALL << span.last) & ALL;
}

// Puts `fill` in the columns of a pack not wholly inside [start, end) that lie outside it
// (all of them for a pack outside): the select of SELECT_EDGE (decode_window, store_window).
template <int N, typename I>
__device__ __forceinline__ void fill_outside(float (&v)[N], I col, I start, I end, float fill) {
    if (!(col >= start && col + N <= end)) {
        const uint32_t inside = pack_bits<N>(col, start, end);  // 0 for a pack outside
#pragma unroll
        for (int j = 0; j < N; ++j) v[j] = (inside >> j) & 1u ? v[j] : fill;
    }
}

// Each 16-bit half of `bits` made all ones where its top bit is set, else zero: one PRMT
// (bytes 1 and 3 hold the halves' top bits; a selector nibble of 8 + b replicates byte b's).
__device__ __forceinline__ uint32_t spread_half_tops(uint32_t bits) {
#ifdef MASKED_SOFTMAX_EMULATION
    return (bits & 0x8000u ? 0xffffu : 0u) | (bits & 0x80000000u ? 0xffff0000u : 0u);
#else
    uint32_t r;
    asm("prmt.b32 %0, %1, 0, 0xbb99;" : "=r"(r) : "r"(bits));
    return r;
#endif
}

// fill_outside for a fetched 16-bit pack kept as raw pairs (RawPairKeys): `fill2` (one
// 16-bit value, twice) in each column outside [start, end). A whole pack is left as it is
// (a branch of the lane's own); any other takes five instructions a pair with no branch.
// Half h of pair k is column j = 2k + h of the pack; with [lo, hi) its pack_span, the half
// 0x8000 + j - lo has its top bit set iff j >= lo and 0x7fff + hi - j iff j < hi, and
// neither borrows from or carries into the other half (lo, hi <= N and j < N, all small
// against 0x8000). (The whole pack is
// told by the span, not by fetch_window's test: ptxas kept that test's outcome from the
// loads as bits of a register, some 20 instructions a batch to store and read back.)
template <typename T, int N>
__device__ __forceinline__ void fill_outside_pairs(RawPack<T, N>& raw, int32_t col, int32_t start, int32_t end,
                                                   uint32_t fill2) {
    static_assert(sizeof(T) == 2 && N % 2 == 0 && N <= 16, "16-bit pairs, a few of them");
    const PackSpan span = pack_span<N>(col, start, end);
    if (span.first == 0 && span.last == N) return;
    const uint32_t at_least_lo = 0x80008000u - uint32_t(span.first) * 0x10001u;
    const uint32_t below_hi = 0x7fff7fffu + uint32_t(span.last) * 0x10001u;
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
        const uint32_t columns = uint32_t(2 * k) * 0x10001u + 0x10000u;  // 2k low, 2k + 1 high
        const uint32_t inside = spread_half_tops((at_least_lo + columns) & (below_hi - columns));
        raw.w[k] = (raw.w[k] & inside) | (fill2 & ~inside);
    }
}

// An L2 eviction priority for a load (sm_80+: createpolicy, ld.global.L2::cache_hint): a
// 64-bit descriptor the compiler keeps in uniform registers (no per-thread register). The
// kernels that read each valid pack twice ask the L2 to keep the first read's lines for
// the second (work.cuh, RereadPolicy); every other load is plain.
struct L2Policy {
    uint64_t bits;

#ifdef MASKED_SOFTMAX_EMULATION
    static L2Policy unchanged() { return L2Policy{0}; }
    static L2Policy keep() { return L2Policy{1}; }
    static L2Policy last_use() { return L2Policy{2}; }
#else
    // Priorities for all of a load's lines (fraction 1.0).
    // Leaves every line's priority as it is (a line the load brings in gets the normal
    // one): what set_l2_hints(false) asks for, in the same load instruction.
    __device__ __forceinline__ static L2Policy unchanged() {
        uint64_t b;
        asm("createpolicy.fractional.L2::evict_unchanged.b64 %0, 1.0;" : "=l"(b));
        return L2Policy{b};
    }
    // Lines to be read again soon: evicted after normal and evict_first ones.
    __device__ __forceinline__ static L2Policy keep() {
        uint64_t b;
        asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(b));
        return L2Policy{b};
    }
    // A line's last read: the first to go.
    __device__ __forceinline__ static L2Policy last_use() {
        uint64_t b;
        asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(b));
        return L2Policy{b};
    }
#endif
};

// One aligned load of 16, 4 or 2 bytes under `policy`. asm volatile keeps it where it is,
// inside the test that guards it (the window's, or the loop bounds of for_window_packs:
// hoisted out, it could read a pad or past the buffer); no memory clobber is needed, as
// each pack is read and then written by the same thread.
template <int BYTES>
__device__ __forceinline__ void load_hinted(const void* src, L2Policy policy, uint32_t (&w)[(BYTES + 3) / 4]) {
#ifdef MASKED_SOFTMAX_EMULATION
    (void)policy;
    if constexpr (BYTES == 2) {
        uint16_t h;
        memcpy(&h, src, 2);
        w[0] = h;
    } else {
        memcpy(w, src, BYTES);
    }
#else
    if constexpr (BYTES == 16) {
        asm volatile("ld.global.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                     : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                     : "l"(src), "l"(policy.bits));
    } else if constexpr (BYTES == 4) {
        asm volatile("ld.global.L2::cache_hint.u32 %0, [%1], %2;" : "=r"(w[0]) : "l"(src), "l"(policy.bits));
    } else {
        static_assert(BYTES == 2, "packs are 16 bytes or one element");
        uint16_t h;
        asm volatile("ld.global.L2::cache_hint.u16 %0, [%1], %2;" : "=h"(h) : "l"(src), "l"(policy.bits));
        w[0] = h;
    }
#endif
}

// The whole pack at `at`, every column of which the caller knows to lie inside the window
// (for_window_packs; fetch_window's packs inside).
template <typename T, int N>
__device__ __forceinline__ void fetch_whole(const T* at, RawPack<T, N>& raw, const L2Policy* policy = nullptr) {
    using Raw = RawPack<T, N>;
    CHECK_ALIGNED(at, Raw::BYTES);
    if (policy) {
        load_hinted<Raw::BYTES>(at, *policy, raw.w);
    } else if constexpr (Raw::BYTES == 16) {
        const uint4 v = *reinterpret_cast<const uint4*>(at);
        raw.w[0] = v.x;
        raw.w[1] = v.y;
        raw.w[2] = v.z;
        raw.w[3] = v.w;
    } else if constexpr (Raw::BYTES == 4) {
        raw.w[0] = *reinterpret_cast<const uint32_t*>(at);
    } else {
        static_assert(Raw::BYTES == 2, "packs are 16 bytes or one element");
        raw.w[0] = *reinterpret_cast<const uint16_t*>(at);
    }
}

// Reading a pack takes two phases. fetch_window issues the loads: the raw pack at `col`,
// reading only columns inside [start, end) (the others hold zero bits and are never read).
// Nothing there uses what it loads, so a thread that fetches all its packs before decoding
// any has all their loads in flight at once; fetching and using pack by pack would wait
// out the memory latency once per pack (the branches keep the compiler from reordering).
// With a `policy` (the kernels that read rows twice), whole packs load under it; the
// element-wise reads of a pack across an edge of the window stay plain. (A pointer known
// at compile time: a runtime choice between a hinted and a plain load doubled the loop's
// loads and spilled the backward clusters.)
template <typename T, int N, typename I>
__device__ __forceinline__ void fetch_window(const T* row, I col, I start, I end, RawPack<T, N>& raw,
                                             const L2Policy* policy = nullptr) {
    using Raw = RawPack<T, N>;
    if (col >= start && col + N <= end) {
        fetch_whole<T, N>(row + col, raw, policy);
    } else {
#pragma unroll
        for (int i = 0; i < Raw::WORDS; ++i) raw.w[i] = 0;
        // (A single column is inside or outside: only wider packs can straddle an edge.)
        if (N > 1 && pack_overlaps<N>(col, start, end)) {
            const PackCut cut = pack_cut<N>(col, start, end);
#pragma unroll
            for (int i = 0; i < N; ++i)
                if (cut.has(i)) raw.set(i, row[col + i]);
        }
    }
}

// decode_window turns a fetched pack into f32: valid(v) for columns inside [start, end),
// `fill` for the others. Packs inside the window, across an edge and outside it each take
// their own code, unless SELECT_EDGE: then every pack decodes as a whole one (columns
// outside the window hold zero bits: fetch_window), and one not wholly inside puts `fill`
// where they are, a select a column. That is for the rows kernels, whose warps meet every
// kind of pack at once (each lane group holds its own short row) and so ran every path in
// turn, where now the whole pack's code is shared (sm_90 rows_keys_g8_p8x1_f16, a batch of
// 8 rows: 709 instructions where packs cross edges, 583 with SELECT_EDGE; 415 and 418
// where all are whole; PERFORMANCE.md v15). In the kernels that loop over long rows a
// warp's packs are nearly all of one kind, and the select's live values cost registers
// (tried for every kernel: the 16-bit cached clusters went from 51 to 85 on sm_90).
template <bool SELECT_EDGE, typename T, int N, typename I, typename F>
__device__ __forceinline__ void decode_window(const RawPack<T, N>& raw, I col, I start, I end, float fill, F valid,
                                              float (&out)[N]) {
    if constexpr (SELECT_EDGE && N > 1) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = valid(raw.f32_at(i));
        fill_outside<N>(out, col, start, end, fill);
    } else if (col >= start && col + N <= end) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = valid(raw.f32_at(i));
    } else if (N == 1 || !pack_overlaps<N>(col, start, end)) {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = fill;
    } else {
        const PackCut cut = pack_cut<N>(col, start, end);
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = cut.has(i) ? valid(raw.f32_at(i)) : fill;
    }
}

// The keys of a fetched pack (forward): masked columns get -inf, which weighs 0.
template <typename T, int N, bool SELECT_EDGE = false, typename I>
__device__ __forceinline__ void decode_keys(const RawPack<T, N>& raw, I col, I start, I end, const ScaleMap& sm,
                                            float (&keys)[N]) {
    decode_window<SELECT_EDGE, T, N>(raw, col, start, end, -CUDART_INF_F, [&](float v) { return sm.key(v); }, keys);
}

// The keys of a whole pack of the window (forward): no column to mask. (Not f32_at: in the
// bf16 streaming kernels held to 64 registers, cluster_stream_p8 and split_write_p8, it
// made ptxas spill.)
template <typename T, int N>
__device__ __forceinline__ void decode_whole_keys(const RawPack<T, N>& raw, const ScaleMap& sm, float (&keys)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) keys[i] = sm.key(to_f32(raw.get(i)));
}

// The values of a pack from fetch_window (backward): masked columns get 0. They hold zero
// bits as fetched, which decode to +0.0: so every pack decodes whole, with no test.
template <typename T, int N>
__device__ __forceinline__ void decode_values(const RawPack<T, N>& raw, float (&values)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) values[i] = raw.f32_at(i);
}

// A pack of y and the pack of dy at the same columns (the backward's unit of work).
template <typename T, int N>
struct PackPair {
    RawPack<T, N> y;
    RawPack<T, N> dy;
};

// Writes the pack at `col`: whole if it lies within the row's own columns `own` ([0, k_len),
// or [lead, lead + k_len) with shifted packs: see PackShift), else element by element
// those inside (none for a pack wholly outside).
template <typename T, int N, typename I>
__device__ __forceinline__ void store_values(T* row, I col, ColumnWindow<I> own, const float (&values)[N]) {
    if (col >= own.start && col + N <= own.end) {
        store_pack<T, N>(row + col, values);
    } else if (N > 1) {
        const PackCut cut = pack_cut<N>(col, own.start, own.end);
#pragma unroll
        for (int i = 0; i < N; ++i)
            if (cut.has(i)) row[col + i] = from_f32<T>(values[i]);
    }
}

// Writes the pack at `col` of a row: value(j) for its columns inside [start, end), +0.0 for
// the others; nothing outside the row's own columns `own`. Whole packs inside or outside
// the window skip the per-column test, and value(j) is called for the columns inside the
// window alone, unless SELECT_EDGE (see decode_window): then it is called for every column
// of every pack and a select keeps those inside, so it must have no effect and may see
// whatever a column outside holds (the rows kernels' keys and values, in registers).
template <typename T, int N, bool SELECT_EDGE = false, typename I, typename F>
__device__ __forceinline__ void store_window(T* row, I col, ColumnWindow<I> own, I start, I end, F value) {
    float out[N];
    if constexpr (SELECT_EDGE && N > 1) {
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = value(j);
        fill_outside<N>(out, col, start, end, 0.f);
    } else if (col >= start && col + N <= end) {
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = value(j);
    } else if (N == 1 || !pack_overlaps<N>(col, start, end)) {
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = 0.f;
    } else {
        const PackCut cut = pack_cut<N>(col, start, end);
#pragma unroll
        for (int j = 0; j < N; ++j) out[j] = cut.has(j) ? value(j) : 0.f;
    }
    store_values<T, N, I>(row, col, own, out);
}

// ---------------------------------------------------------------- shifted packs
//
// Rows that start off a 16-byte boundary (an odd row stride, or buffers that sit alike off
// one: MASK_SHIFTED_PACKS, set by src/plan.rs) would leave a kernel of 16-byte packs only
// single elements. Instead the kernel sees each row from the boundary before it: the row
// begins `lead` elements earlier, its own columns are [lead, lead + k_len) and its window
// moves alike. Every whole pack is then aligned; the pack at each end of the row straddles
// the edge of its own columns and goes element by element (reads stay inside the window,
// writes inside the row: a neighbouring row's elements in the same 16 bytes are never
// touched). Rows take up to PACK - 1 columns more: the planner sizes kernels for
// k_len + PACK - 1 when the flag is set (src/plan.rs, Problem::columns).
template <typename T, int PACK>
struct PackShift {
    // The kernel's first buffer and flags, both kernel parameters: worked out from them
    // per row rather than kept, so that nothing stays live across a kernel's row loop.
    const T* buffer;
    int32_t flags;

    __device__ __forceinline__ static PackShift of(const T* buffer, const MaskParams& p) {
        return PackShift{buffer, p.flags};
    }
    __device__ __forceinline__ bool on() const { return PACK > 1 && (flags & MASK_SHIFTED_PACKS) != 0; }
    // Elements between the 16-byte boundary and the row at element `offset` (PACK divides
    // 2^32, so the low 32 bits decide).
    __device__ __forceinline__ int32_t lead(int64_t offset) const {
        const uint32_t first = uint32_t(reinterpret_cast<uintptr_t>(buffer) / sizeof(T));
        return on() ? int32_t((first + uint32_t(offset)) % PACK) : 0;
    }
    // The most columns a row of k_len spans in its frame.
    __device__ __forceinline__ int64_t columns(int64_t k_len) const { return on() ? k_len + PACK - 1 : k_len; }
};

// A row's window moved into its frame.
template <typename I>
__device__ __forceinline__ ColumnWindow<I> shifted(ColumnWindow<I> w, I lead) {
    return ColumnWindow<I>{I(w.start + lead), I(w.end + lead)};
}

// The whole 16-byte chunks of the bytes [begin, end), as [lo, hi) (empty: hi <= lo). An L2
// prefetch asks for these alone, so it never reaches a byte outside [begin, end) (so never
// one outside the caller's buffer, even where a row ends off a 16-byte boundary; the
// partial chunks at the ends are left to the loads).
struct L2Chunks {
    uintptr_t lo, hi;

    __device__ __forceinline__ static L2Chunks of(const void* begin, const void* end) {
        return L2Chunks{(reinterpret_cast<uintptr_t>(begin) + 15) & ~uintptr_t(15),
                        reinterpret_cast<uintptr_t>(end) & ~uintptr_t(15)};
    }
    __device__ __forceinline__ bool empty() const { return hi <= lo; }
};

// One bulk prefetch of the chunks by the calling thread (sm_90; the copy engine walks the
// range). PTX takes a 32-bit size, but the SASS (UBLKPF) keeps 16 bits of 16-byte units: a
// longer range would wrap, so a hint of more than 1 MiB stops there (the block kernels'
// rows are shorter: at most 227 KiB). The emulator reads the range's first and last bytes
// instead, so that its guard pages catch a range past a buffer, and counts the range (the
// tests check the bytes against the rows the kernel should ask for).
__device__ __forceinline__ void bulk_prefetch_l2(const L2Chunks& c) {
#ifdef MASKED_SOFTMAX_EMULATION
    emu::l2_prefetch(reinterpret_cast<const void*>(c.lo), c.hi - c.lo);
#elif __CUDA_ARCH__ >= 900
    const uint32_t bytes = uint32_t(min(c.hi - c.lo, (uintptr_t(1) << 20) - 16));
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(
                     __cvta_generic_to_global(reinterpret_cast<const void*>(c.lo))),
                 "r"(bytes));
#endif
}

// Asks the L2 for the whole 16-byte chunks of the bytes [begin, end) (L2Chunks), called by
// every lane of one warp: a hint, on which no result depends. sm_90: one bulk prefetch by
// lane 0; before: the warp's lanes one `prefetch.global.L2` a 128-byte line each.
__device__ __forceinline__ void prefetch_l2(const void* begin, const void* end) {
    const L2Chunks c = L2Chunks::of(begin, end);
    if (c.empty()) return;
#if defined(MASKED_SOFTMAX_EMULATION) || __CUDA_ARCH__ >= 900
    if (threadIdx.x % 32 == 0) bulk_prefetch_l2(c);
#else
    for (uintptr_t line = (c.lo & ~uintptr_t(127)) + (threadIdx.x % 32) * 128; line < c.hi; line += 32 * 128) {
        const uintptr_t at = line < c.lo ? c.lo : line;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(reinterpret_cast<const void*>(at))));
    }
#endif
}

// The same hint asked by the calling lane alone, for a range of its own (the rows kernels:
// one lane a row). sm_90: a bulk prefetch; before: a `prefetch.global.L2` a 128-byte line.
__device__ __forceinline__ void prefetch_l2_lane(const void* begin, const void* end) {
    const L2Chunks c = L2Chunks::of(begin, end);
    if (c.empty()) return;
#if defined(MASKED_SOFTMAX_EMULATION) || __CUDA_ARCH__ >= 900
    bulk_prefetch_l2(c);
#else
    for (uintptr_t line = c.lo & ~uintptr_t(127); line < c.hi; line += 128) {
        const uintptr_t at = line < c.lo ? c.lo : line;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(reinterpret_cast<const void*>(at))));
    }
#endif
}
