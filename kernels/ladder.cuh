// The instantiation ladders of the rows kernels, shared by the forward and the backward:
// ROWS(SUFFIX, T, G, P, N) defines one kernel with G lanes per row and N packs of P
// elements per lane. src/plan.rs (KernelKind::all) lists the same set.
#pragma once

// Short rows: G = 1 .. 32 lanes per row, one pack each.
#define ROWS_GROUP_LADDER(ROWS, SUFFIX, T, P) \
    ROWS(SUFFIX, T, 1, P, 1)                  \
    ROWS(SUFFIX, T, 2, P, 1)                  \
    ROWS(SUFFIX, T, 4, P, 1)                  \
    ROWS(SUFFIX, T, 8, P, 1)                  \
    ROWS(SUFFIX, T, 16, P, 1)                 \
    ROWS(SUFFIX, T, 32, P, 1)

// Medium rows: a whole warp per row, 2 .. MAX packs per lane (src/plan.rs, max_packs: 32
// floats of the row per lane forward, 16 of y and 16 of dy backward).
#define ROWS_WARP_LADDER_2(ROWS, SUFFIX, T, P) ROWS(SUFFIX, T, 32, P, 2)
#define ROWS_WARP_LADDER_4(ROWS, SUFFIX, T, P) \
    ROWS_WARP_LADDER_2(ROWS, SUFFIX, T, P)     \
    ROWS(SUFFIX, T, 32, P, 4)
#define ROWS_WARP_LADDER_8(ROWS, SUFFIX, T, P) \
    ROWS_WARP_LADDER_4(ROWS, SUFFIX, T, P)     \
    ROWS(SUFFIX, T, 32, P, 8)
#define ROWS_WARP_LADDER_16(ROWS, SUFFIX, T, P) \
    ROWS_WARP_LADDER_8(ROWS, SUFFIX, T, P)      \
    ROWS(SUFFIX, T, 32, P, 16)
#define ROWS_WARP_LADDER_32(ROWS, SUFFIX, T, P) \
    ROWS_WARP_LADDER_16(ROWS, SUFFIX, T, P)     \
    ROWS(SUFFIX, T, 32, P, 32)
