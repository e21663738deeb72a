// Length-masked softmax backward: dx = scale * y * (dy - sum_valid(y * dy)) on the valid
// positions of each row, +0.0 on masked positions and on rows with no valid position. The
// same ladder as the forward (src/plan.rs), sharing its mask, loads, stores and reductions:
//
//   masked_softmax_bwd_rows_g<G>_p<P>x<N>_<dtype>   G lanes per row, N packs of P elements
//       of y and dy per lane in registers: one read of each, one write of dx.
//   masked_softmax_bwd_block_regs_p<P>x<N>_<dtype>  one block per row, N packs of y and
//       of dy per thread in registers (N * P = 8).
//   masked_softmax_bwd_block_cached_p<P>_<dtype>    one block per row, y and dy cached in
//       dynamic shared memory (8 bytes per column).
//   masked_softmax_bwd_block_stream_p<P>_<dtype>    one block per row, any length: a pass
//       for the dot product, then a second read of y and dy to write.
//   masked_softmax_bwd_cluster_{cached,stream}_p<P>_<dtype>   (sm_90+) few long rows: a
//       thread-block cluster per row, each block a chunk of it (y and dy cached in shared
//       memory when they fit); the blocks add their dot products through distributed
//       shared memory.
//
// Only valid positions of y and dy are read; dx may alias dy (each element is read, then
// written, by the same thread). Arguments: (const T* y, const T* dy, T* dx, MaskParams).
#include "cluster.cuh"
#include "emulation.cuh"
#include "io.cuh"
#include "ladder.cuh"
#include "mask.cuh"
#include "numeric.cuh"
#include "reduce.cuh"
#include "work.cuh"

// The gradient of one valid position.
// y * (dy - dot) first: scale * y can underflow to 0 in f32 (a tiny scale times a small
// probability, e.g. -1e-40 * 3e-6) and then meet an infinite dy - dot as 0 * inf = NaN,
// where the exact product is infinite (H100, k=300000, f16 dy overflowing to inf).
__device__ __forceinline__ float softmax_grad(float y, float dy, float dot, float scale) {
    return y * (dy - dot) * scale;
}

template <typename T, int PACK, int PACKS, int GROUP, Ahead AHEAD = Ahead::none>
__device__ __forceinline__ void rows_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    constexpr int R = rows_at_once<2 * PACK * PACKS>();
    for_each_group_rows<AHEAD, GROUP, R>(p, PackShift<T, PACK>::of(y, p), y, dy, [&](const GroupRow (&rows)[R]) {
        // Every load of the R rows in flight, then the arithmetic.
        PackPair<T, PACK> raw[R][PACKS];
        fetch_group_row_pairs<T, PACK, PACKS, GROUP, R>(y, dy, rows, raw);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const ShortWindow& w = rows[r].window;
            float ys[PACKS][PACK], dys[PACKS][PACK];
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < PACKS; ++i) {
                const int32_t col = lane_pack_column<GROUP, PACK>(i, rows[r].member);
                decode_values<T, PACK>(raw[r][i].y, ys[i]);
                decode_values<T, PACK>(raw[r][i].dy, dys[i]);
                if (pack_overlaps<PACK>(col, w.start, w.end))  // else zeros: nothing to add
#pragma unroll
                    for (int j = 0; j < PACK; ++j) dot += ys[i][j] * dys[i][j];
            }
            dot = group_sum<GROUP>(dot);
            store_group_row<T, PACK, PACKS, GROUP>(
                dx, rows[r], int32_t(p.k_len), [&](int i, int j) { return softmax_grad(ys[i][j], dys[i][j], dot, p.scale); });
        }
    });
}

// sum(y * dy) over a thread's PACKS raw pairs. A masked column inside a fetched pack holds
// zero bits (fetch_window) and adds 0 * 0, so only packs wholly outside the window are
// skipped; the products and their order are the f32-value kernels'.
template <typename T, int PACK, int PACKS, typename Column>
__device__ __forceinline__ float raw_pair_dot(const PackPair<T, PACK> (&raw)[PACKS], Column column,
                                              const ShortWindow& w) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
        if (!pack_overlaps<PACK>(column(i), w.start, w.end)) continue;
#pragma unroll
        for (int j = 0; j < PACK; ++j) dot += raw[i].y.f32_at(j) * raw[i].dy.f32_at(j);
    }
    return dot;
}

