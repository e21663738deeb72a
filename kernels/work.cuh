// How kernels split rows into work: packs per row, which packs a thread owns, and the
// dynamic shared memory of a block.
#pragma once
#include <stdint.h>

#include "emulation.cuh"

template <int PACK>
__device__ __forceinline__ int64_t packs_in(int64_t k_len) {
    return (k_len + PACK - 1) / PACK;
}

// Threads of a rows kernel's block (src/plan.rs, ROWS_BLOCK), forward and backward: their
// launch bounds, and the forward's weight cache's layout.
constexpr int ROWS_THREADS = 256;

// The block's dynamic shared memory, as an array of T.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef MASKED_SOFTMAX_EMULATION
    return static_cast<T*>(emu::dynamic_shared_memory());
#else
    extern __shared__ __align__(16) unsigned char shared_bytes[];
    return reinterpret_cast<T*>(shared_bytes);
#endif
}

// The dynamic shared memory the launch gave the block, in bytes.
__device__ __forceinline__ uint32_t dynamic_shared_bytes() {
#ifdef MASKED_SOFTMAX_EMULATION
    return emu::dynamic_shared_bytes();
#else
    uint32_t bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
    return bytes;
#endif
}

// The packs [first, last) of a row seen through its window [start, end) of columns, as
// thread t of `step` visits them: first + t, first + t + step, ... Whole packs (every
// column inside the window) go to fetch(i, item) and use(i, item), a batch of U in flight
// (U loads per thread in flight keep the memory system busy where one would leave it
// waiting), with no test of the window; the packs across an edge, at most two (the
// first, where `start` is off a pack boundary, and the last, where `end` is), go to
// edge_fetch(i, item) and edge_use(i, item), which test their columns. `first` is at or
// after start's pack and `last` at or before end's (a block's or a chunk's share of the
// window's packs). The streaming kernels' passes and the cached kernels' fills: in a long
// row nearly every pack is whole, and testing each against the window and the row's own
// columns took more instructions than the arithmetic on its columns (PERFORMANCE.md v17,
// v18).
template <int PACK, int U, typename Item, typename Fetch, typename Use, typename EdgeFetch, typename EdgeUse>
__device__ __forceinline__ void for_window_packs(int64_t first, int64_t last, uint32_t t, uint32_t step,
                                                 int64_t start, int64_t end, Fetch fetch, Use use,
                                                 EdgeFetch edge_fetch, EdgeUse edge_use) {
    const auto edge = [&](int64_t i) {
        Item item;
        edge_fetch(i, item);
        edge_use(i, item);
    };
    const int64_t whole_first = (start + PACK - 1) / PACK, whole_end = min(last, end / PACK);
    int64_t i = first + t;
    if (i < last && i < whole_first) {  // the pack across the window's start (thread 0's first)
        edge(i);
        i += step;
    }
    for (; i + (U - 1) * int64_t(step) < whole_end; i += U * int64_t(step)) {
        Item items[U];
#pragma unroll
        for (int u = 0; u < U; ++u) fetch(i + u * int64_t(step), items[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) use(i + u * int64_t(step), items[u]);
    }
    if (i < whole_end) {  // fewer than U whole packs left
        Item items[U];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i + u * int64_t(step) < whole_end) fetch(i + u * int64_t(step), items[u]);
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (i + u * int64_t(step) < whole_end) use(i + u * int64_t(step), items[u]);
        do i += step;  // past those: at most U - 1 steps
        while (i < whole_end);
    }
    // i is now this thread's first pack at or past whole_end: below `last`, only the pack
    // across the window's end.
    if (i < last) edge(i);
}

// Blocks of 512 threads per multiprocessor the forward block_regs kernels ask ptxas to fit
// (`__launch_bounds__(512, n)`): 2 (64 registers each) where that does not spill, 1
// (128 registers) for the scalar kernels and, on sm_80, f32 packs of 4, which need more.
// Left free, ptxas spends 70-90 registers and keeps 1 block of 512 threads resident.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define BLOCK_REGS_MIN_BLOCKS(T, P) ((P) > 1 && sizeof(T) == 2 ? 2 : 1)
#else
#define BLOCK_REGS_MIN_BLOCKS(T, P) ((P) > 1 ? 2 : 1)
#endif

// Blocks of 512 threads per multiprocessor the kernels that stream a row (block_stream,
// split, the streaming clusters; both directions) ask ptxas to fit (`__launch_bounds__(512,
// n)`): 2 (64 registers, as the planner counts the clusters: src/plan.rs,
// CLUSTER_KERNEL_REGISTERS) for 16-byte packs, 3 (40) for single elements. Left free, v17's
// loops over whole packs took up to 90 registers (16-bit forward); at 3 blocks the 16-byte
// ones spill, at 4 the single-element backward cluster does.
#define STREAM_MIN_BLOCKS(P) ((P) > 1 ? 2 : 3)
// The split kernels (not planned; their variants): 2, 64 registers, as the planner counts
// them (src/plan.rs, SPLIT_REGISTERS); at 3 the single-element forward write spills.
#define SPLIT_MIN_BLOCKS 2

// Whether a kernel of type T and packs of P keeps its 16-bit columns as fetched, two to a
// register ("raw pairs", masked_softmax.cu's RawPairKeys): the 16-bit vector kernels.
#define RAW_PAIRS(T, P) (sizeof(T) == 2 && (P) > 1)

