// Length-masked softmax forward, one family of kernels, picked by src/plan.rs:
//
//   masked_softmax_fwd_rows_g<G>_p<P>x<N>_<dtype>   GROUP = G lanes per row (32 / G rows
//       per warp), each lane holding N packs of P elements in registers: one read of the
//       valid scores, one write of the row. For rows up to G * P * N columns. The 16-bit
//       ones keep their columns as raw pairs; masked_softmax_fwd_rows_keys_* (16-bit rows
//       of up to 2 packs a lane) keep f32 keys.
//   masked_softmax_fwd_block_regs_p<P>x<N>_<dtype>  one block per row (64..512 threads),
//       N packs of P elements per thread in registers (N * P = 16): one read, one write.
//       For rows up to 512 * 16 columns. The 16-bit p8x4 keep raw pairs (512 * 32
//       columns); p8x8 (raw pairs, 64 columns a thread, up to 256 threads) is a variant.
//       Both keep their weights in shared memory from the sum to the store where the
//       launch grants it (WeightCache), as the 16-bit raw-pair rows kernels do.
//   masked_softmax_fwd_block_cached_p<P>_<dtype>    one block per row, keys cached in
//       dynamic shared memory: one read, one write. For longer rows that fit on chip.
//   masked_softmax_fwd_block_stream_p<P>_<dtype>    one block per row, any length: an
//       online (max, sum) pass, then a second read of the valid scores to write.
//   masked_softmax_fwd_cluster_{cached,stream}_p<P>_<dtype>   (sm_90+) few long rows: a
//       thread-block cluster per row, each block a chunk of it (cached in shared memory
//       when it fits); the blocks merge their statistics through distributed shared memory.
//
// All of them: the mask from mask.cuh (masked positions never read, written as +0.0), the
// numerics from numeric.cuh, grid-stride loops over rows (any row count), 64-bit offsets,
// and x may alias y: each element is read, then written, by the same thread.
#include "cluster.cuh"
#include "emulation.cuh"
#include "io.cuh"
#include "ladder.cuh"
#include "mask.cuh"
#include "numeric.cuh"
#include "reduce.cuh"
#include "work.cuh"

// The block_regs kernels' reduction scratch, at the start of their dynamic shared memory
// (src/plan.rs, BLOCK_SCRATCH_BYTES: 32 float2); their weight cache follows it.
constexpr uint32_t BLOCK_SCRATCH_BYTES = 32 * 8;

// A thread's weights of one row (PACKS packs of PACK columns, as f32) kept in dynamic shared
// memory from the sum to the store, which then multiplies each by 1 / sum where it computed
// it again (a conversion, an FFMA, an FMUL and an ex2 a column: 623 -> 518 instructions a
// batch for rows_g8_p8x4_f16, PERFORMANCE.md v22). Registers could not hold them: they are
// what raw pairs save. A thread's slot s (4 floats) lies STRIDE float4s after its slot
// s - 1, and a warp's 32 lanes hold 32 consecutive float4s of each slot, so a warp's access
// to one slot is 512 contiguous bytes (no bank conflict) at an offset known at compile
// time: the rows kernels (rows_weight_cache) interleave the block's threads (STRIDE =
// ROWS_THREADS, thread t's slot s at s * 256 + t), block_regs (block_weight_cache, any
// block size) gives each warp its own run of slots after the reduction scratch (STRIDE = 32). Each thread reads
// back only what it wrote, so no barrier is needed. The planner grants the bytes only
// where they cost no block a multiprocessor (src/plan.rs, weight_cache_bytes); a launch
// without them computes the weights twice, as before.
template <int PACK, int PACKS, int STRIDE>
struct WeightCache {
    static_assert(PACK % 4 == 0, "packs of whole float4 slots");
    static constexpr int SLOTS = PACK * PACKS / 4;  // float4s a thread
    float4* own;   // the thread's slot 0
    bool granted;  // whether the launch gave the block room for every thread's slots

    __device__ __forceinline__ void put(int i, const float (&w)[PACK]) const {
#pragma unroll
        for (int q = 0; q < PACK / 4; ++q)
            own[(i * (PACK / 4) + q) * STRIDE] = make_float4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
    }
    __device__ __forceinline__ void get(int i, float (&w)[PACK]) const {
#pragma unroll
        for (int q = 0; q < PACK / 4; ++q) {
            const float4 v = own[(i * (PACK / 4) + q) * STRIDE];
            w[4 * q] = v.x;
            w[4 * q + 1] = v.y;
            w[4 * q + 2] = v.z;
            w[4 * q + 3] = v.w;
        }
    }
};
template <int PACK, int PACKS>
using RowsWeightCache = WeightCache<PACK, PACKS, ROWS_THREADS>;
template <int PACK, int PACKS>
using BlockWeightCache = WeightCache<PACK, PACKS, 32>;

template <int PACK, int PACKS>
__device__ __forceinline__ RowsWeightCache<PACK, PACKS> rows_weight_cache() {
    constexpr uint32_t BYTES = ROWS_THREADS * PACK * PACKS * 4;
    return {dynamic_shared<float4>() + threadIdx.x, dynamic_shared_bytes() >= BYTES && blockDim.x <= ROWS_THREADS};
}
template <int PACK, int PACKS>
__device__ __forceinline__ BlockWeightCache<PACK, PACKS> block_weight_cache() {
    constexpr uint32_t SLOTS = BlockWeightCache<PACK, PACKS>::SLOTS;
    float4* slots = reinterpret_cast<float4*>(dynamic_shared<unsigned char>() + BLOCK_SCRATCH_BYTES);
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t warps = (blockDim.x + 31) / 32;
    return {slots + warp * SLOTS * 32 + lane, dynamic_shared_bytes() >= BLOCK_SCRATCH_BYTES + warps * 32 * SLOTS * 16};
}

// ---------------------------------------------------------------- 16-bit rows as raw pairs
//
// The 16-bit register kernels keep their columns as fetched, two to a 32-bit register,
// instead of as f32 keys: half the registers per column, so a thread (or lane) holds twice
// the columns, or a warp twice the rows, and has twice the bytes in flight, for the same
// register budget. Bytes in flight are what these kernels lack: at the same structure the
// 16-bit kernels ran at about twice f32's time over floor (v3-v5), moving half the bytes
// per load. The price: the weights do not fit beside them, so they are computed twice,
// once for the sum and once to write (about 11 instructions per column where f32 keys take
// 8.5), except at the usual scale where the launch grants shared memory to keep them in
// (WeightCache: softmax_row_filled in the rows kernels, softmax_row_kept in block_regs). The max is
// taken over 16-bit pairs (exact: the max of 16-bit values is one of them); the weights'
// arithmetic is the f32 kernels', (k - max) * log2_scale with the key k = x * key_sign,
// here formed by one FMA in the same rounding.
// A zero row weighs its keys against 0 (max_to_weigh_against) and writes zeros.
template <typename T>
struct RawPairKeys {
    using Pair = typename Pair16<T>::type;
    ScaleMap sm;
    Pair sign2;      // key_sign, twice
    uint32_t fill2;  // the value whose key is -inf (-inf * key_sign), twice: a masked column

    __device__ __forceinline__ static RawPairKeys of(float scale) {
        const ScaleMap sm = ScaleMap::of(scale);
        const Pair fill = Pair16<T>::splat(-CUDART_INF_F * sm.key_sign);
        uint32_t fill2;
        memcpy(&fill2, static_cast<const void*>(&fill), 4);
        return RawPairKeys{sm, Pair16<T>::splat(sm.key_sign), fill2};
    }