// The gradient at column j of raw pair `pair`, converted again rather than kept alive from
// the dot product: call forget_pairs on the packs first (see forget_values).
template <typename T, int PACK>
__device__ __forceinline__ float raw_pair_grad(const PackPair<T, PACK>& pair, int j, float dot, float scale) {
    return softmax_grad(pair.y.f32_at(j), pair.dy.f32_at(j), dot, scale);
}
template <typename T, int PACK, int PACKS>
__device__ __forceinline__ void forget_pairs(PackPair<T, PACK> (&raw)[PACKS]) {
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
        forget_values(raw[i].y);
        forget_values(raw[i].dy);
    }
}

// The rows kernels' form for 16-bit vector packs: y and dy kept as fetched (two values to a
// register, half the registers of f32 values), so a lane takes twice the rows at once and
// has twice the bytes in flight, converting each value twice (for the dot product, then to
// write).
template <typename T, int PACK, int PACKS, int GROUP, Ahead AHEAD = Ahead::none>
__device__ __forceinline__ void rows_backward_16bit(const T* y, const T* dy, T* dx, const MaskParams& p) {
    static_assert(sizeof(T) == 2 && PACK > 1, "16-bit vector packs only");
    constexpr int R = rows_at_once<PACK * PACKS>();  // registers of 2 * PACK * PACKS / 2 floats
    const int32_t k_len = int32_t(p.k_len);
    for_each_group_rows<AHEAD, GROUP, R>(p, PackShift<T, PACK>::of(y, p), y, dy, [&](const GroupRow (&rows)[R]) {
        PackPair<T, PACK> raw[R][PACKS];
        fetch_group_row_pairs<T, PACK, PACKS, GROUP, R>(y, dy, rows, raw);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const auto column = [&](int i) { return lane_pack_column<GROUP, PACK>(i, rows[r].member); };
            const float dot = group_sum<GROUP>(raw_pair_dot(raw[r], column, rows[r].window));
            forget_pairs(raw[r]);
            store_group_row<T, PACK, PACKS, GROUP>(
                dx, rows[r], k_len, [&](int i, int j) { return raw_pair_grad(raw[r][i], j, dot, p.scale); });
        }
    });
}

// The row's y and dy in registers across the block: thread t holds packs t, t + blockDim,
// ... (PACKS of each), all fetched before any is used. Rows of at most 512 * PACK * PACKS
// columns: 32-bit columns. Dynamic shared memory: 32 floats.
template <typename T, int PACK, int PACKS, bool PREFETCH = false>
__device__ __forceinline__ void block_regs_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    float* scratch = dynamic_shared<float>();
    for_each_block_row<PREFETCH>(p, PackShift<T, PACK>::of(y, p), y, dy, [&](const BlockRow& row) {
        const ShortWindow& w = row.window;
        const auto column = [](int i) { return block_pack_column<PACK>(i); };
        PackPair<T, PACK> raw[PACKS];
        fetch_block_row_pairs<T, PACK, PACKS>(y + row.offset, dy + row.offset, w, raw);
        float ys[PACKS][PACK], dys[PACKS][PACK];
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            decode_values<T, PACK>(raw[i].y, ys[i]);
            decode_values<T, PACK>(raw[i].dy, dys[i]);
            if (pack_overlaps<PACK>(column(i), w.start, w.end))  // else zeros: nothing to add
#pragma unroll
                for (int j = 0; j < PACK; ++j) dot += ys[i][j] * dys[i][j];
        }
        dot = block_sum(dot, scratch);

#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (column(i) >= row.own.end) break;
            store_window<T, PACK>(dx + row.offset, column(i), row.own, w.start, w.end,
                                  [&](int j) { return softmax_grad(ys[i][j], dys[i][j], dot, p.scale); });
        }
    });
}

// block_regs_backward's form for 16-bit vector packs: y and dy kept as fetched, so a thread
// holds twice the columns of f32 values for the same registers (see rows_backward_16bit).
// Dynamic shared memory: 32 floats.
template <typename T, int PACK, int PACKS, bool PREFETCH = false>
__device__ __forceinline__ void block_regs_backward_16bit(const T* y, const T* dy, T* dx, const MaskParams& p) {
    static_assert(sizeof(T) == 2 && PACK > 1, "16-bit vector packs only");
    float* scratch = dynamic_shared<float>();
    for_each_block_row<PREFETCH>(p, PackShift<T, PACK>::of(y, p), y, dy, [&](const BlockRow& row) {
        const ShortWindow& w = row.window;
        const auto column = [](int i) { return block_pack_column<PACK>(i); };
        PackPair<T, PACK> raw[PACKS];
        fetch_block_row_pairs<T, PACK, PACKS>(y + row.offset, dy + row.offset, w, raw);
        const float dot = block_sum(raw_pair_dot(raw, column, w), scratch);
        forget_pairs(raw);
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            if (column(i) >= row.own.end) break;
            store_window<T, PACK>(dx + row.offset, column(i), row.own, w.start, w.end,
                                  [&](int j) { return raw_pair_grad(raw[i], j, dot, p.scale); });
        }
    });
}