// Packs (or pack pairs, backward) per thread in flight in the block kernels' loops.
constexpr int LOADS_IN_FLIGHT = 4;
constexpr int PAIRS_IN_FLIGHT = 2;
// Packs a batch in the cached kernels' walks over their shared memory (for_cached_packs):
// nothing there waits on DRAM, and at 4 the 16-bit cached clusters spilled (sm_90).
constexpr int CACHED_PACKS_AT_ONCE = 2;

// A pack's slot in a cached kernel's shared memory: PACK floats at `slot`, 16-byte aligned
// where PACK is a multiple of 4 (the caches start 16-byte aligned and hold whole packs),
// read and written 16 bytes at a time. Written through a float4, NVVM still split some of
// the stores into 4-byte ones (the backward's dy slot, sm_90), so the store is PTX, with a
// memory clobber as store_pack_128's. (`st.shared` addresses the block's own shared
// memory: never hand store_slot a cluster_map pointer.)
template <int PACK>
__device__ __forceinline__ void load_slot(const float* slot, float (&v)[PACK]) {
    if constexpr (PACK % 4 == 0) {
        CHECK_ALIGNED(slot, 16);
#pragma unroll
        for (int q = 0; q < PACK / 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(slot)[q];
            v[4 * q] = f.x;
            v[4 * q + 1] = f.y;
            v[4 * q + 2] = f.z;
            v[4 * q + 3] = f.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < PACK; ++j) v[j] = slot[j];
    }
}
template <int PACK>
__device__ __forceinline__ void store_slot(float* slot, const float (&v)[PACK]) {
    if constexpr (PACK % 4 == 0) {
        CHECK_ALIGNED(slot, 16);
#ifdef MASKED_SOFTMAX_EMULATION
        memcpy(static_cast<void*>(slot), v, sizeof(v));
#else
#pragma unroll
        for (int q = 0; q < PACK / 4; ++q)
            asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(
                             uint32_t(__cvta_generic_to_shared(slot + 4 * q))),
                         "f"(v[4 * q]), "f"(v[4 * q + 1]), "f"(v[4 * q + 2]), "f"(v[4 * q + 3])
                         : "memory");
#endif
    } else {
#pragma unroll
        for (int j = 0; j < PACK; ++j) slot[j] = v[j];
    }
}

// The packs [first, last) walked as for_window_packs walks them (thread t of `step`, U
// packs a batch), with nothing to fetch: whole(i) for the whole packs, edge(i) for those
// across an edge of the window [start, end). The cached kernels' later phases, over the
// packs their fill fetched into shared memory through for_window_packs: called with the
// fill's first, last, t, step and window (any U), each thread comes back to exactly the
// slots it filled, and the whole packs skip the window's tests there too.
template <int PACK, int U, typename Whole, typename Edge>
__device__ __forceinline__ void for_cached_packs(int64_t first, int64_t last, uint32_t t, uint32_t step,
                                                 int64_t start, int64_t end, Whole whole, Edge edge) {
    struct Nothing {};
    const auto fetch_nothing = [](int64_t, Nothing&) {};
    for_window_packs<PACK, U, Nothing>(
        first, last, t, step, start, end, fetch_nothing, [&](int64_t i, const Nothing&) { whole(i); }, fetch_nothing,
        [&](int64_t i, const Nothing&) { edge(i); });
}

// ---------------------------------------------------------------- looping kernels

#include "io.cuh"
#include "mask.cuh"

// Writes +0.0 to the packs i, i + step, ... below end (packs outside the window: nothing
// read), within the row's own columns `own`. Only two packs can reach past `own` (own.start
// is under PACK: io.cuh, PackShift): pack 0 where the row starts off a pack boundary, and
// the pack across own.end; every other pack goes whole, tested by its index alone (a
// cluster's last chunk may also hold packs wholly past own.end: store_values writes
// nothing of them). (A
// loop over the whole packs alone, with the two edges apart, took 10 instructions a pack
// where this takes 17-19, but made the streaming clusters spill.)
template <typename T, int PACK>
__device__ __forceinline__ void write_zero_packs(T* row, ColumnWindow<int64_t> own, int64_t i, int64_t end,
                                                 uint32_t step) {
    float zeros[PACK];
#pragma unroll
    for (int j = 0; j < PACK; ++j) zeros[j] = 0.f;
    const int64_t whole_first = (own.start + PACK - 1) / PACK, whole_end = own.end / PACK;
    for (; i < end; i += step) {
        if (i >= whole_first && i < whole_end)
            store_whole<T, PACK>(row + i * PACK, zeros);
        else
            store_values<T, PACK>(row, i * PACK, own, zeros);  // across an edge of the row
    }
}

