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

// Short rows of 16-byte packs over fewer lanes: 8 or 16 lanes per row (8 lanes of 16 bytes
// fill a 128-byte line) with 2 or 4 packs each (src/plan.rs, rows_shape), so that a row's
// two reductions take 3 or 4 shuffle steps instead of 5 and each lane spreads its per-row
// work over more columns. _2: up to 2 packs per lane (the 16-bit backward); _4: up to 4.
#define ROWS_SPLIT_LADDER_2(ROWS, SUFFIX, T, P) \
    ROWS(SUFFIX, T, 8, P, 2)                    \
    ROWS(SUFFIX, T, 16, P, 2)
#define ROWS_SPLIT_LADDER_4(ROWS, SUFFIX, T, P) \
    ROWS(SUFFIX, T, 8, P, 2)                    \
    ROWS(SUFFIX, T, 8, P, 4)                    \
    ROWS(SUFFIX, T, 16, P, 4)

// Tiny rows of single elements (rows misaligned for 16-byte packs, up to 8 columns): one
// lane per row holding 2, 4 or 8 columns, so a warp has 32 rows (times rows_at_once) in
// flight where the group ladder's G lanes of one column each hold 32 / G.
#define ROWS_LANE_LADDER(ROWS, SUFFIX, T) \
    ROWS(SUFFIX, T, 1, 1, 2)              \
    ROWS(SUFFIX, T, 1, 1, 4)              \
    ROWS(SUFFIX, T, 1, 1, 8)

// The forward's 16-bit short rows with f32 keys instead of raw pairs (src/plan.rs,
// KernelKind::RowsKeys): the shapes rows_shape gives 16-bit forward rows up to 512 keys;
// the planner takes those of up to 2 packs a lane, the benchmark's variants the others.
#define ROWS_KEYS_LADDER(ROWS, SUFFIX, T, P) \
    ROWS_GROUP_LADDER(ROWS, SUFFIX, T, P)    \
    ROWS_SPLIT_LADDER_4(ROWS, SUFFIX, T, P)

// Medium rows: a whole warp per row, 2 .. MAX packs per lane (src/plan.rs, max_packs: 32
// floats of the row per lane forward, 16 of y and 16 of dy backward, 32 of each as 16-bit
// raw pairs).
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

// The rows kernels the planner gives rows of 1, 7, 32 and 64 keys, in every type, compiled
// again to fetch each batch's lengths a batch ahead (src/plan.rs, KernelKind::prefetch_name
// lists the same): ROWS for the f32 ones and the 16-bit single-element ones, ROWS16 for the
// 16-bit ones of 16-byte packs (f32 keys forward, raw pairs backward).
#define SHORT_ROWS_PREFETCH_LADDER(ROWS, ROWS16) \
    ROWS(f32, float, 1, 1, 1)                   \
    ROWS(f32, float, 8, 1, 1)                   \
    ROWS(f32, float, 8, 4, 1)                   \
    ROWS(f32, float, 8, 4, 2)                   \
    ROWS(f16, __half, 1, 1, 1)                  \
    ROWS(f16, __half, 1, 1, 8)                  \
    ROWS16(f16, __half, 4, 8, 1)                \
    ROWS16(f16, __half, 8, 8, 1)                \
    ROWS(bf16, __nv_bfloat16, 1, 1, 1)          \
    ROWS(bf16, __nv_bfloat16, 1, 1, 8)          \
    ROWS16(bf16, __nv_bfloat16, 4, 8, 1)        \
    ROWS16(bf16, __nv_bfloat16, 8, 8, 1)