// Fetches the pair of packs at column `col` (see fetch_window); decode_pair decodes them.
template <typename T, int PACK>
__device__ __forceinline__ void fetch_pair(const T* y, const T* dy, int64_t col, const RowWindow& w,
                                           PackPair<T, PACK>& raw, const L2Policy* policy = nullptr) {
    fetch_window<T, PACK>(y, col, w.start, w.end, raw.y, policy);
    fetch_window<T, PACK>(dy, col, w.start, w.end, raw.dy, policy);
}

template <typename T, int PACK>
__device__ __forceinline__ void decode_pair(const PackPair<T, PACK>& raw, float (&ys)[PACK], float (&dys)[PACK]) {
    decode_values<T, PACK>(raw.y, ys);
    decode_values<T, PACK>(raw.dy, dys);
}

// The whole pair of packs of the window at pack i (see fetch_whole).
template <typename T, int PACK>
__device__ __forceinline__ void fetch_whole_pair(const T* y, const T* dy, int64_t i, PackPair<T, PACK>& raw,
                                                 const L2Policy* policy) {
    fetch_whole<T, PACK>(y + i * PACK, raw.y, policy);
    fetch_whole<T, PACK>(dy + i * PACK, raw.dy, policy);
}

// The values of one thread's share (thread t of `step`) of the pairs of packs [first, last)
// of a row seen through its window `w` (for_window_packs), read under `policy` (none: the
// loads' default): whole(i, ys, dys) gets a whole pair of packs' values, edge(i, ys, dys)
// those of a pair across an edge of the window (masked columns +0.0). The kernels that read
// a row's packs twice walk them alike in both passes; the cached ones walk their cache the
// same way.
template <typename T, int PACK, typename Whole, typename Edge>
__device__ __forceinline__ void for_pack_pairs(const T* y, const T* dy, const RowWindow& w, int64_t first,
                                               int64_t last, uint32_t t, uint32_t step, const L2Policy* policy,
                                               Whole whole, Edge edge) {
    for_window_packs<PACK, PAIRS_IN_FLIGHT, PackPair<T, PACK>>(
        first, last, t, step, w.start, w.end,
        [&](int64_t i, PackPair<T, PACK>& raw) { fetch_whole_pair<T, PACK>(y, dy, i, raw, policy); },
        [&](int64_t i, const PackPair<T, PACK>& raw) {
            float ys[PACK], dys[PACK];
            decode_pair<T, PACK>(raw, ys, dys);
            whole(i, ys, dys);
        },
        [&](int64_t i, PackPair<T, PACK>& raw) { fetch_pair<T, PACK>(y, dy, i * PACK, w, raw, policy); },
        [&](int64_t i, const PackPair<T, PACK>& raw) {
            float ys[PACK], dys[PACK];
            decode_pair<T, PACK>(raw, ys, dys);
            edge(i, ys, dys);
        });
}

// dx of a cached pack, from its slots of y and dy (a pack across the window's edge holds
// +0.0 in its masked columns, and store_window writes +0.0 there whatever it gets).
template <int PACK>
__device__ __forceinline__ void cached_grad(const float* y_slot, const float* dy_slot, float dot, float scale,
                                            float (&out)[PACK]) {
    float ys[PACK], dys[PACK];
    load_slot<PACK>(y_slot, ys);
    load_slot<PACK>(dy_slot, dys);
#pragma unroll
    for (int j = 0; j < PACK; ++j) out[j] = softmax_grad(ys[j], dys[j], dot, scale);
}