// The L2 eviction priorities of the kernels that read a row's valid packs twice, once for
// the statistics and once to write (block_stream, cluster_stream, split). Every resident
// block (or cluster) streams its own row, so between a pack's two reads the L2 sees every
// block's traffic: past about 64 KiB of valid f32 per row on an H100 that is more than its
// 50 MB hold, and LRU evicts the first read's lines in the order the second read asks for
// them (the cyclic worst case). So the first read keeps its lines (L2 evict_last) and the
// second is their last use (evict_first); writes stay normal (the output is the next
// kernel's input). scripts/l2-reuse-model.py (an LRU model) puts the second read's L2 hits
// at 100% for f32 rows of 65536 keys and 20-60% at 2^18, against 10-40% and 0-2% without.
// (Walking the second pass backwards would add 5-10% more at 2^18 in the model, but it
// cost the 16-bit kernels 16-28 registers: 78-92, from 62-64.) Under MASK_PLAIN_STREAM
// (CudaSoftmax::set_l2_hints(false), the benchmark's `+plain_l2` variants) the same loads
// carry evict_unchanged: no line's priority changes, so a caller's own L2 persistence is
// left alone, and lines come in as under v8's plain loads.
struct RereadPolicy {
    bool hinted;  // false under MASK_PLAIN_STREAM

    __device__ __forceinline__ static RereadPolicy of(const MaskParams& p) {
        return RereadPolicy{(p.flags & MASK_PLAIN_STREAM) == 0};
    }
    __device__ __forceinline__ L2Policy first_read() const {
        return hinted ? L2Policy::keep() : L2Policy::unchanged();
    }
    __device__ __forceinline__ L2Policy second_read() const {
        return hinted ? L2Policy::last_use() : L2Policy::unchanged();
    }
};

// The split kernels' work (masked_softmax.cu, "a row split over the grid"): every row cut
// into chunks of SPLIT_CHUNK_PACKS packs (src/plan.rs mirrors it), and the chunks of all
// rows the grid's work items, item = row * chunks + chunk, so that the work spreads over
// every block however few and uneven the rows are. Launch 1 writes each item's partial
// statistics to `partials[item]`, launch 2 merges a row's and writes its chunks.
constexpr int64_t SPLIT_CHUNK_PACKS = 2048;

struct SplitItems {
    int64_t chunks;  // per row: of the packs a row spans in its frame
    int64_t items;   // rows * chunks

    template <int PACK>
    __device__ __forceinline__ static SplitItems of(int64_t columns, int64_t rows) {
        const int64_t chunks = (packs_in<PACK>(columns) + SPLIT_CHUNK_PACKS - 1) / SPLIT_CHUNK_PACKS;
        return SplitItems{chunks, rows * chunks};
    }
};

// Launch 2 takes the items in the opposite order to launch 1's (block b: the b-th from
// the end, then every gridDim-th before it), so that it starts on the chunks launch 1 read
// last, which the L2 still holds (read under evict_last: RereadPolicy).
__device__ __forceinline__ int64_t split_item_backwards(const SplitItems& s, int64_t k) { return s.items - 1 - k; }

// The block kernels that hold one row at a time (block_regs, block_cached) load it, then
// reduce and write it with no load in flight: a multiprocessor's loads in flight are only
// those of its blocks that are loading. Their PREFETCH instances (`*_prefetch_*`: the
// benchmark's variants, CudaSoftmax::set_next_row_prefetch) have warp 0 ask the L2 for a
// row's valid scores (`a`, and `b` if not null: the backward's dy) one row of the block
// ahead: for its second row before its first, then, as it finishes each row r, for row
// r + 2 of its grid stride. So the DRAM fetches a block's next row while the block reduces
// and writes the current one, and the next row's loads hit the L2. A hint: no result
// depends on it (io.cuh, prefetch_l2). At the end of a row, where none of its values is
// live, it costs the block_regs instances 0-2 registers; at the start (for row r + 1) it
// took up to 17 more (ptxas sm_90). The block_cached ones still take 8-15 more (39 -> 47,
// 49 -> 64), which their shared memory, not registers, keeps from costing blocks.
template <bool PREFETCH, typename T>
__device__ __forceinline__ void prefetch_row_l2(const MaskParams& p, const RowIndex& index, int64_t row, const T* a,
                                                const T* b) {
    if constexpr (PREFETCH) {
        if (threadIdx.x >= 32 || row >= p.rows) return;
        const RowWindow w = row_window(p, index, row);
        const int64_t offset = row * p.row_stride;
        prefetch_l2(a + offset + w.start, a + offset + w.end);
        if (b) prefetch_l2(b + offset + w.start, b + offset + w.end);
    }
}

// Calls body(row) for every row the block handles (a grid-stride loop), under PREFETCH
// asking the L2 for its rows one ahead in `a` (and `b`, if not null) as prefetch_row_l2
// says: the block kernels that hold one row at a time (block_regs, block_cached).
template <bool PREFETCH, typename T, typename Body>
__device__ __forceinline__ void for_each_grid_row(const MaskParams& p, const RowIndex& index, const T* a, const T* b,
                                                  Body body) {
    prefetch_row_l2<PREFETCH>(p, index, int64_t(blockIdx.x) + gridDim.x, a, b);
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        body(row);
        prefetch_row_l2<PREFETCH>(p, index, row + 2 * int64_t(gridDim.x), a, b);
    }
}

// A row of a kernel that loops over it (block_cached, block_stream, cluster: any length,
// 64-bit columns), seen from its frame (PackShift).
struct RowFrame {
    RowWindow window;  // the row's valid columns in its frame
    int64_t offset;    // element offset of the frame
    int32_t lead;      // columns of the frame before the row

