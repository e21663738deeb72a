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

// Kernel parameters shared by every kernel. Must match `KernelParams` in src/cuda.rs
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
    int32_t flags;           // MASK_LEFT_PADDING | MASK_CAUSAL
};

struct RowWindow {
    int64_t start;
    int64_t end;
};

// Device lengths are clamped into [0, max] (the contract: out-of-range device lengths are
// clamped, host lengths are rejected before launch).
__device__ __forceinline__ int64_t clamp_length(int64_t v, int64_t max) {
    return v < 0 ? 0 : (v > max ? max : v);
}

// n / d for a divisor fixed for the whole launch, without a divide instruction: for n and d
// below 2^31, n / d = (umulhi(n, magic) + n) >> shift (Granlund and Montgomery, in the form
// PyTorch's IntDivider uses). A hardware-less 64-bit division costs dozens of instructions
// per row, which short rows (k_len 1..64) cannot afford.
struct FastDivisor {
    uint32_t magic;
    uint32_t shift;

    __device__ __forceinline__ static FastDivisor of(uint32_t d) {
        const uint32_t shift = d <= 1 ? 0 : 32 - __clz(int(d - 1));  // ceil(log2 d)
        const uint64_t magic = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1;
        return FastDivisor{uint32_t(magic), shift};
    }
    __device__ __forceinline__ uint32_t divide(uint32_t n) const { return (__umulhi(n, magic) + n) >> shift; }
};

// Splits a row index into its batch entry and query position. Built once per thread;
// launches of 2^31 rows or more take the 64-bit division instead.
struct RowIndex {
    bool fast;
    FastDivisor per_batch;  // by heads * q_len
    FastDivisor per_query;  // by q_len

    __device__ __forceinline__ static RowIndex of(const MaskParams& p) {
        RowIndex r{p.rows < (int64_t(1) << 31), {1, 0}, {1, 0}};
        if (r.fast) {
            r.per_batch = FastDivisor::of(uint32_t(p.heads * p.q_len));
            r.per_query = FastDivisor::of(uint32_t(p.q_len));
        }
        return r;
    }
};

// A row's batch entry and query position, and its lengths as loaded (unclamped). Loading
// is split from using, so that a thread handling several rows has all their length loads
// in flight at once instead of waiting for each in turn.
struct RowLengths {
    int64_t i;   // query position in [0, q_len)
    int64_t kv;  // raw device key length (k_len when there are none)
    int64_t q;   // raw device query length (q_len when there are none)
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
    RowLengths r{i, p.k_len, p.q_len};
    if (p.kv_lens != nullptr) r.kv = p.kv_lens[b];
    if (p.q_lens != nullptr) r.q = p.q_lens[b];
    return r;
}

// The valid key columns of a row from its lengths.
__device__ __forceinline__ RowWindow window_of(const MaskParams& p, const RowLengths& l) {
    const RowWindow empty = {0, 0};
    const int64_t i = l.i;
    const int64_t kv = clamp_length(l.kv, p.k_len);
    const int64_t qv = clamp_length(l.q, p.q_len);

    // Position of the query among the valid queries, and column of the first valid key.
    int64_t q_pos, key_start;
    if (p.flags & MASK_LEFT_PADDING) {
        const int64_t first_valid_row = p.q_len - qv;
        if (i < first_valid_row) return empty;
        q_pos = i - first_valid_row;
        key_start = p.k_len - kv;
    } else {
        if (i >= qv) return empty;
        q_pos = i;
        key_start = 0;
    }

    // Valid key positions lo..hi among the kv valid keys.
    int64_t lo = 0, hi = kv;
    if (p.flags & MASK_CAUSAL) {
        const int64_t diagonal = q_pos + kv - qv;  // last visible key position
        hi = min(hi, diagonal + 1);
        if (p.window > 0) lo = max(lo, diagonal - p.window + 1);
    }
    if (lo >= hi) return empty;
    return RowWindow{key_start + lo, key_start + hi};
}

// The valid key columns of row `row` (counted over [batch, heads, q_len]).
__device__ __forceinline__ RowWindow row_window(const MaskParams& p, const RowIndex& index, int64_t row) {
    return window_of(p, fetch_row_lengths(p, index, row));
}