    // Running max of the keys: `pairs` over whole packs, `single` over packs across an edge.
    struct Max {
        Pair pairs;
        float single;
    };
    __device__ __forceinline__ static Max max_empty() {
        return Max{Pair16<T>::splat(-CUDART_INF_F), -CUDART_INF_F};
    }

    // Folds the valid columns of the pack at column `col` into `m`.
    template <int PACK>
    __device__ __forceinline__ void fold_max(const RawPack<T, PACK>& r, int32_t col, const ShortWindow& w,
                                             Max& m) const {
        if (col >= w.start && col + PACK <= w.end) {
#pragma unroll
            for (int k = 0; k < PACK / 2; ++k)
                m.pairs = Pair16<T>::max_nan(m.pairs, Pair16<T>::mul(r.template pair_at<Pair>(k), sign2));
        } else if (pack_overlaps<PACK>(col, w.start, w.end)) {
            const PackCut cut = pack_cut<PACK>(col, w.start, w.end);
#pragma unroll
            for (int j = 0; j < PACK; ++j)
                if (cut.has(j)) m.single = max_nan(m.single, sm.key(r.f32_at(j)));
        }
    }
    __device__ __forceinline__ static float max_of(const Max& m) {
        return max_nan(m.single, max_nan(Pair16<T>::low(m.pairs), Pair16<T>::high(m.pairs)));
    }

    // exp(s - s_max) of a valid column holding v: PLAIN for the usual scale (no test per
    // column: see weigh_keys), else ScaleMap::weight. `max_key` must not be -inf (a zero
    // row weighs against 0 instead, see below).
    template <bool PLAIN>
    __device__ __forceinline__ float weight(float v, float max_key) const {
        if constexpr (PLAIN) {
            return fast_exp2(fmaf(v, sm.key_sign, -max_key) * sm.log2_scale);
        } else {
            return sm.weight(sm.key(v), max_key);
        }
    }