    template <typename T, int PACK>
    __device__ __forceinline__ static RowFrame of(const MaskParams& p, const PackShift<T, PACK>& shift,
                                                  const RowIndex& index, int64_t row) {
        const int64_t offset = row * p.row_stride;
        const int32_t lead = shift.lead(offset);
        return RowFrame{shifted(row_window(p, index, row), int64_t(lead)), offset - lead, lead};
    }
    // The row's own columns, [lead, lead + k_len): worked out where used, from k_len (a
    // kernel parameter), rather than kept in registers across the row (the cluster kernels,
    // held to 64 registers, spilled).
    __device__ __forceinline__ RowWindow own(const MaskParams& p) const { return RowWindow{lead, lead + p.k_len}; }
};

// The write pass of the looping kernels (stream_write, stream_write_grad, the cached ones)
// over the packs [begin, end) of a row's own columns (thread t of `step`): writes +0.0 to
// those wholly outside the row's window, which nothing reads, and returns the others,
// [first, last), for for_window_packs or for_cached_packs (the same packs as a pass over
// [max(begin, start's pack), min(end, end's pack)) reads, where it reads any). (The row's own columns, f.own(p), are worked out where used: kept
// across the pass, they made block_stream spill.)
struct WindowShare {
    int64_t first, last;
};
template <typename T, int PACK>
__device__ __forceinline__ WindowShare zero_outside_window(T* row, const RowFrame& f, const MaskParams& p,
                                                           int64_t begin, int64_t end, uint32_t t, uint32_t step) {
    const int64_t first = min(max(begin, f.window.start / PACK), end);
    const int64_t last = max(first, min(end, packs_in<PACK>(f.window.end)));
    write_zero_packs<T, PACK>(row, f.own(p), begin + t, first, step);
    write_zero_packs<T, PACK>(row, f.own(p), last + t, end, step);
    return WindowShare{first, last};
}

// The write phase of the cached kernels over the packs [begin, end) of a row's own columns
// (`row` at the row's frame): zeros outside the window (zero_outside_window), and for
// thread t's packs of the window, the ones it filled (for_cached_packs: the fill's walk
// over the same share, U packs a batch), out(i, values) gives pack i's PACK values, stored
// whole or, across an edge of the window, in its columns inside (+0.0 in the others,
// whatever out gave there).
template <typename T, int PACK, int U, typename Out>
__device__ __forceinline__ void write_cached(T* row, const RowFrame& f, const MaskParams& p, int64_t begin,
                                             int64_t end, Out out) {
    const RowWindow& w = f.window;
    const WindowShare share = zero_outside_window<T, PACK>(row, f, p, begin, end, threadIdx.x, blockDim.x);
    for_cached_packs<PACK, U>(
        share.first, share.last, threadIdx.x, blockDim.x, w.start, w.end,
        [&](int64_t i) {
            float values[PACK];
            out(i, values);
            store_whole<T, PACK>(row + i * PACK, values);  // a whole pack of the window: within own
        },
        [&](int64_t i) {
            float values[PACK];
            out(i, values);
            store_window<T, PACK>(row, i * PACK, f.own(p), w.start, w.end, [&](int j) { return values[j]; });
        });
}

// A split work item (SplitItems) as its kernel sees it: its row, seen from the row's frame,
// and its chunk's packs: [begin, end) to write (within the row's own columns) and
// [first, last) to read (those that reach into the row's window; empty if none do).
struct SplitChunk {
    RowFrame frame;
    int64_t row;
    int64_t begin, end;
    int64_t first, last;

    template <typename T, int PACK>
    __device__ __forceinline__ static SplitChunk of(const MaskParams& p, const PackShift<T, PACK>& shift,
                                                    const RowIndex& index, const SplitItems& s, int64_t item) {
        const int64_t row = item / s.chunks;
        const int64_t begin = (item - row * s.chunks) * SPLIT_CHUNK_PACKS;
        const RowFrame f = RowFrame::of(p, shift, index, row);
        const int64_t end = min(begin + SPLIT_CHUNK_PACKS, packs_in<PACK>(f.own(p).end));
        const int64_t first = max(begin, f.window.start / PACK);
        const int64_t last = min(end, (f.window.end + PACK - 1) / PACK);
        return SplitChunk{f, row, begin, end, first, last};
    }
};

// ---------------------------------------------------------------- rows kernels

#include "reduce.cuh"

// One row of a rows kernel, as a lane of the GROUP lanes that share it sees it.
// Rows kernels hold at most 32 floats of a row per lane (1024 columns per warp), so their
// columns are 32-bit.
struct GroupRow {
    bool active;         // false for lanes past the last row, which still join the shuffles
    int member;          // lane within the group
    ShortWindow window;  // the row's valid columns in its frame (empty when inactive)
    int64_t offset;      // element offset of the row's frame (0 when inactive)
    int32_t lead;        // the row's own columns are [lead, lead + k_len) (PackShift)
};

// A row at element `offset` with valid columns `w`, seen from its frame (PackShift).
template <typename T, int PACK>
__device__ __forceinline__ GroupRow group_row(bool active, int member, ShortWindow w, int64_t offset,
                                              const PackShift<T, PACK>& shift) {
    const int32_t lead = active ? shift.lead(offset) : 0;
    return GroupRow{active, member, shifted(w, lead), offset - lead, lead};
}

