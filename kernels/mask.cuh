// The mask rule, in one place on the CUDA side (its Rust twin is src/mask.rs).
//
// Every mask of the contract leaves each row one contiguous run of valid keys: key
// padding keeps kv_len keys at one end, the causal diagonal and the sliding window cut
// that run at both ends. So a row's mask is the half-open column range [start, end),
// empty for a padded query row. Kernels ask for it once per row and never read x outside.
#pragma once
#include <stdint.h>

// Flags of MaskParams::flags.
#define MASK_LEFT_PADDING 1
#define MASK_CAUSAL 2
// Not a mask: rows are seen from the 16-byte boundary before them (io.cuh, PackShift).
#define MASK_SHIFTED_PACKS 4
// Not a mask, and never set by the planner: the streaming kernels read rows twice with
// normal L2 priorities, as up to v8 (work.cuh, RereadPolicy), for the benchmark's variants
// to compare.
#define MASK_PLAIN_STREAM 8
// Key padding alone (no causal mask, no query lengths), set by the host: every row's window
// is its batch entry's kv keys at the unpadded end, with no query position to work out.
#define MASK_KEYS_ONLY 16
// Set by the host (src/plan.rs, KernelParams::new) when every row index, row-offset factor
// and window of the launch fits in 32 bits (narrow_rows_launch): the rows kernels then take
// NarrowRows (work.cuh). Cleared, they take the 64-bit path, as for the giant launches (the
// emulator's tests clear it to run that path on small problems).
#define MASK_NARROW_ROWS 32

// n / d for a divisor fixed for the whole launch, without a divide instruction: for n and d
// below 2^31, n / d = (umulhi(n, magic) + n) >> shift (Granlund and Montgomery, in the form
// PyTorch's IntDivider uses). A hardware-less 64-bit division costs dozens of instructions
// per row, which short rows (k_len 1..64) cannot afford. The host works out magic and
// shift (src/plan.rs, FastDivisor::of) and passes them in MaskParams: computed here, they
// took registers for the whole kernel, which the cluster kernels, held to 64, spilled.
struct FastDivisor {
    uint32_t magic;
    uint32_t shift;