// y and dy of the valid packs cached in shared memory (y of every pack, then dy). Both
// passes walk thread t's share of the window's packs the same way (for_pack_pairs, then
// write_cached), so each thread reads back only the slots it filled; whole packs skip the
// window's tests, and the row's packs outside the window are written as zeros, never read. Dynamic shared memory: [2 * packs * PACK floats][32 floats
// of scratch].
template <typename T, int PACK, bool PREFETCH = false>
__device__ __forceinline__ void block_cached_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(y, p);
    const int64_t row_packs = packs_in<PACK>(shift.columns(p.k_len));
    float* cache_y = dynamic_shared<float>();
    float* cache_dy = cache_y + row_packs * PACK;
    float* scratch = cache_dy + row_packs * PACK;
    for_each_grid_row<PREFETCH>(p, index, y, dy, [&](int64_t row) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first_pack = w.start / PACK, end_pack = packs_in<PACK>(w.end);
        // Thread t's packs in both passes: first_pack + t, + blockDim, ..., changing hands
        // from one row to the next (see block_cached_forward).
        __syncthreads();

        float dot = 0.f;
        const auto cache_pair = [&](int64_t i, const float (&ys)[PACK], const float (&dys)[PACK]) {
#pragma unroll
            for (int j = 0; j < PACK; ++j) dot += ys[j] * dys[j];
            store_slot<PACK>(cache_y + i * PACK, ys);
            store_slot<PACK>(cache_dy + i * PACK, dys);
        };
        for_pack_pairs<T, PACK>(y + offset, dy + offset, w, first_pack, end_pack, threadIdx.x, blockDim.x, nullptr,
                                cache_pair, cache_pair);
        dot = block_sum(dot, scratch);

        // (zero_outside_window's share of [0, the row's packs) is [first_pack, end_pack).)
        write_cached<T, PACK, CACHED_PACKS_AT_ONCE>(
            dx + offset, f, p, 0, packs_in<PACK>(f.own(p).end), [&](int64_t i, float (&out)[PACK]) {
                cached_grad<PACK>(cache_y + i * PACK, cache_dy + i * PACK, dot, p.scale, out);
            });
    });
}

// The two passes of the kernels that read rows twice (block_stream, split, the streaming
// cluster), each over one thread's share of a row's packs (thread t of `step`: see
// for_window_packs) seen from frame `f` (y, dy and dx at the row's frame), read under
// `policy`.

// Pass 1: the sum of y * dy over the valid columns of the packs [first, last) (those that
// reach into the window).
template <typename T, int PACK>
__device__ __forceinline__ float stream_dot(const T* y, const T* dy, const RowWindow& w, int64_t first, int64_t last,
                                            uint32_t t, uint32_t step, const L2Policy* policy) {
    float dot = 0.f;
    const auto add = [&](int64_t, const float (&ys)[PACK], const float (&dys)[PACK]) {
#pragma unroll
        for (int j = 0; j < PACK; ++j) dot += ys[j] * dys[j];
    };
    for_pack_pairs<T, PACK>(y, dy, w, first, last, t, step, policy, add, add);
    return dot;
}

// Pass 2: dx over the packs [begin, end) of the row's own columns, zeros outside the
// window (written, not read).
template <typename T, int PACK>
__device__ __forceinline__ void stream_write_grad(const T* y, const T* dy, T* dx, const RowFrame& f,
                                                  const MaskParams& p, float dot, int64_t begin, int64_t end,
                                                  uint32_t t, uint32_t step, const L2Policy* policy) {
    const RowWindow& w = f.window;
    const WindowShare share = zero_outside_window<T, PACK>(dx, f, p, begin, end, t, step);
    for_pack_pairs<T, PACK>(
        y, dy, w, share.first, share.last, t, step, policy,
        [&](int64_t i, const float (&ys)[PACK], const float (&dys)[PACK]) {
            float out[PACK];
#pragma unroll
            for (int j = 0; j < PACK; ++j) out[j] = softmax_grad(ys[j], dys[j], dot, p.scale);
            store_whole<T, PACK>(dx + i * PACK, out);  // a whole pack of the window: within own
        },
        [&](int64_t i, const float (&ys)[PACK], const float (&dys)[PACK]) {
            store_window<T, PACK>(dx, i * PACK, f.own(p), w.start, w.end,
                                  [&](int j) { return softmax_grad(ys[j], dys[j], dot, p.scale); });
        });
}

// Any row length: the dot product, then a second read of y and dy to write dx (the two
// reads with the L2 priorities of RereadPolicy: work.cuh). Dynamic shared memory: 32
// floats of scratch.
template <typename T, int PACK>
__device__ __forceinline__ void block_stream_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(y, p);
    const RereadPolicy reread = RereadPolicy::of(p);
    float* scratch = dynamic_shared<float>();
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first_pack = w.start / PACK, end_pack = packs_in<PACK>(w.end);
        const L2Policy first_read = reread.first_read();
        const L2Policy second_read = reread.second_read();

        float dot = stream_dot<T, PACK>(y + offset, dy + offset, w, first_pack, end_pack, threadIdx.x, blockDim.x,
                                        &first_read);
        dot = block_sum(dot, scratch);
        stream_write_grad<T, PACK>(y + offset, dy + offset, dx + offset, f, p, dot, 0, packs_in<PACK>(f.own(p).end),
                                   threadIdx.x, blockDim.x, &second_read);
    }
}