// Rows a lane takes at once in a rows kernel holding FLOATS values of a row per lane: with
// a row of a pack or two per lane, each row's loads wait on its length and then on its
// scores, so one row at a time leaves the memory system idle; R rows at once put R chains
// in flight. Up to 4, and at most 16 floats of the batch per lane. (4 rows of 4 f32 spilled
// within the 64 registers these kernels get while each lane worked out all 4 windows; v4
// and v5 took 3. With the windows shared across the warp they fit again: 60 registers.)
template <int FLOATS>
__device__ __forceinline__ constexpr int rows_at_once() {
    return FLOATS >= 16 ? 1 : (16 / FLOATS > 4 ? 4 : 16 / FLOATS);
}

// How a rows kernel finds its rows' windows: NarrowRows in 32-bit arithmetic, for every
// narrow_rows_launch (mask.cuh); WideRows in 64 bits for the others (2^31 rows or more, a
// row stride of 2^31 or more, k_len + q_len of 2^31 - 1 or more). Picked per batch of
// rows by the host's MASK_NARROW_ROWS, so that the per-row work of short rows (a length
// load, a division, the window: more instructions than a row of a few keys takes to
// reduce and write) has no 64-bit arithmetic and no launch-wide test in it: v13, 123 -> 69
// instructions a row of rows_g1_p1x1_f32 (PERFORMANCE.md, scripts/sass-path.py). Each
// fetches a row's lengths (the loads) apart from working out its window from them, so
// that the loads can be issued a batch ahead (for_each_group_rows under AHEAD).
struct NarrowRows {
    using Row = uint32_t;
    using Lengths = NarrowRowLengths;

    __device__ __forceinline__ Lengths fetch(const MaskParams& p, Row row) const {
        return fetch_narrow_row_lengths(p, row);
    }
    __device__ __forceinline__ ShortWindow window(const MaskParams& p, const Lengths& l) const {
        return window_of_narrow_row(p, l);
    }
    // Row starts are a 32-bit by 32-bit multiply apart (one wide multiply).
    __device__ __forceinline__ static int64_t offset(const MaskParams& p, Row row) {
        return int64_t(uint64_t(row) * uint32_t(p.row_stride));
    }
};

struct WideRows {
    using Row = int64_t;
    using Lengths = RowLengths;
    RowIndex index;

    __device__ __forceinline__ static WideRows of(const MaskParams& p) { return WideRows{RowIndex::of(p)}; }
    __device__ __forceinline__ Lengths fetch(const MaskParams& p, Row row) const {
        return fetch_row_lengths(p, index, row);
    }
    __device__ __forceinline__ ShortWindow window(const MaskParams& p, const Lengths& l) const {
        return narrow(window_of(p, l));
    }
    __device__ __forceinline__ static int64_t offset(const MaskParams& p, Row row) { return row * p.row_stride; }
};

// A window, or the empty one if `none`: selects rather than a branch, so that a lane past
// the last row (which works out the last row's window instead, from lengths at an address
// that exists) costs the others no divergent path around each row's length load and mask.
__device__ __forceinline__ ShortWindow none_if(bool none, ShortWindow w) {
    return ShortWindow{none ? 0 : w.start, none ? 0 : w.end};
}

// The rows of a batch that a lane fetches the lengths of, in a rows kernel of GROUP lanes a
// row taking R rows at once: a warp takes BATCH rows at once, row r of a group being batch
// row r * ROWS_PER_WARP + lane / GROUP. Where a batch has no more rows than a warp has
// lanes (SHARED), lane l fetches batch row l's alone and the groups read the R rows'
// windows from those lanes by shuffles (group_rows_of): one length load, index division
// and mask a lane, where each lane working out its own R rows took R of each, more than a
// short row's arithmetic per element. Otherwise (one row per group, or more rows than
// lanes) a lane fetches its own R rows'.
template <int GROUP, int R>
struct BatchShape {
    static constexpr int ROWS_PER_WARP = WARP / GROUP;
    static constexpr int BATCH = ROWS_PER_WARP * R;
    static constexpr bool SHARED = R > 1 && BATCH <= WARP;
    static constexpr int FETCHES = SHARED ? 1 : R;  // rows whose lengths a lane fetches

    // Batch row of a lane's row r, and of its fetch n.
    __device__ __forceinline__ static int lane_row(int r, int lane) { return r * ROWS_PER_WARP + lane / GROUP; }
    __device__ __forceinline__ static int fetched_row(int n, int lane) { return SHARED ? lane : lane_row(n, lane); }
};

// The lengths a lane fetches for a batch (BatchShape), as loaded: all of them in flight
// before any is used.
template <typename Rows, int GROUP, int R>
struct BatchLengths {
    typename Rows::Lengths of[BatchShape<GROUP, R>::FETCHES];
};

// Row `batch_row` of the batch from `base`, or the last row for a lane past it (whose
// lengths exist; its window is then emptied by none_if): `active` says which. (In the
// SHARED shape a lane past the batch fetches row base + lane's, one of the next batch's or
// the last row, and group_rows_of discards its window.)
template <typename Rows>
__device__ __forceinline__ typename Rows::Row row_or_last(const MaskParams& p, int64_t base, int batch_row,
                                                          bool& active) {
    using Row = typename Rows::Row;
    // base <= rows, so base + a batch's rows fits a narrow row (and rows themselves do).
    const Row row = Row(base) + Row(batch_row), rows_total = Row(p.rows);
    active = row < rows_total;
    return active ? row : rows_total - 1;
}