    // The weights of every column of a pack, and their sum.
    template <bool PLAIN, int PACK>
    __device__ __forceinline__ float whole_pack_weights(const RawPack<T, PACK>& r, float max_key,
                                                        float (&weights)[PACK]) const {
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < PACK; ++j) {
            weights[j] = weight<PLAIN>(r.f32_at(j), max_key);
            sum += weights[j];
        }
        return sum;
    }
    template <bool PLAIN, int PACK>
    __device__ __forceinline__ float whole_pack_sum(const RawPack<T, PACK>& r, float max_key) const {
        float weights[PACK];
        return whole_pack_weights<PLAIN>(r, max_key, weights);
    }

    // The weights of the valid columns of the pack at `col` (+0 in the others), and their sum.
    template <bool PLAIN, int PACK>
    __device__ __forceinline__ float pack_weights(const RawPack<T, PACK>& r, int32_t col, const ShortWindow& w,
                                                  float max_key, float (&weights)[PACK]) const {
        if (col >= w.start && col + PACK <= w.end) return whole_pack_weights<PLAIN>(r, max_key, weights);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < PACK; ++j) weights[j] = 0.f;
        if (pack_overlaps<PACK>(col, w.start, w.end)) {
            const PackCut cut = pack_cut<PACK>(col, w.start, w.end);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                if (cut.has(j)) {
                    weights[j] = weight<PLAIN>(r.f32_at(j), max_key);
                    sum += weights[j];
                }
            }
        }
        return sum;
    }

    // The sum of the weights of the valid columns of the pack at `col`.
    template <bool PLAIN, int PACK>
    __device__ __forceinline__ float pack_sum(const RawPack<T, PACK>& r, int32_t col, const ShortWindow& w,
                                              float max_key) const {
        float weights[PACK];
        return pack_weights<PLAIN>(r, col, w, max_key, weights);
    }

    // The sum of the weights of a thread's PACKS packs (`column(i)`: pack i's column). An
    // unusual scale goes one pack at a time, picked without indexing registers, so that
    // its cold path costs the kernel no registers.
    template <int PACK, int PACKS, typename Column>
    __device__ __forceinline__ float sum(const RawPack<T, PACK> (&raw)[PACKS], Column column, const ShortWindow& w,
                                         float max_key) const {
        float total = 0.f;
        if (sm.plain()) {
#pragma unroll
            for (int i = 0; i < PACKS; ++i) total += pack_sum<true>(raw[i], column(i), w, max_key);
        } else {
#pragma unroll 1
            for (int i = 0; i < PACKS; ++i) total += pack_sum<false>(pick(raw, i), column(i), w, max_key);
        }
        return total;
    }

    // Writes a thread's PACKS packs of a row at `out` (nothing outside the row's own
    // columns `own`): weight * inv_sum inside the window, zeros outside. Marks `raw` as
    // rewritten first (forget_values; no instruction), so it is for the row's last use.
    template <int PACK, int PACKS, typename Column>
    __device__ __forceinline__ void store(T* out, RawPack<T, PACK> (&raw)[PACKS], Column column, ShortWindow own,
                                          const ShortWindow& w, float max_key, float inv_sum) const {
        // Left alone, the compiler keeps the first pass's weights alive for the second
        // (twice the registers this layout exists to save): make it read the pairs again.
#pragma unroll
        for (int i = 0; i < PACKS; ++i) forget_values(raw[i]);
        if (sm.plain()) {
#pragma unroll
            for (int i = 0; i < PACKS; ++i) {
                if (column(i) >= own.end) break;
                store_window<T, PACK>(out, column(i), own, w.start, w.end,
                                      [&](int j) { return weight<true>(raw[i].f32_at(j), max_key) * inv_sum; });
            }
        } else {
#pragma unroll 1
            for (int i = 0; i < PACKS; ++i) {
                if (column(i) >= own.end) break;
                const RawPack<T, PACK> r = pick(raw, i);
                store_window<T, PACK>(out, column(i), own, w.start, w.end,
                                      [&](int j) { return weight<false>(r.f32_at(j), max_key) * inv_sum; });
            }
        }
    }

    // The key a row's weights are weighed against (max_to_weigh_against) from the max of a
    // thread's PACKS packs, combined across the row's threads by reduce_max; `zero_row` says
    // whether the row had no finite or +inf key (every valid key -inf, or none valid).
    template <int PACK, int PACKS, typename Column, typename ReduceMax>
    __device__ __forceinline__ float row_max_key(const RawPack<T, PACK> (&raw)[PACKS], Column column,
                                                 const ShortWindow& w, ReduceMax reduce_max, bool& zero_row) const {
        Max m = max_empty();
#pragma unroll
        for (int i = 0; i < PACKS; ++i) fold_max(raw[i], column(i), w, m);
        const float row_max = reduce_max(max_of(m));
        zero_row = row_max == -CUDART_INF_F;
        return max_to_weigh_against(row_max);
    }

    // A row from a thread's PACKS packs: their max and weights, combined across the row's
    // threads by reduce_max and reduce_sum, then written at `out` if `write` (threads with
    // no row still take part in the reductions).
    template <int PACK, int PACKS, typename Column, typename ReduceMax, typename ReduceSum>
    __device__ __forceinline__ void softmax_row(T* out, RawPack<T, PACK> (&raw)[PACKS], Column column, ShortWindow own,
                                                const ShortWindow& w, bool write, ReduceMax reduce_max,
                                                ReduceSum reduce_sum) const {
        bool zero_row;
        const float max_key = row_max_key(raw, column, w, reduce_max, zero_row);
        const float total = reduce_sum(sum(raw, column, w, max_key));
        const float inv_sum = zero_row ? 0.f : 1.f / total;
        if (write) store(out, raw, column, own, w, max_key, inv_sum);
    }

    // pack_sum at the usual scale, the weights kept in slot i of `cache` where the pack
    // overlaps the window (the store reads back no other).
    template <int PACK, int PACKS, int STRIDE>
    __device__ __forceinline__ float kept_pack_sum(const RawPack<T, PACK>& r, int32_t col, const ShortWindow& w,
                                                   float max_key, const WeightCache<PACK, PACKS, STRIDE>& cache,
                                                   int i) const {
        float weights[PACK];
        const float sum = pack_weights<true>(r, col, w, max_key, weights);
        if (pack_overlaps<PACK>(col, w.start, w.end)) cache.put(i, weights);
        return sum;
    }

    // softmax_row at the usual scale for the block kernels granted a weight cache
    // (block_regs_forward_16bit): the sum keeps each weight in `cache`, and the store
    // multiplies those by 1 / sum where it would compute them again. The same weights summed
    // in the same order: the same results, a NaN sum's included (the store still writes
    // +0.0 in every masked column).
    template <int PACK, int PACKS, int STRIDE, typename Column, typename ReduceMax, typename ReduceSum>
    __device__ __forceinline__ void softmax_row_kept(T* out, const RawPack<T, PACK> (&raw)[PACKS], Column column,
                                                     ShortWindow own, const ShortWindow& w, ReduceMax reduce_max,
                                                     ReduceSum reduce_sum,
                                                     const WeightCache<PACK, PACKS, STRIDE>& cache) const {
        bool zero_row;
        const float max_key = row_max_key(raw, column, w, reduce_max, zero_row);
        float total = 0.f;
#pragma unroll
        for (int i = 0; i < PACKS; ++i) total += kept_pack_sum(raw[i], column(i), w, max_key, cache, i);
        total = reduce_sum(total);
        const float inv_sum = zero_row ? 0.f : 1.f / total;
        // store_window's three cases, each reading its slot where it needs it (through
        // store_window, a lambda over slots read up front made p8x8 spill: PERFORMANCE.md
        // v23). Keep the two in step.
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            const int32_t col = column(i);
            if (col >= own.end) break;
            float values[PACK];
            if (col >= w.start && col + PACK <= w.end) {
                cache.get(i, values);
#pragma unroll
                for (int j = 0; j < PACK; ++j) values[j] *= inv_sum;
            } else if (!pack_overlaps<PACK>(col, w.start, w.end)) {
#pragma unroll
                for (int j = 0; j < PACK; ++j) values[j] = 0.f;
            } else {
                cache.get(i, values);
                const PackCut cut = pack_cut<PACK>(col, w.start, w.end);
#pragma unroll
                for (int j = 0; j < PACK; ++j) values[j] = cut.has(j) ? values[j] * inv_sum : 0.f;
            }
            store_values<T, PACK>(out, col, own, values);
        }
    }

    // softmax_row for the rows kernels, whose warps hold packs inside, across and outside
    // their rows' windows at once (each group of lanes its own row): softmax_row's
    // three-way test of each pack in each pass made such a warp run each kind's code in
    // turn. Here, for the usual scale, every pack takes the same code: one warp-wide vote
    // a pack index, and the only other test is the store's, against the row's own columns.
    // - A pack index no lane's window reaches (`live`) is skipped by the whole warp, and
    //   written as zeros.
    // - In the others, a pack not wholly inside its window first gets the fill (a key of
    //   -inf) in its columns outside (fill_outside_pairs: no branch inside); then the max
    //   takes its pairs, the sum its weights (a fill weighs ex2(-inf) = +0) and the store
    //   writes weight * inv_sum (+0.0 in a masked column), with no test of the window.
    // - CACHED (the launch gave the block room for `cache`: rows_forward_16bit), the sum
    //   keeps the weights in `cache` and the store multiplies those; else the store
    //   computes each weight again.
    // A row whose sum is NaN (a NaN or +inf key: every weight NaN, the fill's too) writes
    // through store, which tests the window, so that its masked columns still get +0.0; so
    // does an unusual scale (softmax_row). Every lane of the warp must call it (the vote).
    template <bool CACHED, int PACK, int PACKS, typename Column, typename ReduceMax, typename ReduceSum>
    __device__ __forceinline__ void softmax_row_filled(T* out, RawPack<T, PACK> (&raw)[PACKS], Column column,
                                                       ShortWindow own, const ShortWindow& w, bool write,
                                                       ReduceMax reduce_max, ReduceSum reduce_sum,
                                                       const RowsWeightCache<PACK, PACKS>& cache) const {
        if (!sm.plain())
            softmax_row(out, raw, column, own, w, write, reduce_max, reduce_sum);
        else
            filled_row<CACHED>(out, raw, column, own, w, write, reduce_max, reduce_sum, cache);
    }

    // softmax_row_filled's usual-scale path, its weights kept in `cache` if CACHED.
    template <bool CACHED, int PACK, int PACKS, typename Column, typename ReduceMax, typename ReduceSum>
    __device__ __forceinline__ void filled_row(T* out, RawPack<T, PACK> (&raw)[PACKS], Column column,
                                               ShortWindow own, const ShortWindow& w, bool write,
                                               ReduceMax reduce_max, ReduceSum reduce_sum,
                                               const RowsWeightCache<PACK, PACKS>& cache) const {
        bool live[PACKS];
        Pair m = Pair16<T>::splat(-CUDART_INF_F);
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            live[i] = __any_sync(FULL_MASK, pack_overlaps<PACK>(column(i), w.start, w.end));
            if (!live[i]) continue;
            fill_outside_pairs<T, PACK>(raw[i], column(i), w.start, w.end, fill2);
#pragma unroll
            for (int k = 0; k < PACK / 2; ++k)
                m = Pair16<T>::max_nan(m, Pair16<T>::mul(raw[i].template pair_at<Pair>(k), sign2));
        }
        const float row_max = reduce_max(max_nan(Pair16<T>::low(m), Pair16<T>::high(m)));
        const bool zero_row = row_max == -CUDART_INF_F;
        const float max_key = max_to_weigh_against(row_max);
        float total = 0.f;
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (live[i]) {
                float weights[PACK];
                total += whole_pack_weights<true>(raw[i], max_key, weights);
                if constexpr (CACHED) cache.put(i, weights);
            }
        }
        total = reduce_sum(total);
        if (!write) return;
        if (total != total) {
            store(out, raw, column, own, w, max_key, 1.f / total);
            return;
        }
        const float inv_sum = zero_row ? 0.f : 1.f / total;
        if constexpr (!CACHED) {  // (the cached store reads no pairs)
#pragma unroll
            for (int i = 0; i < PACKS; ++i) forget_values(raw[i]);  // see store
        }
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (column(i) >= own.end) break;
            // (Two calls: with one after the branch, ptxas moved the zeros in on every path,
            // 652 instructions a batch for rows_g32_p8x4_f16 against 634, v20.)
            float values[PACK] = {};
            if (live[i]) {
                if constexpr (CACHED) {
                    cache.get(i, values);
#pragma unroll
                    for (int j = 0; j < PACK; ++j) values[j] *= inv_sum;
                } else {
#pragma unroll
                    for (int j = 0; j < PACK; ++j) values[j] = weight<true>(raw[i].f32_at(j), max_key) * inv_sum;
                }
                store_values<T, PACK>(out, column(i), own, values);
            } else {
                store_values<T, PACK>(out, column(i), own, values);
            }
        }
    }
};