// ---------------------------------------------------------------- a row split over the grid
//
// The forward's split (masked_softmax.cu) for the backward: launch 1
// (masked_softmax_bwd_split_stats_p<P>_<dtype>) sums y * dy over each item's chunk into
// partials[item].x; launch 2 (masked_softmax_bwd_split_write_p<P>_<dtype>) adds its row's
// sums (every item of a row in the same order, so all agree), reads its chunk of y and dy
// again and writes dx. Dynamic shared memory: 32 floats of scratch.
template <typename T, int PACK>
__device__ __forceinline__ void split_stats_backward(const T* y, const T* dy, float2* partials, const MaskParams& p) {
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(y, p);
    const SplitItems split = SplitItems::of<PACK>(shift.columns(p.k_len), p.rows);
    const L2Policy first_read = RereadPolicy::of(p).first_read();
    float* scratch = dynamic_shared<float>();
    for (int64_t item = blockIdx.x; item < split.items; item += gridDim.x) {
        const SplitChunk c = SplitChunk::of(p, shift, index, split, item);
        const RowWindow& w = c.frame.window;
        const int64_t offset = c.frame.offset;
        float dot = stream_dot<T, PACK>(y + offset, dy + offset, w, c.first, c.last, threadIdx.x, blockDim.x,
                                        &first_read);
        dot = block_sum(dot, scratch);
        if (threadIdx.x == 0) partials[item] = make_float2(dot, 0.f);
    }
}

template <typename T, int PACK>
__device__ __forceinline__ void split_write_backward(const T* y, const T* dy, T* dx, const float2* partials,
                                                     const MaskParams& p) {
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(y, p);
    const SplitItems split = SplitItems::of<PACK>(shift.columns(p.k_len), p.rows);
    const L2Policy second_read = RereadPolicy::of(p).second_read();
    float* scratch = dynamic_shared<float>();
    for (int64_t k = blockIdx.x; k < split.items; k += gridDim.x) {
        const SplitChunk c = SplitChunk::of(p, shift, index, split, split_item_backwards(split, k));
        const RowFrame& f = c.frame;
        const int64_t offset = f.offset;
        float row_dot = 0.f;
        for (int64_t i = threadIdx.x; i < split.chunks; i += blockDim.x) row_dot += partials[c.row * split.chunks + i].x;
        row_dot = block_sum(row_dot, scratch);
        stream_write_grad<T, PACK>(y + offset, dy + offset, dx + offset, f, p, row_dot, c.begin, c.end, threadIdx.x,
                                   blockDim.x, &second_read);
    }
}

// ---------------------------------------------------------------- a cluster per row

#if MASKED_SOFTMAX_HAS_CLUSTERS
// The forward's cluster split (masked_softmax.cu, cluster_forward) for the backward: each
// block of a cluster owns a chunk of every row its cluster handles (ClusterChunk,
// cluster.cuh). Pass 1 sums y * dy over the chunk's valid packs (caching y and dy in
// shared memory if CACHED); the blocks publish their sums, sync the cluster, and every
// block adds all of them in rank order, so all agree on the row's dot product; a second
// cluster sync keeps the published sums alive until every block has read them. Pass 2
// writes the chunk of dx. Dynamic shared memory: ClusterShared, as the forward's (the
// published float2's .x holds the sum; the cache holds the chunk's y, then its dy).
template <typename T, int PACK, bool CACHED>
__device__ __forceinline__ void cluster_backward(const T* y, const T* dy, T* dx, const MaskParams& p) {
    const RowIndex index = RowIndex::of(p);
    const PackShift<T, PACK> shift = PackShift<T, PACK>::of(y, p);
    const ClusterChunk chunk = ClusterChunk::of<PACK>(shift.columns(p.k_len));
    const RereadPolicy reread = RereadPolicy::of(p);
    const ClusterShared shared = ClusterShared::of();
    float2* published = shared.published;
    float* scratch = reinterpret_cast<float*>(shared.scratch);
    float* cache_y = shared.cache;
    float* cache_dy = cache_y + chunk.size * PACK;

    for (int64_t row = cluster_id(); row < p.rows; row += cluster_count()) {
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const RowWindow& w = f.window;
        const int64_t offset = f.offset;
        const int64_t first = max(chunk.begin, w.start / PACK);
        const int64_t last = min(chunk.end, packs_in<PACK>(w.end));
        // The cached kernel reads each pack once; the streaming one twice (RereadPolicy).
        const L2Policy first_read = reread.first_read();

        float dot = 0.f;
        if (CACHED) {
            // Thread t caches the packs it will write, first + t, + blockDim, ..., and they
            // change hands from one row to the next (see block_cached_forward).
            __syncthreads();
            const auto cache_pair = [&](int64_t i, const float (&ys)[PACK], const float (&dys)[PACK]) {
#pragma unroll
                for (int j = 0; j < PACK; ++j) dot += ys[j] * dys[j];
                store_slot<PACK>(cache_y + (i - chunk.begin) * PACK, ys);
                store_slot<PACK>(cache_dy + (i - chunk.begin) * PACK, dys);
            };
            for_pack_pairs<T, PACK>(y + offset, dy + offset, w, first, last, threadIdx.x, blockDim.x, nullptr,
                                    cache_pair, cache_pair);
        } else {
            dot = stream_dot<T, PACK>(y + offset, dy + offset, w, first, last, threadIdx.x, blockDim.x, &first_read);
        }
        dot = block_sum(dot, scratch);
        if (threadIdx.x == 0) published->x = dot;
        cluster_sync();
        float row_dot = 0.f;
        for (unsigned r = 0; r < chunk.blocks; ++r) row_dot += cluster_map(published, r)->x;
        cluster_sync();

        if (CACHED) {
            // Thread t reads back only the slots it filled (the same walk over the same
            // packs: zero_outside_window's share is [first, last)). One pack at a time: at
            // CACHED_PACKS_AT_ONCE the 16-bit kernel spilled.
            write_cached<T, PACK, 1>(dx + offset, f, p, chunk.begin, chunk.end, [&](int64_t i, float (&out)[PACK]) {
                cached_grad<PACK>(cache_y + (i - chunk.begin) * PACK, cache_dy + (i - chunk.begin) * PACK, row_dot,
                                  p.scale, out);
            });
        } else {
            const L2Policy second_read = reread.second_read();
            stream_write_grad<T, PACK>(y + offset, dy + offset, dx + offset, f, p, row_dot, chunk.begin, chunk.end,
                                       threadIdx.x, blockDim.x, &second_read);
        }
    }
}
#endif