// Issues the length loads of a lane's rows of the batch from `base` (base <= rows: from
// rows, every lane fetches the last row's).
template <typename Rows, int GROUP, int R>
__device__ __forceinline__ BatchLengths<Rows, GROUP, R> fetch_batch_lengths(const MaskParams& p, const Rows& rule,
                                                                            int64_t base) {
    using Shape = BatchShape<GROUP, R>;
    const int lane = threadIdx.x % WARP;
    BatchLengths<Rows, GROUP, R> l;
#pragma unroll
    for (int n = 0; n < Shape::FETCHES; ++n) {
        bool active;
        l.of[n] = rule.fetch(p, row_or_last<Rows>(p, base, Shape::fetched_row(n, lane), active));
    }
    return l;
}

// A lane's row r of the batch from `base` (BatchShape::lane_row) with the valid columns
// `window` worked out from its lengths (emptied for a lane past the last row): for
// for_each_group_rows under Ahead::rows, which works the windows out a batch ahead.
template <typename Rows, int GROUP, int R, typename T, int PACK>
__device__ __forceinline__ GroupRow lane_group_row(const MaskParams& p, const PackShift<T, PACK>& shift, int64_t base,
                                                   int r, ShortWindow window) {
    using Row = typename Rows::Row;
    const int lane = threadIdx.x % WARP;
    bool active;
    const Row row = row_or_last<Rows>(p, base, BatchShape<GROUP, R>::lane_row(r, lane), active);
    return group_row(active, lane % GROUP, none_if(!active, window), Rows::offset(p, active ? row : Row(0)), shift);
}

// The R rows a lane takes from the batch from `base` (GroupRow, for_each_group_rows), from
// the lengths fetch_batch_lengths fetched for it, worked out in the arithmetic of Rows.
template <typename Rows, int GROUP, int R, typename T, int PACK>
__device__ __forceinline__ void group_rows_of(const MaskParams& p, const Rows& rule, const PackShift<T, PACK>& shift,
                                              int64_t base, const BatchLengths<Rows, GROUP, R>& lengths,
                                              GroupRow (&rows)[R]) {
    using Shape = BatchShape<GROUP, R>;
    using Row = typename Rows::Row;
    const int lane = threadIdx.x % WARP;
    if constexpr (Shape::SHARED) {
        // Lane l works out batch row l's window (lanes past the batch or the rows, none).
        const bool own_active = lane < Shape::BATCH && Row(base) + Row(lane) < Row(p.rows);
        const ShortWindow own = none_if(!own_active, rule.window(p, lengths.of[0]));
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int batch_row = Shape::lane_row(r, lane);
            bool active;
            const Row row = row_or_last<Rows>(p, base, batch_row, active);
            const ShortWindow window{__shfl_sync(FULL_MASK, own.start, batch_row),
                                     __shfl_sync(FULL_MASK, own.end, batch_row)};
            rows[r] = group_row(active, lane % GROUP, window, Rows::offset(p, active ? row : Row(0)), shift);
        }
    } else {
        // (As lane_group_row does, written out: calling it here moved the registers of
        // 39 of the planned rows kernels, by -8 to +8.)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            bool active;
            const Row row = row_or_last<Rows>(p, base, Shape::lane_row(r, lane), active);
            rows[r] = group_row(active, lane % GROUP, none_if(!active, rule.window(p, lengths.of[r])),
                                Rows::offset(p, active ? row : Row(0)), shift);
        }
    }
}

// What the `_prefetch_` instances of the rows kernels fetch ahead (for_each_group_rows;
// src/plan.rs, KernelKind::fetch_ahead): nothing (the planned kernels), each batch's
// lengths a batch ahead (v14: the short rows, 1 to 64 keys), or the next batch's
// rows asked of the L2 with lengths two batches ahead (v19: a row a group at a time).
enum class Ahead { none, lengths, rows };

// Under Ahead::rows (a row a group of lanes at a time: R == 1), the leader of each group
// (member 0) asks the L2 for its row of the batch from `base`: the row's valid scores
// (`window`, as worked out from its lengths) in `a`, and in `b` if not null (the
// backward's dy). Rows past the last are not asked for.
template <int GROUP, typename T>
__device__ __forceinline__ void prefetch_batch_rows_l2(const MaskParams& p, int64_t base, const ShortWindow& window,
                                                       const T* a, const T* b) {
    const int lane = threadIdx.x % WARP;
    bool active;
    const uint32_t row = row_or_last<NarrowRows>(p, base, BatchShape<GROUP, 1>::lane_row(0, lane), active);
    if (!active || lane % GROUP != 0) return;
    const int64_t offset = NarrowRows::offset(p, row);
    prefetch_l2_lane(a + offset + window.start, a + offset + window.end);
    if (b) prefetch_l2_lane(b + offset + window.start, b + offset + window.end);
}