// The rows kernels' raw-pair form (rows_forward for 16-bit vector packs): the same loop,
// twice the rows at once for the same registers. The whole loop is compiled twice, with and
// without the weight cache, and the launch's grant picks one (a test of the grant in each
// row's passes kept ptxas's predicates in registers: 30 more instructions a batch).
template <bool CACHED, typename T, int PACK, int PACKS, int GROUP, Ahead AHEAD>
__device__ __forceinline__ void rows_forward_16bit_loop(const T* x, T* y, const MaskParams& p,
                                                        const RowsWeightCache<PACK, PACKS>& cache) {
    constexpr int R = rows_at_once<PACK * PACKS / 2>();  // registers of PACK * PACKS / 2 floats
    const RawPairKeys<T> keys = RawPairKeys<T>::of(p.scale);
    const int32_t k_len = int32_t(p.k_len);
    const T* none = nullptr;  // a second input to prefetch: the forward has one
    for_each_group_rows<AHEAD, GROUP, R>(p, PackShift<T, PACK>::of(x, p), x, none, [&](const GroupRow (&rows)[R]) {
        // Every load of the R rows in flight, then the arithmetic.
        RawPack<T, PACK> raw[R][PACKS];
        fetch_group_rows<T, PACK, PACKS, GROUP, R>(x, rows, raw);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const ShortWindow& w = rows[r].window;
            const auto column = [&](int i) { return lane_pack_column<GROUP, PACK>(i, rows[r].member); };
            const ShortWindow own{rows[r].lead, rows[r].lead + k_len};
            keys.template softmax_row_filled<CACHED>(y + rows[r].offset, raw[r], column, own, w, rows[r].active,
                                                     group_max<GROUP>, group_sum<GROUP>, cache);
        }
    });
}

template <typename T, int PACK, int PACKS, int GROUP, Ahead AHEAD = Ahead::none>
__device__ __forceinline__ void rows_forward_16bit(const T* x, T* y, const MaskParams& p) {
    static_assert(sizeof(T) == 2 && PACK % 2 == 0, "16-bit vector packs only");
    const RowsWeightCache<PACK, PACKS> cache = rows_weight_cache<PACK, PACKS>();
    if (cache.granted)
        rows_forward_16bit_loop<true, T, PACK, PACKS, GROUP, AHEAD>(x, y, p, cache);
    else
        rows_forward_16bit_loop<false, T, PACK, PACKS, GROUP, AHEAD>(x, y, p, cache);
}

// One block per row, the row's packs across the block as raw pairs (thread t holds packs
// t, t + blockDim, ...: PACKS of them, twice the columns of block_regs_forward's f32 keys).
// Dynamic shared memory: 32 float2 of scratch, then, if the launch grants it, the block's
// weight cache (BlockWeightCache: 128 bytes a thread for p8x4). The whole loop is compiled
// twice, with the cache (usual scale, granted) and without, as rows_forward_16bit's.
template <bool CACHED, typename T, int PACK, int PACKS, bool PREFETCH>
__device__ __forceinline__ void block_regs_forward_16bit_loop(const T* x, T* y, const MaskParams& p,
                                                              const RawPairKeys<T>& keys,
                                                              const BlockWeightCache<PACK, PACKS>& cache) {
    float* scratch = dynamic_shared<float>();
    const T* none = nullptr;  // a second input to prefetch: the forward has one
    for_each_block_row<PREFETCH>(p, PackShift<T, PACK>::of(x, p), x, none, [&](const BlockRow& row) {
        const ShortWindow& w = row.window;
        const auto column = [](int i) { return block_pack_column<PACK>(i); };
        RawPack<T, PACK> raw[PACKS];
        fetch_block_row<T, PACK, PACKS>(x + row.offset, w, raw);
        const auto reduce_max = [&](float v) { return block_max(v, scratch); };
        const auto reduce_sum = [&](float v) { return block_sum(v, scratch); };
        if constexpr (CACHED)
            keys.softmax_row_kept(y + row.offset, raw, column, row.own, w, reduce_max, reduce_sum, cache);
        else
            keys.softmax_row(y + row.offset, raw, column, row.own, w, true, reduce_max, reduce_sum);
    });
}

template <typename T, int PACK, int PACKS, bool PREFETCH = false>
__device__ __forceinline__ void block_regs_forward_16bit(const T* x, T* y, const MaskParams& p) {
    static_assert(sizeof(T) == 2 && PACK % 2 == 0, "16-bit vector packs only");
    const RawPairKeys<T> keys = RawPairKeys<T>::of(p.scale);
    const BlockWeightCache<PACK, PACKS> cache = block_weight_cache<PACK, PACKS>();
    if (cache.granted && keys.sm.plain())
        block_regs_forward_16bit_loop<true, T, PACK, PACKS, PREFETCH>(x, y, p, keys, cache);
    else
        block_regs_forward_16bit_loop<false, T, PACK, PACKS, PREFETCH>(x, y, p, keys, cache);
}

// ---------------------------------------------------------------- rows in registers

// (16-bit vector packs take rows_forward_16bit instead, with R twice as large; the
// rows_keys kernels, which the planner gives 16-bit rows of up to 2 packs a lane, take
// this form for them.)
template <typename T, int PACK, int PACKS, int GROUP, Ahead AHEAD = Ahead::none>
__device__ __forceinline__ void rows_forward(const T* x, T* y, const MaskParams& p) {
    constexpr int R = rows_at_once<PACK * PACKS>();
    const ScaleMap sm = ScaleMap::of(p.scale);
    const T* none = nullptr;  // a second input to prefetch: the forward has one
    for_each_group_rows<AHEAD, GROUP, R>(p, PackShift<T, PACK>::of(x, p), x, none, [&](const GroupRow (&rows)[R]) {
        // Every load of the R rows in flight, then the arithmetic.
        RawPack<T, PACK> raw[R][PACKS];
        fetch_group_rows<T, PACK, PACKS, GROUP, R>(x, rows, raw);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const ShortWindow& w = rows[r].window;
            float keys[PACKS][PACK];
            float max_key = -CUDART_INF_F;
            const auto live = [&](int i) {
                return pack_overlaps<PACK>(lane_pack_column<GROUP, PACK>(i, rows[r].member), w.start, w.end);
            };
#pragma unroll
            for (int i = 0; i < PACKS; ++i) {
                decode_keys<T, PACK, select_edge<GROUP, PACKS>()>(
                    raw[r][i], lane_pack_column<GROUP, PACK>(i, rows[r].member), w.start, w.end, sm, keys[i]);
                if (live(i))
#pragma unroll
                    for (int j = 0; j < PACK; ++j) max_key = max_nan(max_key, keys[i][j]);
            }
            max_key = group_max<GROUP>(max_key);
            const bool zero_row = max_key == -CUDART_INF_F;
            const float sum = group_sum<GROUP>(weigh_keys(keys, max_key, sm, live));
            // (A lane's own row at GROUP 1, where the division is most of a row's arithmetic;
            // in the other shapes the faster reciprocal made ptxas spill.)
            const float inv_sum = zero_row ? 0.f : (GROUP == 1 ? reciprocal_of_sum(sum) : 1.f / sum);
            store_group_row<T, PACK, PACKS, GROUP>(y, rows[r], int32_t(p.k_len),
                                                   [&](int i, int j) { return keys[i][j] * inv_sum; });
        }
    });
}

// ---------------------------------------------------------------- one block per row