// ---------------------------------------------------------------- instantiations
// The Rust planner (src/plan.rs, KernelKind::all with Direction::Backward) lists exactly these.

#define BWD_SIGNATURE(T) (const T* y, const T* dy, T* dx, MaskParams p)

// Blocks of ROWS_THREADS (256); 4 per multiprocessor (64 registers) when a lane holds 8 or
// fewer elements of y and of dy (32 of each as 16-bit raw pairs: g32_p8x4, 64 registers without
// spills on sm_90, where ptxas left alone takes 80); 3 (80 registers) for f32 packs of 16
// elements (p4x4: g8 and g16 took 80 on sm_90 until v13's narrow rows, 83 after, one block
// fewer; g32 took 82, 2 blocks; held to 3 blocks they fit without spills); 6 (40
// registers) for the 16-bit lane-a-row kernels of 4 and 8 single elements (g1_p1x4,
// g1_p1x8: the backward of rows of up to 8 keys off 16-byte boundaries, k=7: sm_90 gave
// them 46 and 40 before v13, 53 and 43 after, one block fewer; held, 38 and 37, no spills).
#define BWD_ROWS_MIN_BLOCKS(T, G, P, N)                                             \
    (sizeof(T) == 2 && (G) == 1 && (P) == 1 && ((N) == 4 || (N) == 8)           \
         ? 6                                                                     \
         : ((P) * (N) <= (RAW_PAIRS(T, P) ? 32 : 8) ? 4 : ((P) > 1 && (P) * (N) <= 16 ? 3 : 1)))
// (BWD_ROWS_INSTANCE: TAG empty, or `prefetch_` for the instances fetching each batch's
// lengths a batch ahead, AHEAD; see the end of this file.)
#define BWD_ROWS_INSTANCE(SUFFIX, T, G, P, N, TAG, AHEAD)                                           \
    extern "C" __global__ void __launch_bounds__(ROWS_THREADS, BWD_ROWS_MIN_BLOCKS(T, G, P, N))     \
        masked_softmax_bwd_rows_g##G##_p##P##x##N##_##TAG##SUFFIX BWD_SIGNATURE(T) {                \
        if constexpr (RAW_PAIRS(T, P))                                                             \
            rows_backward_16bit<T, P, N, G, AHEAD>(y, dy, dx, p);                                  \
        else                                                                                       \
            rows_backward<T, P, N, G, AHEAD>(y, dy, dx, p);                                        \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_rows_g##G##_p##P##x##N##_##TAG##SUFFIX)
#define BWD_ROWS_KERNEL(SUFFIX, T, G, P, N) BWD_ROWS_INSTANCE(SUFFIX, T, G, P, N, , Ahead::none)