    __device__ __forceinline__ uint32_t divide(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// Kernel parameters shared by every kernel. Must match `KernelParams` in src/plan.rs
// field for field (all 8-byte fields first, so no padding differs between compilers).
struct MaskParams {
    const int32_t* kv_lens;  // valid keys per batch entry, or null for all k_len
    const int32_t* q_lens;   // valid queries per batch entry, or null for all q_len
    int64_t rows;            // batch * heads * q_len
    int64_t heads;
    int64_t q_len;
    int64_t k_len;
    int64_t row_stride;      // elements between row starts, >= k_len
    int64_t window;          // sliding window in keys; 0 = unlimited (causal only)
    float scale;             // applied to every valid score before the softmax
    int32_t flags;           // MASK_LEFT_PADDING | MASK_CAUSAL | MASK_SHIFTED_PACKS | MASK_PLAIN_STREAM |
                             // MASK_KEYS_ONLY | MASK_NARROW_ROWS
    FastDivisor per_batch;   // by heads * q_len (when rows < 2^31)
    FastDivisor per_query;   // by q_len (when rows < 2^31)
};

// A row's valid columns [start, end), in 64 bits (RowWindow, any k_len) or 32 bits
// (ShortWindow, for the register kernels, whose rows the planner keeps to at most 16384
// columns: src/plan.rs, Problem::configure).
template <typename I>
struct ColumnWindow {
    I start;
    I end;
};
using RowWindow = ColumnWindow<int64_t>;
using ShortWindow = ColumnWindow<int32_t>;

// A window of a row of fewer than 2^31 columns, in 32 bits.
__device__ __forceinline__ ShortWindow narrow(RowWindow w) { return ShortWindow{int32_t(w.start), int32_t(w.end)}; }

// Device lengths are clamped into [0, max] (the contract: out-of-range device lengths are
// clamped, host lengths are rejected before launch).
template <typename I>
__device__ __forceinline__ I clamp_length(I v, I max) {
    return v < 0 ? I(0) : (v > max ? max : v);
}

// Splits a row index into its batch entry and query position: launches of 2^31 rows or
// more take the 64-bit division instead.
struct RowIndex {
    bool fast;
    FastDivisor per_batch;  // by heads * q_len
    FastDivisor per_query;  // by q_len

    __device__ __forceinline__ static RowIndex of(const MaskParams& p) {
        return RowIndex{p.rows < (int64_t(1) << 31), p.per_batch, p.per_query};
    }
};

// A row's query position and its device lengths as loaded (unclamped; 0 where there are
// none: window_of substitutes k_len and q_len). Loading is split from using, so that a thread
// handling several rows has all their length loads in flight at once instead of waiting for
// each in turn.
struct RowLengths {
    int64_t i;   // query position in [0, q_len)
    int32_t kv;  // raw device key length
    int32_t q;   // raw device query length
};

__device__ __forceinline__ RowLengths fetch_row_lengths(const MaskParams& p, const RowIndex& index, int64_t row) {
    int64_t b, i;
    if (index.fast) {
        const uint32_t n = uint32_t(row);
        b = index.per_batch.divide(n);
        i = n - index.per_query.divide(n) * uint32_t(p.q_len);
    } else {
        b = row / (p.heads * p.q_len);
        i = row % p.q_len;
    }
    RowLengths r{i, 0, 0};
    if (p.kv_lens != nullptr) r.kv = p.kv_lens[b];
    if (p.q_lens != nullptr) r.q = p.q_lens[b];
    return r;
}

// A launch whose rows kernels can take each row in 32-bit arithmetic (NarrowRows, work.cuh):
// fewer than 2^31 rows (so the fast divisions hold), row starts a 32-bit multiply apart
// (row_stride < 2^31: the offset is one wide multiply) and windows in 32 bits
// (k_len + q_len < 2^31 - 1), as the host found (MASK_NARROW_ROWS): every launch but the
// giant ones. (A flag, one test of a uniform register, where the kernel's own test of the
// three sizes took 10 instructions a batch of rows: ptxas worked it out again in the loop.)
__device__ __forceinline__ bool narrow_rows_launch(const MaskParams& p) { return (p.flags & MASK_NARROW_ROWS) != 0; }

// RowLengths of a row of a narrow_rows_launch: the query position in 32 bits, and only
// where a mask needs it (key padding alone does not: one division a row fewer). The twin of
// fetch_row_lengths's fast branch, kept apart: fetch_row_lengths built on it reshaped the
// block, split and cluster kernels' registers (up to 20 more on sm_80, and a spill).
struct NarrowRowLengths {
    int32_t i;   // query position in [0, q_len); 0 under MASK_KEYS_ONLY
    int32_t kv;  // raw device key length
    int32_t q;   // raw device query length
};

__device__ __forceinline__ NarrowRowLengths fetch_narrow_row_lengths(const MaskParams& p, uint32_t row) {
    NarrowRowLengths r{0, 0, 0};
    const uint32_t b = p.per_batch.divide(row);
    if (p.kv_lens != nullptr) r.kv = p.kv_lens[b];
    if (!(p.flags & MASK_KEYS_ONLY)) {  // (key padding alone has no query lengths)
        r.i = int32_t(row - p.per_query.divide(row) * uint32_t(p.q_len));
        if (p.q_lens != nullptr) r.q = p.q_lens[b];
    }
    return r;
}

// The valid key columns of query row i from its raw lengths, in integer type I: every
// intermediate lies within +-(k_len + q_len), and `window` is 0 or at most k_len + 1.
template <typename I>
__device__ __forceinline__ RowWindow window_in(const MaskParams& p, I i, I kv_raw, I q_raw, I k_len, I q_len,
                                               I window) {
    const RowWindow empty = {0, 0};
    const I kv = clamp_length(kv_raw, k_len);
    const I qv = clamp_length(q_raw, q_len);

    // Position of the query among the valid queries, and column of the first valid key.
    I q_pos, key_start;
    if (p.flags & MASK_LEFT_PADDING) {
        const I first_valid_row = q_len - qv;
        if (i < first_valid_row) return empty;
        q_pos = i - first_valid_row;
        key_start = k_len - kv;
    } else {
        if (i >= qv) return empty;
        q_pos = i;
        key_start = 0;
    }

    // Valid key positions lo..hi among the kv valid keys.
    I lo = 0, hi = kv;
    if (p.flags & MASK_CAUSAL) {
        const I diagonal = q_pos + kv - qv;  // last visible key position
        hi = min(hi, I(diagonal + 1));
        if (window > 0) lo = max(lo, I(diagonal - window + 1));
    }
    if (lo >= hi) return empty;
    return RowWindow{int64_t(key_start + lo), int64_t(key_start + hi)};
}

// The valid key columns of a row from its lengths, in 64-bit arithmetic.
__device__ __forceinline__ RowWindow window_of(const MaskParams& p, const RowLengths& l) {
    return window_in<int64_t>(p, l.i, p.kv_lens != nullptr ? int64_t(l.kv) : p.k_len,
                              p.q_lens != nullptr ? int64_t(l.q) : p.q_len, p.k_len, p.q_len, p.window);
}

// The same in 32-bit arithmetic, for a launch where k_len + q_len < 2^31 - 1 (the caller's
// test, narrow_rows_launch): for the rows kernels, whose short rows pay for a window once
// per handful of elements (64-bit compares and selects cost two instructions each). (The
// block kernels, one window per row of thousands of columns, keep the 64-bit path alone:
// both paths cost them registers.)
//
// Key padding alone (MASK_KEYS_ONLY: padded sequences without a causal mask, as in the
// sweep's short rows) takes a branch of its own: in v9.3's sm_90 SASS (rows_g1_p1x1_f32)
// 14 instructions a row where the general rule's right-padding path took about 30, as much
// as a short row's arithmetic on a few columns.
__device__ __forceinline__ ShortWindow window_of_narrow_row(const MaskParams& p, const NarrowRowLengths& l) {
    const int32_t k_len = int32_t(p.k_len), q_len = int32_t(p.q_len);
    if (p.flags & MASK_KEYS_ONLY) {
        const int32_t kv = p.kv_lens != nullptr ? clamp_length(l.kv, k_len) : k_len;
        return (p.flags & MASK_LEFT_PADDING) ? ShortWindow{k_len - kv, k_len} : ShortWindow{0, kv};
    }
    // A window longer than k_len keeps the same keys as k_len + 1 (0 stays unlimited).
    const int32_t window = int32_t(p.window > p.k_len ? p.k_len + 1 : p.window);
    return narrow(window_in<int32_t>(p, l.i, p.kv_lens != nullptr ? l.kv : k_len, p.q_lens != nullptr ? l.q : q_len,
                                     k_len, q_len, window));
}

// The valid key columns of row `row` (counted over [batch, heads, q_len]).
__device__ __forceinline__ RowWindow row_window(const MaskParams& p, const RowIndex& index, int64_t row) {
    return window_of(p, fetch_row_lengths(p, index, row));
}