// The row in registers across the block: thread t holds packs t, t + blockDim, ... (PACKS
// of them), all fetched before any is used. One read, one write, two block reductions.
// Rows of at most 512 * PACK * PACKS columns: 32-bit columns. Dynamic shared memory: 32
// floats of scratch.
template <typename T, int PACK, int PACKS, bool PREFETCH = false>
__device__ __forceinline__ void block_regs_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    float* scratch = dynamic_shared<float>();
    const T* none = nullptr;  // a second input to prefetch: the forward has one
    for_each_block_row<PREFETCH>(p, PackShift<T, PACK>::of(x, p), x, none, [&](const BlockRow& row) {
        const ShortWindow& w = row.window;
        const auto column = [](int i) { return block_pack_column<PACK>(i); };
        RawPack<T, PACK> raw[PACKS];
        fetch_block_row<T, PACK, PACKS>(x + row.offset, w, raw);
        float keys[PACKS][PACK];
        float max_key = -CUDART_INF_F;
        const auto live = [&](int i) { return pack_overlaps<PACK>(column(i), w.start, w.end); };
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            decode_keys<T, PACK>(raw[i], column(i), w.start, w.end, sm, keys[i]);
            if (live(i))
#pragma unroll
                for (int j = 0; j < PACK; ++j) max_key = max_nan(max_key, keys[i][j]);
        }
        max_key = block_max(max_key, scratch);
        const bool zero_row = max_key == -CUDART_INF_F;
        const float sum = block_sum(weigh_keys(keys, max_key, sm, live), scratch);
        const float inv_sum = zero_row ? 0.f : 1.f / sum;

#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (column(i) >= row.own.end) break;
            store_window<T, PACK>(y + row.offset, column(i), row.own, w.start, w.end,
                                  [&](int j) { return keys[i][j] * inv_sum; });
        }
    });
}

// The keys of one thread's share (thread t of `step`) of the packs [first, last) of a row
// seen through its window `w` (for_window_packs), read under `policy` (none: the loads'
// default): whole(i, keys) gets a whole pack's keys, edge(i, keys) those of a pack across
// an edge of the window (masked columns -inf). The kernels that read a row's packs twice
// walk them alike in both passes; the cached ones walk their cache the same way.
template <typename T, int PACK, typename Whole, typename Edge>
__device__ __forceinline__ void for_pack_keys(const T* x, const RowWindow& w, int64_t first, int64_t last, uint32_t t,
                                              uint32_t step, const ScaleMap& sm, const L2Policy* policy, Whole whole,
                                              Edge edge) {
    for_window_packs<PACK, LOADS_IN_FLIGHT, RawPack<T, PACK>>(
        first, last, t, step, w.start, w.end,
        [&](int64_t i, RawPack<T, PACK>& raw) { fetch_whole<T, PACK>(x + i * PACK, raw, policy); },
        [&](int64_t i, const RawPack<T, PACK>& raw) {
            float keys[PACK];
            decode_whole_keys<T, PACK>(raw, sm, keys);
            whole(i, keys);
        },
        [&](int64_t i, RawPack<T, PACK>& raw) { fetch_window<T, PACK>(x, i * PACK, w.start, w.end, raw, policy); },
        [&](int64_t i, const RawPack<T, PACK>& raw) {
            float keys[PACK];
            decode_keys<T, PACK>(raw, i * PACK, w.start, w.end, sm, keys);
            edge(i, keys);
        });
}

// Keys cached in shared memory. Every phase takes thread t's share of the window's packs,
// first + t, + blockDim, ... (the fill by for_pack_keys, the write by write_cached),
// so within a row each thread touches only the slots it filled, and besides the
// reductions' barriers only one a row before the fill is needed (the packs change hands
// from row to row); whole packs skip the window's tests, and the row's packs outside the
// window are written as zeros, never read.
template <typename T, int PACK, bool PREFETCH = false>
__device__ __forceinline__ void block_cached_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(x, p);
    float* cache = dynamic_shared<float>();
    float* scratch = cache + packs_in<PACK>(shift.columns(p.k_len)) * PACK;
    const T* none = nullptr;  // a second input to prefetch: the forward has one
    for_each_grid_row<PREFETCH>(p, index, x, none, [&](int64_t row) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first_pack = w.start / PACK, end_pack = packs_in<PACK>(w.end);
        // Thread t's packs in every phase: first_pack + t, + blockDim, ... They change hands
        // from one row to the next with the window's start, so no slot is filled before
        // the last row's writes have read it.
        __syncthreads();

        float max_key = -CUDART_INF_F;
        const auto cache_keys = [&](int64_t i, const float (&keys)[PACK]) {
#pragma unroll
            for (int j = 0; j < PACK; ++j) max_key = max_nan(max_key, keys[j]);
            store_slot<PACK>(cache + i * PACK, keys);
        };
        for_pack_keys<T, PACK>(x + offset, w, first_pack, end_pack, threadIdx.x, blockDim.x, sm, nullptr, cache_keys,
                               cache_keys);
        max_key = block_max(max_key, scratch);
        const bool zero_row = max_key == -CUDART_INF_F;

        // The cache turns from keys into weights; a zero row's -inf keys weigh 0 (against 0),
        // so that no -inf is left to meet an inv_sum of 0 (-inf * 0 is NaN).
        const float weigh_against = max_to_weigh_against(max_key);
        float sum = 0.f;
        with_plain_scale(sm, [&](auto plain) {
            for (int64_t i = first_pack + threadIdx.x; i < end_pack; i += blockDim.x) {
                float weights[PACK];
                load_slot<PACK>(cache + i * PACK, weights);
#pragma unroll
                for (int j = 0; j < PACK; ++j) {
                    weights[j] = sm.weigh<decltype(plain)::value>(weights[j], weigh_against);
                    sum += weights[j];
                }
                store_slot<PACK>(cache + i * PACK, weights);
            }
        });
        sum = block_sum(sum, scratch);
        const float inv_sum = zero_row ? 0.f : 1.f / sum;

        // (zero_outside_window's share of [0, the row's packs) is [first_pack, end_pack).)
        write_cached<T, PACK, CACHED_PACKS_AT_ONCE>(y + offset, f, p, 0, packs_in<PACK>(f.own(p).end),
                                                    [&](int64_t i, float (&out)[PACK]) {
                                                        load_slot<PACK>(cache + i * PACK, out);
#pragma unroll
                                                        for (int j = 0; j < PACK; ++j) out[j] *= inv_sum;
                                                    });
    });
}

// The two passes of the kernels that read rows twice (block_stream, split, the streaming
// cluster), each over one thread's share of a row's packs (thread t of `step`: see
// for_window_packs) seen from frame `f` (x and y at the row's frame), read under
// `policy`. PLAIN: see ScaleMap::weigh.

// Pass 1: the statistics of the valid keys of the packs [first, last) (those that reach
// into the window).
template <bool PLAIN, typename T, int PACK>
__device__ __forceinline__ SoftmaxStats stream_stats(const T* x, const RowWindow& w, int64_t first, int64_t last,
                                                     uint32_t t, uint32_t step, const ScaleMap& sm,
                                                     const L2Policy* policy) {
    SoftmaxStats st = stats_empty();
    const auto add = [&](int64_t, const float (&keys)[PACK]) { stats_add<PLAIN>(st, keys, sm); };
    for_pack_keys<T, PACK>(x, w, first, last, t, step, sm, policy, add, add);
    return st;
}

// Pass 2: the probabilities of the packs [begin, end) of the row's own columns, zeros
// outside the window (written, not read).
template <bool PLAIN, typename T, int PACK>
__device__ __forceinline__ void stream_write(const T* x, T* y, const RowFrame& f, const MaskParams& p,
                                             const RowSoftmax& r, int64_t begin, int64_t end, uint32_t t,
                                             uint32_t step, const ScaleMap& sm, const L2Policy* policy) {
    const RowWindow& w = f.window;
    const WindowShare share = zero_outside_window<T, PACK>(y, f, p, begin, end, t, step);
    for_pack_keys<T, PACK>(
        x, w, share.first, share.last, t, step, sm, policy,
        [&](int64_t i, const float (&keys)[PACK]) {
            float out[PACK];
#pragma unroll
            for (int j = 0; j < PACK; ++j) out[j] = probability<PLAIN>(r, keys[j], sm);
            store_whole<T, PACK>(y + i * PACK, out);  // a whole pack of the window: within own
        },
        [&](int64_t i, const float (&keys)[PACK]) {
            store_window<T, PACK>(y, i * PACK, f.own(p), w.start, w.end,
                                  [&](int j) { return probability<PLAIN>(r, keys[j], sm); });
        });
}