// 16 floats (8 of y, 8 of dy) per thread in registers, in blocks of up to 512 threads, with
// the register budget left to ptxas: held to 2 blocks' worth (64 registers, as the forward's
// BLOCK_REGS_MIN_BLOCKS does) the backward took 1.6x the floor at k=1000-2048 f32 instead of
// 1.3x (H200; why, the SASS has not yet been read).
#define BWD_BLOCK_REGS_KERNEL(SUFFIX, T, P, N)                                                      \
    extern "C" __global__ void __launch_bounds__(512)                                               \
        masked_softmax_bwd_block_regs_p##P##x##N##_##SUFFIX BWD_SIGNATURE(T) {                      \
        block_regs_backward<T, P, N>(y, dy, dx, p);                                                 \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_bwd_block_regs_p##P##x##N##_##SUFFIX)

// The looping block kernels run at most 512 threads per block (src/plan.rs, LOOP_BLOCK);
// those that stream a row take STREAM_MIN_BLOCKS (work.cuh).
#define BWD_BLOCK_KERNELS(SUFFIX, T, P, N)                                                          \
    BWD_BLOCK_REGS_KERNEL(SUFFIX, T, P, N)                                                          \
    extern "C" __global__ void __launch_bounds__(512)                                               \
        masked_softmax_bwd_block_cached_p##P##_##SUFFIX BWD_SIGNATURE(T) {                          \
        block_cached_backward<T, P>(y, dy, dx, p);                                                 \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_block_cached_p##P##_##SUFFIX)                               \
    extern "C" __global__ void __launch_bounds__(512, STREAM_MIN_BLOCKS(P))                     \
        masked_softmax_bwd_block_stream_p##P##_##SUFFIX BWD_SIGNATURE(T) {                          \
        block_stream_backward<T, P>(y, dy, dx, p);                                                 \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_block_stream_p##P##_##SUFFIX)                                \
    extern "C" __global__ void __launch_bounds__(512, SPLIT_MIN_BLOCKS)                         \
        masked_softmax_bwd_split_stats_p##P##_##SUFFIX(                                             \
        const T* y, const T* dy, float2* partials, MaskParams p) {                                  \
        split_stats_backward<T, P>(y, dy, partials, p);                                             \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_bwd_split_stats_p##P##_##SUFFIX)                                 \
    extern "C" __global__ void __launch_bounds__(512, SPLIT_MIN_BLOCKS)                         \
        masked_softmax_bwd_split_write_p##P##_##SUFFIX(                                             \
        const T* y, const T* dy, T* dx, const float2* partials, MaskParams p) {                     \
        split_write_backward<T, P>(y, dy, dx, partials, p);                                         \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_bwd_split_write_p##P##_##SUFFIX)

// The 16-bit raw-pair block_regs: 32 columns of y and dy a thread.
#define BWD_BLOCK_REGS_16BIT_KERNEL(SUFFIX, T, P, N)                                                \
    extern "C" __global__ void __launch_bounds__(512)                                               \
        masked_softmax_bwd_block_regs_p##P##x##N##_##SUFFIX BWD_SIGNATURE(T) {                      \
        block_regs_backward_16bit<T, P, N>(y, dy, dx, p);                                           \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_bwd_block_regs_p##P##x##N##_##SUFFIX)

#if MASKED_SOFTMAX_HAS_CLUSTERS
// BOUNDS: __launch_bounds__'s arguments (as the forward's: the cached ones' (512, 2)).
#define BWD_CLUSTER_KERNEL(SUFFIX, T, P, MODE, CACHED, BOUNDS)                                      \
    extern "C" __global__ void __launch_bounds__ BOUNDS                                             \
        masked_softmax_bwd_cluster_##MODE##_p##P##_##SUFFIX BWD_SIGNATURE(T) {                      \
        cluster_backward<T, P, CACHED>(y, dy, dx, p);                                               \
    }                                                                                              \
    REGISTER_KERNEL(masked_softmax_bwd_cluster_##MODE##_p##P##_##SUFFIX)
#define BWD_CLUSTER_KERNELS(SUFFIX, T, P)                   \
    BWD_CLUSTER_KERNEL(SUFFIX, T, P, cached, true, (512, 2)) \
    BWD_CLUSTER_KERNEL(SUFFIX, T, P, stream, false, (512, STREAM_MIN_BLOCKS(P)))
#else
#define BWD_CLUSTER_KERNELS(SUFFIX, T, P)
#endif

// Two values per element in registers: half the forward's packs per lane (and per thread
// in block_regs: VN = 8 / P), but for the 16-bit raw pairs, which take the forward's 4.
#define BWD_TYPE_KERNELS(SUFFIX, T, VP, VN, WARP_LADDER, SPLIT_LADDER) \
    ROWS_GROUP_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, VP)                  \
    SPLIT_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, VP)                       \
    WARP_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, VP)                        \
    BWD_BLOCK_KERNELS(SUFFIX, T, VP, VN)                               \
    BWD_CLUSTER_KERNELS(SUFFIX, T, VP)                                 \
    ROWS_GROUP_LADDER(BWD_ROWS_KERNEL, SUFFIX, T, 1)                   \
    ROWS_LANE_LADDER(BWD_ROWS_KERNEL, SUFFIX, T)                       \
    ROWS_WARP_LADDER_16(BWD_ROWS_KERNEL, SUFFIX, T, 1)                 \
    BWD_BLOCK_KERNELS(SUFFIX, T, 1, 8)                                 \
    BWD_CLUSTER_KERNELS(SUFFIX, T, 1)