// Calls body(const GroupRow (&)[R]) for every batch of R rows a lane handles, GROUP lanes
// per row (32 / GROUP rows per warp), each seen from its frame by `shift`, over a
// grid-stride loop that is warp-uniform: every lane of a warp makes the same calls, so a
// body may shuffle across the warp with a full mask. Lane `member` of a group owns the
// packs at columns (i * GROUP + member) * PACK. (Only the rows' windows and offsets are
// worked out two ways, NarrowRows or WideRows, by a test per batch: a body compiled twice
// took up to 7 registers more, and spilled.)
//
// Under AHEAD (the `_prefetch_` instances of the rows kernels: src/plan.rs,
// KernelKind::fetch_ahead) a narrow_rows_launch fetches ahead, in one of two ways:
// - Ahead::lengths (v14; the short rows of 1 to 64 keys): each batch's lengths a
//   batch ahead. The next batch's length loads are issued after the current batch's
//   windows are worked out and before the body issues its score loads, so that a short
//   row's two dependent loads (its length, then its scores) overlap the next batch's
//   first instead of taking two memory latencies in turn. The price: three registers a
//   fetched row (NarrowRowLengths) held across the body, and a few instructions a batch;
//   in the forward ptxas no longer hoists the scale's test out of the rows (sm_90
//   rows_g1_p1x1_f32: 79 instructions a row against 67.5; PERFORMANCE.md, v14).
// - Ahead::rows (v19; 77 to 1024 keys, a row a group at a time): each batch's lengths two
//   batches ahead, and before the body the next batch's valid scores in `a` (and `b`)
//   asked of the L2 (prefetch_batch_rows_l2), so that the DRAM fetches a warp's next rows
//   while it reduces and writes the current ones, and their loads then wait on the L2,
//   not on DRAM (as the block kernels' for_each_grid_row under PREFETCH).
// (The 64-bit path, for giant launches alone, fetches in turn.)
template <Ahead AHEAD, int GROUP, int R, typename T, int PACK, typename Body>
__device__ __forceinline__ void for_each_group_rows(const MaskParams& p, const PackShift<T, PACK>& shift, const T* a,
                                                    const T* b, Body body) {
    constexpr int BATCH = BatchShape<GROUP, R>::BATCH;
    constexpr bool ASK_L2 = AHEAD == Ahead::rows;
    static_assert(!ASK_L2 || R == 1, "the L2 is asked for a row a group of lanes");
    const bool narrow_launch = narrow_rows_launch(p);
    const int64_t warps_per_block = blockDim.x / WARP;
    const int64_t first_warp = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / WARP;
    const int64_t step = int64_t(gridDim.x) * warps_per_block * BATCH;
    int64_t base = first_warp * BATCH;
    // The batch from `from`, or (past the last batch) the last row's again: no branch.
    const auto fetch_from = [&](int64_t from) {
        return fetch_batch_lengths<NarrowRows, GROUP, R>(p, NarrowRows{}, from < p.rows ? from : p.rows);
    };
    // Ahead::lengths: the batch's, fetched a batch ahead; Ahead::rows: the next batch's,
    // fetched two ahead.
    BatchLengths<NarrowRows, GROUP, R> ahead{};
    ShortWindow window{};  // Ahead::rows: the window of the lane's row, worked out a batch ahead
    if (AHEAD != Ahead::none && narrow_launch && base < p.rows) {
        ahead = fetch_batch_lengths<NarrowRows, GROUP, R>(p, NarrowRows{}, base);
        if constexpr (ASK_L2) {
            window = NarrowRows{}.window(p, ahead.of[0]);
            ahead = fetch_from(base + step);
        }
    }
    for (; base < p.rows; base += step) {
        GroupRow rows[R];
        if (narrow_launch) {
            if constexpr (ASK_L2) {
                rows[0] = lane_group_row<NarrowRows, GROUP, R>(p, shift, base, 0, window);
                const int64_t next = base + step;
                window = NarrowRows{}.window(p, ahead.of[0]);
                prefetch_batch_rows_l2<GROUP>(p, next < p.rows ? next : p.rows, window, a, b);
                ahead = fetch_from(next + step);
            } else if constexpr (AHEAD == Ahead::lengths) {
                group_rows_of<NarrowRows, GROUP, R>(p, NarrowRows{}, shift, base, ahead, rows);
                ahead = fetch_from(base + step);
            } else {
                group_rows_of<NarrowRows, GROUP, R>(p, NarrowRows{}, shift, base,
                                                    fetch_batch_lengths<NarrowRows, GROUP, R>(p, NarrowRows{}, base),
                                                    rows);
            }
        } else {
            const WideRows wide = WideRows::of(p);
            group_rows_of<WideRows, GROUP, R>(p, wide, shift, base,
                                              fetch_batch_lengths<WideRows, GROUP, R>(p, wide, base), rows);
        }
        body(rows);
    }
}

template <int GROUP, int PACK>
__device__ __forceinline__ int32_t lane_pack_column(int i, int member) {
    return (i * GROUP + member) * PACK;
}

// Fetches a lane's PACKS packs of each of its R rows (in flight together: see fetch_window).
template <typename T, int PACK, int PACKS, int GROUP, int R>
__device__ __forceinline__ void fetch_group_rows(const T* in, const GroupRow (&rows)[R],
                                                 RawPack<T, PACK> (&raw)[R][PACKS]) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < PACKS; ++i)
            fetch_window<T, PACK>(in + rows[r].offset, lane_pack_column<GROUP, PACK>(i, rows[r].member),
                                  rows[r].window.start, rows[r].window.end, raw[r][i]);
}