// Any row length: online statistics over the valid scores, then a second read to write
// (the two reads with the L2 priorities of RereadPolicy: work.cuh).
template <typename T, int PACK>
__device__ __forceinline__ void block_stream_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(x, p);
    const RereadPolicy reread = RereadPolicy::of(p);
    float2* scratch = dynamic_shared<float2>();
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first_pack = w.start / PACK, end_pack = packs_in<PACK>(w.end);
        const L2Policy first_read = reread.first_read();
        const L2Policy second_read = reread.second_read();

        with_plain_scale(sm, [&](auto plain) {
            constexpr bool PLAIN = decltype(plain)::value;
            const SoftmaxStats st = stream_stats<PLAIN, T, PACK>(x + offset, w, first_pack, end_pack, threadIdx.x,
                                                                 blockDim.x, sm, &first_read);
            const RowSoftmax r = row_softmax(block_stats_merge(st, scratch, sm));
            stream_write<PLAIN, T, PACK>(x + offset, y + offset, f, p, r, 0, packs_in<PACK>(f.own(p).end), threadIdx.x,
                                         blockDim.x, sm, &second_read);
        });
    }
}

// ---------------------------------------------------------------- a row split over the grid
//
// For rows too long for a block's registers or shared memory when there are too few of
// them (or too uneven) to keep every block busy with a row each: the rows' chunks are the
// grid's work items (SplitItems, work.cuh). Two launches on one stream:
//   masked_softmax_fwd_split_stats_p<P>_<dtype>  each item's (max key, sum) -> partials
//   masked_softmax_fwd_split_write_p<P>_<dtype>  each item merges its row's partials (every
//       item of a row the same way, so all agree), reads its chunk again and writes it.
// partials: rows * chunks float2, owned by the launcher. Dynamic shared memory: 32 float2
// of scratch.
template <typename T, int PACK>
__device__ __forceinline__ void split_stats_forward(const T* x, float2* partials, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(x, p);
    const SplitItems split = SplitItems::of<PACK>(shift.columns(p.k_len), p.rows);
    const L2Policy first_read = RereadPolicy::of(p).first_read();
    float2* scratch = dynamic_shared<float2>();
    for (int64_t item = blockIdx.x; item < split.items; item += gridDim.x) {
        const SplitChunk c = SplitChunk::of(p, shift, index, split, item);
        const RowWindow& w = c.frame.window;
        const int64_t offset = c.frame.offset;
        SoftmaxStats st = stats_empty();
        with_plain_scale(sm, [&](auto plain) {
            st = stream_stats<decltype(plain)::value, T, PACK>(x + offset, w, c.first, c.last, threadIdx.x,
                                                               blockDim.x, sm, &first_read);
        });
        st = block_stats_merge(st, scratch, sm);
        if (threadIdx.x == 0) partials[item] = make_float2(st.max_key, st.sum);
    }
}

template <typename T, int PACK>
__device__ __forceinline__ void split_write_forward(const T* x, T* y, const float2* partials, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(x, p);
    const SplitItems split = SplitItems::of<PACK>(shift.columns(p.k_len), p.rows);
    const L2Policy second_read = RereadPolicy::of(p).second_read();
    float2* scratch = dynamic_shared<float2>();
    for (int64_t k = blockIdx.x; k < split.items; k += gridDim.x) {
        const SplitChunk c = SplitChunk::of(p, shift, index, split, split_item_backwards(split, k));
        const RowFrame& f = c.frame;
        const int64_t offset = f.offset;
        // The row's statistics, merged alike by every item of the row.
        SoftmaxStats st = stats_empty();
        for (int64_t i = threadIdx.x; i < split.chunks; i += blockDim.x) {
            const float2 part = partials[c.row * split.chunks + i];
            st = stats_merge(st, SoftmaxStats{part.x, part.y}, sm);
        }
        const RowSoftmax r = row_softmax(block_stats_merge(st, scratch, sm));
        with_plain_scale(sm, [&](auto plain) {
            stream_write<decltype(plain)::value, T, PACK>(x + offset, y + offset, f, p, r, c.begin, c.end, threadIdx.x,
                                                          blockDim.x, sm, &second_read);
        });
    }
}

// ---------------------------------------------------------------- a cluster per row

#if MASKED_SOFTMAX_HAS_CLUSTERS
// Each block of a cluster owns a chunk of every row its cluster handles (ClusterChunk,
// cluster.cuh). Pass 1 gathers the chunk's statistics (caching its keys in
// shared memory if CACHED); the blocks publish them in shared memory, sync the cluster, and
// every block merges all of them in the same order, so all agree; a second cluster sync
// keeps the published statistics alive until every block has read them. Pass 2 writes the
// chunk. Dynamic shared memory: ClusterShared.
template <typename T, int PACK, bool CACHED>
__device__ __forceinline__ void cluster_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(x, p);
    const ClusterChunk chunk = ClusterChunk::of<PACK>(shift.columns(p.k_len));
    const RereadPolicy reread = RereadPolicy::of(p);
    const ClusterShared shared = ClusterShared::of();
    float2* published = shared.published;
    float2* scratch = shared.scratch;
    float* cache = shared.cache;

    for (int64_t row = cluster_id(); row < p.rows; row += cluster_count()) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first = max(chunk.begin, w.start / PACK);
        const int64_t last = min(chunk.end, packs_in<PACK>(w.end));
        // The cached kernel reads each pack once; the streaming one twice (RereadPolicy).
        const L2Policy first_read = reread.first_read();

        with_plain_scale(sm, [&](auto plain) {
            constexpr bool PLAIN = decltype(plain)::value;
            SoftmaxStats st = stats_empty();
            if (CACHED) {
                // Thread t caches the packs it will write, first + t, + blockDim, ..., and
                // they change hands from one row to the next (see block_cached_forward).
                __syncthreads();
                const auto cache_keys = [&](int64_t i, const float (&keys)[PACK]) {
                    stats_add<PLAIN>(st, keys, sm);
                    store_slot<PACK>(cache + (i - chunk.begin) * PACK, keys);
                };
                for_pack_keys<T, PACK>(x + offset, w, first, last, threadIdx.x, blockDim.x, sm, nullptr, cache_keys,
                                       cache_keys);
            } else {
                st = stream_stats<PLAIN, T, PACK>(x + offset, w, first, last, threadIdx.x, blockDim.x, sm,
                                                  &first_read);
            }
            st = block_stats_merge(st, scratch, sm);
            if (threadIdx.x == 0) *published = make_float2(st.max_key, st.sum);
            cluster_sync();
            SoftmaxStats row_stats = stats_empty();
            for (unsigned r = 0; r < chunk.blocks; ++r) {
                const float2 part = *cluster_map(published, r);
                row_stats = stats_merge(row_stats, SoftmaxStats{part.x, part.y}, sm);
            }
            cluster_sync();
            const RowSoftmax r = row_softmax(row_stats);

            if (CACHED) {
                // Thread t reads back only the slots it filled (the same walk over the same
                // packs: zero_outside_window's share is [first, last)).
                write_cached<T, PACK, CACHED_PACKS_AT_ONCE>(
                    y + offset, f, p, chunk.begin, chunk.end, [&](int64_t i, float (&out)[PACK]) {
                        load_slot<PACK>(cache + (i - chunk.begin) * PACK, out);
#pragma unroll
                        for (int j = 0; j < PACK; ++j) out[j] = probability<PLAIN>(r, out[j], sm);
                    });
            } else {
                const L2Policy second_read = reread.second_read();
                stream_write<PLAIN, T, PACK>(x + offset, y + offset, f, p, r, chunk.begin, chunk.end, threadIdx.x,
                                             blockDim.x, sm, &second_read);
            }
        });
    }
}
#endif