BWD_TYPE_KERNELS(f32, float, 4, 2, ROWS_WARP_LADDER_4, ROWS_SPLIT_LADDER_4)
BWD_TYPE_KERNELS(f16, __half, 8, 1, ROWS_WARP_LADDER_4, ROWS_SPLIT_LADDER_2)
BWD_TYPE_KERNELS(bf16, __nv_bfloat16, 8, 1, ROWS_WARP_LADDER_4, ROWS_SPLIT_LADDER_2)

BWD_BLOCK_REGS_16BIT_KERNEL(f16, __half, 8, 4)
BWD_BLOCK_REGS_16BIT_KERNEL(bf16, __nv_bfloat16, 8, 4)

// The next row's L2 prefetch (work.cuh, prefetch_row_l2): the planner's block kernels of
// the large cases, again, with the same launch bounds (src/plan.rs,
// KernelKind::prefetch_name lists them). Variants, until measured.
#define BWD_PREFETCH_KERNEL(NAME, SUFFIX, T, BODY)                                                  \
    extern "C" __global__ void __launch_bounds__(512) masked_softmax_bwd_##NAME##_prefetch_##SUFFIX \
        BWD_SIGNATURE(T) {                                                                          \
        BODY(y, dy, dx, p);                                                                         \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_bwd_##NAME##_prefetch_##SUFFIX)
BWD_PREFETCH_KERNEL(block_regs_p4x2, f32, float, (block_regs_backward<float, 4, 2, true>))
BWD_PREFETCH_KERNEL(block_regs_p8x4, f16, __half, (block_regs_backward_16bit<__half, 8, 4, true>))
BWD_PREFETCH_KERNEL(block_regs_p8x4, bf16, __nv_bfloat16, (block_regs_backward_16bit<__nv_bfloat16, 8, 4, true>))
BWD_PREFETCH_KERNEL(block_cached_p4, f32, float, (block_cached_backward<float, 4, true>))

// The short rows kernels the planner gives rows of 1, 7, 32 and 64 keys (the sweep's),
// again, fetching each batch's lengths a batch ahead (work.cuh, for_each_group_rows under
// AHEAD), with the same launch bounds; the list is ladder.cuh's SHORT_ROWS_PREFETCH_LADDER.
// Variants, until measured.
#define BWD_ROWS_PREFETCH(SUFFIX, T, G, P, N) BWD_ROWS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::lengths)
SHORT_ROWS_PREFETCH_LADDER(BWD_ROWS_PREFETCH, BWD_ROWS_PREFETCH)

// The rows kernels of 16-byte packs the planner gives rows of 77 to 1024 keys (one row a
// group of lanes at a time), again, asking the L2 for each warp's next batch of rows (y
// and dy) and fetching lengths two batches ahead (work.cuh, for_each_group_rows under
// Ahead::rows), with the same launch bounds; src/plan.rs, KernelKind::fetch_ahead lists
// the same. Variants, until measured.
#define BWD_ROWS_L2_PREFETCH(SUFFIX, T, G, P, N) BWD_ROWS_INSTANCE(SUFFIX, T, G, P, N, prefetch_, Ahead::rows)
BWD_ROWS_L2_PREFETCH(f32, float, 8, 4, 4)
BWD_ROWS_L2_PREFETCH(f32, float, 16, 4, 4)
BWD_ROWS_L2_PREFETCH(f16, __half, 8, 8, 2)
BWD_ROWS_L2_PREFETCH(f16, __half, 16, 8, 2)
BWD_ROWS_L2_PREFETCH(f16, __half, 32, 8, 2)
BWD_ROWS_L2_PREFETCH(f16, __half, 32, 8, 4)
BWD_ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 8, 8, 2)
BWD_ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 16, 8, 2)
BWD_ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 32, 8, 2)
BWD_ROWS_L2_PREFETCH(bf16, __nv_bfloat16, 32, 8, 4)
