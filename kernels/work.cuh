// How kernels split rows into work: packs per row, which packs a thread owns, and the
// dynamic shared memory of a block.
#pragma once
#include <stdint.h>

#include "emulation.cuh"

template <int PACK>
__device__ __forceinline__ int64_t packs_in(int64_t k_len) {
    return (k_len + PACK - 1) / PACK;
}

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

// The first pack at or after `first` that thread `t` owns when thread t owns packs
// t, t + step, t + 2 step, ...
__device__ __forceinline__ int64_t first_owned(int64_t first, int64_t t, int64_t step) {
    return first + ((t - first) % step + step) % step;
}

// ---------------------------------------------------------------- rows kernels

#include "io.cuh"
#include "mask.cuh"
#include "reduce.cuh"

// One row of a rows kernel, as a lane of the GROUP lanes that share it sees it.
struct GroupRow {
    bool active;       // false for lanes past the last row, which still join the shuffles
    int member;        // lane within the group
    RowWindow window;  // the row's valid columns (empty when inactive)
    int64_t offset;    // element offset of the row (0 when inactive)
};

// Calls body(const GroupRow&) for every row, GROUP lanes per row (GROUP rows per warp below
// 32), over a grid-stride loop that is warp-uniform: every lane of a warp makes the same
// calls, so a body may shuffle across the warp with a full mask. Lane `member` of a group
// owns the packs at columns (i * GROUP + member) * PACK.
template <int GROUP, typename Body>
__device__ __forceinline__ void for_each_group_row(const MaskParams& p, Body body) {
    constexpr int ROWS_PER_WARP = WARP / GROUP;
    const int lane = threadIdx.x % WARP;
    const int64_t warps_per_block = blockDim.x / WARP;
    const int64_t first_warp = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / WARP;
    const int64_t warp_step = int64_t(gridDim.x) * warps_per_block;
    for (int64_t base = first_warp * ROWS_PER_WARP; base < p.rows; base += warp_step * ROWS_PER_WARP) {
        const int64_t row = base + lane / GROUP;
        const bool active = row < p.rows;
        const GroupRow r{active, lane % GROUP, active ? row_window(p, row) : RowWindow{0, 0},
                         (active ? row : 0) * p.row_stride};
        body(r);
    }
}

template <int GROUP, int PACK>
__device__ __forceinline__ int64_t lane_pack_column(int i, int member) {
    return (int64_t(i) * GROUP + member) * PACK;
}

// Writes a lane's PACKS packs of row `r`: value(i, j) for element j of pack i inside the
// row's window, exact +0.0 outside it; nothing for inactive lanes or past k_len.
template <typename T, int PACK, int PACKS, int GROUP, typename Value>
__device__ __forceinline__ void store_group_row(T* out, const GroupRow& r, int64_t k_len, Value value) {
    if (!r.active) return;
#pragma unroll
    for (int i = 0; i < PACKS; ++i) {
        const int64_t col = lane_pack_column<GROUP, PACK>(i, r.member);
        if (col >= k_len) break;
        float values[PACK];
#pragma unroll
        for (int j = 0; j < PACK; ++j) {
            const int64_t c = col + j;
            values[j] = (c >= r.window.start && c < r.window.end) ? value(i, j) : 0.f;
        }
        store_values<T, PACK>(out + r.offset, col, k_len, values);
    }
}