// ---------------------------------------------------------------- instantiations
// The Rust planner (src/plan.rs, KernelKind::all) lists exactly these names.

// Rows kernels run 256-thread blocks (src/plan.rs, ROWS_BLOCK); those holding 16 floats or
// fewer of a row per lane (32 columns as 16-bit raw pairs) are held to 64 registers, 4
// blocks per multiprocessor.
#define ROWS_MIN_BLOCKS(T, P, N) ((P) * (N) <= (RAW_PAIRS(T, P) ? 32 : 16) ? 4 : 1)
// (ROWS_INSTANCE: TAG empty, or `prefetch_` for the instances fetching each batch's
// lengths a batch ahead, AHEAD; see the end of this file.)
#define ROWS_INSTANCE(SUFFIX, T, G, P, N, TAG, AHEAD)                                                    \
    extern "C" __global__ void __launch_bounds__(ROWS_THREADS, ROWS_MIN_BLOCKS(T, P, N))                 \
        masked_softmax_fwd_rows_g##G##_p##P##x##N##_##TAG##SUFFIX(const T* x, T* y, MaskParams p) {      \
        if constexpr (RAW_PAIRS(T, P))                                                                  \
            rows_forward_16bit<T, P, N, G, AHEAD>(x, y, p);                                             \
        else                                                                                            \
            rows_forward<T, P, N, G, AHEAD>(x, y, p);                                                   \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_rows_g##G##_p##P##x##N##_##TAG##SUFFIX)
#define ROWS_KERNEL(SUFFIX, T, G, P, N) ROWS_INSTANCE(SUFFIX, T, G, P, N, , Ahead::none)

// The 16-bit rows kernels with f32 keys (rows_forward) rather than raw pairs: one exp an
// element where raw pairs without the weight cache take two, half the rows in flight. The
// planner takes them for rows of up to 2 packs a lane (src/plan.rs, KernelKind::RowsKeys);
// the wider ones are the benchmark's variants. Register budget as the f32 kernels'.
#define ROWS_KEYS_INSTANCE(SUFFIX, T, G, P, N, TAG, AHEAD)                                               \
    extern "C" __global__ void __launch_bounds__(ROWS_THREADS, (P) * (N) <= 16 ? 4 : 1)                  \
        masked_softmax_fwd_rows_keys_g##G##_p##P##x##N##_##TAG##SUFFIX(const T* x, T* y, MaskParams p) { \
        rows_forward<T, P, N, G, AHEAD>(x, y, p);                                                       \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_rows_keys_g##G##_p##P##x##N##_##TAG##SUFFIX)
#define ROWS_KEYS_KERNEL(SUFFIX, T, G, P, N) ROWS_KEYS_INSTANCE(SUFFIX, T, G, P, N, , Ahead::none)