// The same for the backward's two inputs: the packs of y and of dy at the same columns.
template <typename T, int PACK, int PACKS, int GROUP, int R>
__device__ __forceinline__ void fetch_group_row_pairs(const T* y, const T* dy, const GroupRow (&rows)[R],
                                                      PackPair<T, PACK> (&raw)[R][PACKS]) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            const int32_t col = lane_pack_column<GROUP, PACK>(i, rows[r].member);
            const ShortWindow& w = rows[r].window;
            fetch_window<T, PACK>(y + rows[r].offset, col, w.start, w.end, raw[r][i].y);
            fetch_window<T, PACK>(dy + rows[r].offset, col, w.start, w.end, raw[r][i].dy);
        }
}

// Whether a rows kernel of GROUP lanes a row, PACKS packs a lane, takes packs across the
// window's edge as whole ones (decode_window, store_window: SELECT_EDGE): where a warp holds
// at least as many rows (32 / GROUP) as a lane holds packs. Then, at most of its pack
// indices, the warp holds packs inside, across and outside the windows at once, and the
// select spares it the per-column path. With fewer rows, more pack indices lie wholly outside for the
// whole warp, which the per-pack branches skip for a few moves and the select would decode
// and value: sm_90 rows_g32_p4x8_f32 (k=1000) takes 24 instructions more for each
// such pack, some 3.5 a row, against about 35 fewer for the one across the edge, and
// rows_g16_p4x4_f32 (k=256, 2 rows) comes out even (PERFORMANCE.md v15).
template <int GROUP, int PACKS>
__device__ __forceinline__ constexpr bool select_edge() {
    return WARP / GROUP >= PACKS;
}

// Writes a lane's PACKS packs of row `r`: value(i, j) for element j of pack i inside the
// row's window, exact +0.0 outside it; nothing for inactive lanes or outside the row.
// Under select_edge, value is asked for every element (store_window).
template <typename T, int PACK, int PACKS, int GROUP, typename Value>
__device__ __forceinline__ void store_group_row(T* out, const GroupRow& r, int32_t k_len, Value value) {
    if (!r.active) return;
    const ShortWindow own{r.lead, r.lead + k_len};
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
        const int32_t col = lane_pack_column<GROUP, PACK>(i, r.member);
        if (col >= own.end) break;
        store_window<T, PACK, select_edge<GROUP, PACKS>()>(out + r.offset, col, own, r.window.start,
                                                          r.window.end, [&](int j) { return value(i, j); });
    }
}

// ---------------------------------------------------------------- block_regs kernels

// One row of a block_regs kernel (a block per row, the row in registers across the block).
// Its rows are at most 512 * 32 columns (src/plan.rs, Problem::configure): 32-bit columns.
struct BlockRow {
    ShortWindow window;  // the row's valid columns in its frame
    int64_t offset;      // element offset of the row's frame
    ShortWindow own;     // the row's own columns in its frame: [lead, lead + k_len) (PackShift)
};

// Calls body(const BlockRow&) for every row the block handles (a grid-stride loop), each
// seen from its frame by `shift` (for_each_grid_row: the prefetch under PREFETCH).
template <bool PREFETCH, typename T, int PACK, typename Body>
__device__ __forceinline__ void for_each_block_row(const MaskParams& p, const PackShift<T, PACK>& shift, const T* a,
                                                   const T* b, Body body) {
    const RowIndex index = RowIndex::of(p);
    for_each_grid_row<PREFETCH>(p, index, a, b, [&](int64_t row) {
        const int64_t offset = row * p.row_stride;
        const int32_t lead = shift.lead(offset);
        body(BlockRow{shifted(narrow(row_window(p, index, row)), lead), offset - lead,
                      ShortWindow{lead, int32_t(lead + p.k_len)}});
    });
}

// Column of a thread's pack i: thread t holds packs t, t + blockDim, t + 2 blockDim, ...
template <int PACK>
__device__ __forceinline__ int32_t block_pack_column(int i) {
    return int32_t((i * blockDim.x + threadIdx.x) * PACK);
}

// Fetches a thread's PACKS packs of a row (in flight together: see fetch_window).
template <typename T, int PACK, int PACKS>
__device__ __forceinline__ void fetch_block_row(const T* row, const ShortWindow& w, RawPack<T, PACK> (&raw)[PACKS]) {
#pragma unroll
    for (int i = 0; i < PACKS; ++i) fetch_window<T, PACK>(row, block_pack_column<PACK>(i), w.start, w.end, raw[i]);
}

// The same for the backward's two inputs.
template <typename T, int PACK, int PACKS>
__device__ __forceinline__ void fetch_block_row_pairs(const T* y, const T* dy, const ShortWindow& w,
                                                      PackPair<T, PACK> (&raw)[PACKS]) {
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
        fetch_window<T, PACK>(y, block_pack_column<PACK>(i), w.start, w.end, raw[i].y);
        fetch_window<T, PACK>(dy, block_pack_column<PACK>(i), w.start, w.end, raw[i].dy);
    }
}