// Block kernels keep 16 floats of the row per thread in registers, in blocks of up to 512
// threads (see BLOCK_REGS_MIN_BLOCKS for their register budget).
#define BLOCK_REGS_KERNEL(SUFFIX, T, P, N)                                                             \
    extern "C" __global__ void __launch_bounds__(512, BLOCK_REGS_MIN_BLOCKS(T, P))                     \
        masked_softmax_fwd_block_regs_p##P##x##N##_##SUFFIX(const T* x, T* y, MaskParams p) {          \
        block_regs_forward<T, P, N>(x, y, p);                                                          \
    }                                                                                                  \
    REGISTER_KERNEL(masked_softmax_fwd_block_regs_p##P##x##N##_##SUFFIX)

// The 16-bit kernels keeping raw pairs: 32 columns per thread (p8x4) held to 56 registers
// (BLOCK_REGS_16BIT_BOUNDS: 9 blocks of 128 threads a multiprocessor, at 4096 keys; given
// (512, 2), 64 at most, ptxas took 62-64 once the weight cache's loop was compiled beside
// the other, where each alone takes 54-56 with no spill); and 64 columns per thread (the
// benchmark's variant, src/plan.rs BLOCK_REGS_16BIT_WIDE_PACKS) in blocks of up to 256
// threads, 3 of them a multiprocessor (85 registers at most: ptxas takes 79-80, no spills;
// left free it takes 95, at 4 it spills): half the threads a row, so more rows resident.
// src/plan.rs (block_regs_16bit_registers) counts these registers for the weight cache.
// (`__maxnreg__` takes nvcc 12.4 or newer; the build pins 13.0.)
#define BLOCK_REGS_16BIT_BOUNDS __maxnreg__(56)
#define BLOCK_REGS_16BIT_KERNEL(SUFFIX, T, P, N, BOUNDS)                                               \
    extern "C" __global__ void BOUNDS masked_softmax_fwd_block_regs_p##P##x##N##_##SUFFIX(const T* x, T* y, \
                                                                                      MaskParams p) {  \
        block_regs_forward_16bit<T, P, N>(x, y, p);                                                    \
    }                                                                                                  \
    REGISTER_KERNEL(masked_softmax_fwd_block_regs_p##P##x##N##_##SUFFIX)

// The looping block kernels run at most 512 threads per block (src/plan.rs, LOOP_BLOCK);
// those that stream a row take STREAM_MIN_BLOCKS (work.cuh), the forward's block_cached
// CACHED_MIN_BLOCKS: 3 blocks of 512 threads (40 registers) for f32 packs of 4, 4 (32)
// for single elements, 2 (64) for 16-bit packs of 8. A block_cached block holds its row
// in shared memory, about 8 packs a thread (src/plan.rs), so the f32 and single-element
// kernels run out of registers before shared memory: at 49 registers (56 allocated) the
// f32 forward kept 4 rows of 8192 keys a multiprocessor where shared memory holds 6. Left
// free (launch bounds (512)), v18's loops took up to 72.
#define CACHED_MIN_BLOCKS(T, P) ((P) == 1 ? 4 : sizeof(T) == 4 ? 3 : 2)
#define BLOCK_KERNELS(SUFFIX, T, P, N)                                                                   \
    BLOCK_REGS_KERNEL(SUFFIX, T, P, N)                                                                  \
    extern "C" __global__ void __launch_bounds__(512, CACHED_MIN_BLOCKS(T, P))                          \
        masked_softmax_fwd_block_cached_p##P##_##SUFFIX(const T* x, T* y, MaskParams p) {               \
        block_cached_forward<T, P>(x, y, p);                                                            \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_block_cached_p##P##_##SUFFIX)                                    \
    extern "C" __global__ void __launch_bounds__(512, STREAM_MIN_BLOCKS(P))                             \
        masked_softmax_fwd_block_stream_p##P##_##SUFFIX(const T* x, T* y, MaskParams p) {               \
        block_stream_forward<T, P>(x, y, p);                                                            \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_block_stream_p##P##_##SUFFIX)                                    \
    extern "C" __global__ void __launch_bounds__(512, SPLIT_MIN_BLOCKS)                                 \
        masked_softmax_fwd_split_stats_p##P##_##SUFFIX(const T* x, float2* partials, MaskParams p) {    \
        split_stats_forward<T, P>(x, partials, p);                                                      \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_split_stats_p##P##_##SUFFIX)                                     \
    extern "C" __global__ void __launch_bounds__(512, SPLIT_MIN_BLOCKS)                                 \
        masked_softmax_fwd_split_write_p##P##_##SUFFIX(                                                 \
        const T* x, T* y, const float2* partials, MaskParams p) {                                       \
        split_write_forward<T, P>(x, y, partials, p);                                                   \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_split_write_p##P##_##SUFFIX)

#if MASKED_SOFTMAX_HAS_CLUSTERS
// BOUNDS: __launch_bounds__'s arguments: 2 blocks a multiprocessor (64 registers, as
// the planner counts the clusters: src/plan.rs, CLUSTER_KERNEL_REGISTERS) for the cached
// ones, STREAM_MIN_BLOCKS for the streaming ones. (Given (512, 1), ptxas took 79 registers
// where (512) alone took 51; v18's loops under (512) took 64 and spilled.)
#define CLUSTER_KERNEL(SUFFIX, T, P, MODE, CACHED, BOUNDS)                                               \
    extern "C" __global__ void __launch_bounds__ BOUNDS                                                 \
        masked_softmax_fwd_cluster_##MODE##_p##P##_##SUFFIX(const T* x, T* y, MaskParams p) {           \
        cluster_forward<T, P, CACHED>(x, y, p);                                                         \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_cluster_##MODE##_p##P##_##SUFFIX)
#define CLUSTER_KERNELS(SUFFIX, T, P)                   \
    CLUSTER_KERNEL(SUFFIX, T, P, cached, true, (512, 2)) \
    CLUSTER_KERNEL(SUFFIX, T, P, stream, false, (512, STREAM_MIN_BLOCKS(P)))
#else
#define CLUSTER_KERNELS(SUFFIX, T, P)
#endif

// Per type: 16-byte packs (P = 16 / sizeof(T)) where the buffers sit alike against 16-byte
// boundaries (rows off them seen shifted: io.cuh, PackShift), single elements otherwise;
// warp-per-row kernels up to 32 floats per lane (WARP_LADDER: 8 packs of f32, 4 of 16-bit);
// the block_regs kernels hold VN = 16 / P packs per thread (8 single elements: the scalar
// path needs more registers per element).
#define TYPE_KERNELS(SUFFIX, T, VP, VN, WARP_LADDER) \
    ROWS_GROUP_LADDER(ROWS_KERNEL, SUFFIX, T, VP)    \
    ROWS_SPLIT_LADDER_4(ROWS_KERNEL, SUFFIX, T, VP)  \
    WARP_LADDER(ROWS_KERNEL, SUFFIX, T, VP)          \
    BLOCK_KERNELS(SUFFIX, T, VP, VN)                 \
    CLUSTER_KERNELS(SUFFIX, T, VP)                   \
    ROWS_GROUP_LADDER(ROWS_KERNEL, SUFFIX, T, 1)     \
    ROWS_LANE_LADDER(ROWS_KERNEL, SUFFIX, T)         \
    ROWS_WARP_LADDER_32(ROWS_KERNEL, SUFFIX, T, 1)   \
    BLOCK_KERNELS(SUFFIX, T, 1, 8)                   \
    CLUSTER_KERNELS(SUFFIX, T, 1)

TYPE_KERNELS(f32, float, 4, 4, ROWS_WARP_LADDER_8)
TYPE_KERNELS(f16, __half, 8, 2, ROWS_WARP_LADDER_4)
TYPE_KERNELS(bf16, __nv_bfloat16, 8, 2, ROWS_WARP_LADDER_4)
BLOCK_REGS_16BIT_KERNEL(f16, __half, 8, 4, BLOCK_REGS_16BIT_BOUNDS)
BLOCK_REGS_16BIT_KERNEL(bf16, __nv_bfloat16, 8, 4, BLOCK_REGS_16BIT_BOUNDS)
BLOCK_REGS_16BIT_KERNEL(f16, __half, 8, 8, __launch_bounds__(256, 3))
BLOCK_REGS_16BIT_KERNEL(bf16, __nv_bfloat16, 8, 8, __launch_bounds__(256, 3))

ROWS_KEYS_LADDER(ROWS_KEYS_KERNEL, f16, __half, 8)
ROWS_KEYS_LADDER(ROWS_KEYS_KERNEL, bf16, __nv_bfloat16, 8)

// The next row's L2 prefetch (work.cuh, prefetch_row_l2): the planner's block kernels of
// the large cases, again, with the same launch bounds (src/plan.rs,
// KernelKind::prefetch_name lists them). Variants, until measured.
#define PREFETCH_KERNEL(NAME, SUFFIX, T, BOUNDS, BODY)                                                  \
    extern "C" __global__ void BOUNDS masked_softmax_fwd_##NAME##_prefetch_##SUFFIX(const T* x, T* y,      \
                                                                                  MaskParams p) {      \
        BODY(x, y, p);                                                                                  \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_##NAME##_prefetch_##SUFFIX)
PREFETCH_KERNEL(block_regs_p4x4, f32, float, __launch_bounds__(512, BLOCK_REGS_MIN_BLOCKS(float, 4)),
                (block_regs_forward<float, 4, 4, true>))
PREFETCH_KERNEL(block_regs_p8x4, f16, __half, BLOCK_REGS_16BIT_BOUNDS, (block_regs_forward_16bit<__half, 8, 4, true>))
PREFETCH_KERNEL(block_regs_p8x4, bf16, __nv_bfloat16, BLOCK_REGS_16BIT_BOUNDS,
                (block_regs_forward_16bit<__nv_bfloat16, 8, 4, true>))
// (block_cached_p4's with 2 blocks, not CACHED_MIN_BLOCKS' 3: at 40 registers it spills.)
PREFETCH_KERNEL(block_cached_p4, f32, float, __launch_bounds__(512, 2), (block_cached_forward<float, 4, true>))

// The short rows kernels the planner gives rows of 1, 7, 32 and 64 keys (the sweep's),
// again, fetching each batch's lengths a batch ahead (work.cuh, for_each_group_rows under
// AHEAD), with the same launch bounds; the list is ladder.cuh's SHORT_ROWS_PREFETCH_LADDER.
// Variants, until measured.
#define ROWS_PREFETCH(SUFFIX, T, G, P, N) ROWS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::lengths)
#define ROWS_KEYS_PREFETCH(SUFFIX, T, G, P, N) ROWS_KEYS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::lengths)
SHORT_ROWS_PREFETCH_LADDER(ROWS_PREFETCH, ROWS_KEYS_PREFETCH)

// The rows kernels of 16-byte packs the planner gives rows of 77 to 1024 keys (one row a
// group of lanes at a time), again, asking the L2 for each warp's next batch of rows and
// fetching lengths two batches ahead (work.cuh, for_each_group_rows under Ahead::rows),
// with the same launch bounds; src/plan.rs, KernelKind::fetch_ahead lists the same.
// Variants, until measured.
#define ROWS_L2_PREFETCH(SUFFIX, T, G, P, N) ROWS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::rows)
#define ROWS_KEYS_L2_PREFETCH(SUFFIX, T, G, P, N) ROWS_KEYS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::rows)
ROWS_L2_PREFETCH(f32, float, 8, 4, 4)
ROWS_L2_PREFETCH(f32, float, 16, 4, 4)
ROWS_L2_PREFETCH(f32, float, 32, 4, 4)
ROWS_L2_PREFETCH(f32, float, 32, 4, 8)
ROWS_KEYS_L2_PREFETCH(f16, __half, 8, 8, 2)
ROWS_L2_PREFETCH(f16, __half, 8, 8, 4)
ROWS_L2_PREFETCH(f16, __half, 16, 8, 4)
ROWS_L2_PREFETCH(f16, __half, 32, 8, 4)
ROWS_KEYS_L2_PREFETCH(bf16, __nv_bfloat16, 8, 8, 2)
ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 8, 8, 4)
ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 16, 8, 4)
ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 32, 8, 4)
