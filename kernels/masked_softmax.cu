// Length-masked softmax forward, one family of kernels, picked by src/plan.rs:
//
//   masked_softmax_fwd_rows_g<G>_p<P>x<N>_<dtype>   GROUP = G lanes per row (G rows per
//       warp for G < 32), each lane holding N packs of P elements in registers: one read
//       of the valid scores, one write of the row. For rows up to G * P * N columns.
//   masked_softmax_fwd_block_cached_p<P>_<dtype>    one block per row, keys cached in
//       dynamic shared memory: one read, one write. For rows that fit on chip.
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

// ---------------------------------------------------------------- rows in registers

template <typename T, int PACK, int PACKS, int GROUP>
__device__ __forceinline__ void rows_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    for_each_group_row<GROUP>(p, [&](const GroupRow& r) {
        float keys[PACKS][PACK];
        float max_key = -CUDART_INF_F;
#pragma unroll
        for (int i = 0; i < PACKS; ++i) {
            const int64_t col = lane_pack_column<GROUP, PACK>(i, r.member);
            load_keys<T, PACK>(x + r.offset, col, r.window.start, r.window.end, sm, keys[i]);
#pragma unroll
            for (int j = 0; j < PACK; ++j) max_key = max_nan(max_key, keys[i][j]);
        }
        max_key = group_max<GROUP>(max_key);
        const bool zero_row = max_key == -CUDART_INF_F;

        float sum = 0.f;
#pragma unroll
        for (int i = 0; i < PACKS; ++i)
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                keys[i][j] = zero_row ? 0.f : sm.weight(keys[i][j], max_key);
                sum += keys[i][j];
            }
        sum = group_sum<GROUP>(sum);

        store_group_row<T, PACK, PACKS, GROUP>(y, r, p.k_len, [&](int i, int j) {
            return zero_row ? 0.f : keys[i][j] / sum;
        });
    });
}

// ---------------------------------------------------------------- one block per row

// Keys cached in shared memory: thread t owns packs t, t + blockDim, ... in every phase
// and is the only one to touch their slots, so only the reductions need barriers.
template <typename T, int PACK>
__device__ __forceinline__ void block_cached_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    float* cache = dynamic_shared<float>();
    float* scratch = cache + packs_in<PACK>(p.k_len) * PACK;
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowWindow w = row_window(p, row);
        const int64_t offset = row * p.row_stride;
        const int64_t first_pack = w.start / PACK, end_pack = (w.end + PACK - 1) / PACK;

        const int64_t mine = first_owned(first_pack, threadIdx.x, blockDim.x);

        float max_key = -CUDART_INF_F;
        for (int64_t i = mine; i < end_pack; i += blockDim.x) {
            float keys[PACK];
            load_keys<T, PACK>(x + offset, i * PACK, w.start, w.end, sm, keys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                max_key = max_nan(max_key, keys[j]);
                cache[i * PACK + j] = keys[j];
            }
        }
        max_key = block_max(max_key, scratch);
        const bool zero_row = max_key == -CUDART_INF_F;

        float sum = 0.f;
        for (int64_t i = mine; i < end_pack && !zero_row; i += blockDim.x)
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const float weight = sm.weight(cache[i * PACK + j], max_key);
                cache[i * PACK + j] = weight;
                sum += weight;
            }
        sum = block_sum(sum, scratch);

        for (int64_t i = threadIdx.x; i < packs_in<PACK>(p.k_len); i += blockDim.x) {
            float out[PACK];
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const int64_t c = i * PACK + j;
                out[j] = (!zero_row && c >= w.start && c < w.end) ? cache[c] / sum : 0.f;
            }
            store_values<T, PACK>(y + offset, i * PACK, p.k_len, out);
        }
    }
}

// Any row length: online statistics over the valid scores, then a second read to write.
template <typename T, int PACK>
__device__ __forceinline__ void block_stream_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    float2* scratch = dynamic_shared<float2>();
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const RowWindow w = row_window(p, row);
        const int64_t offset = row * p.row_stride;
        const int64_t first_pack = w.start / PACK, end_pack = (w.end + PACK - 1) / PACK;

        SoftmaxStats st = stats_empty();
        for (int64_t i = first_pack + threadIdx.x; i < end_pack; i += blockDim.x) {
            float keys[PACK];
            load_keys<T, PACK>(x + offset, i * PACK, w.start, w.end, sm, keys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) stats_add(st, keys[j], sm);
        }
        st = block_stats_merge(st, scratch, sm);

        for (int64_t i = threadIdx.x; i < packs_in<PACK>(p.k_len); i += blockDim.x) {
            float keys[PACK], out[PACK];
            load_keys<T, PACK>(x + offset, i * PACK, w.start, w.end, sm, keys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const int64_t c = i * PACK + j;
                out[j] = (c >= w.start && c < w.end) ? stats_probability(st, keys[j], sm) : 0.f;
            }
            store_values<T, PACK>(y + offset, i * PACK, p.k_len, out);
        }
    }
}

// ---------------------------------------------------------------- a cluster per row

#if MASKED_SOFTMAX_HAS_CLUSTERS
// Block `rank` of a cluster of `csize` owns packs [rank * chunk, (rank + 1) * chunk) of
// every row its cluster handles. Pass 1 gathers the chunk's statistics (caching its keys in
// shared memory if CACHED); the blocks publish them in shared memory, sync the cluster, and
// every block merges all of them in the same order, so all agree; a second cluster sync
// keeps the published statistics alive until every block has read them. Pass 2 writes the
// chunk. Dynamic shared memory: [published float2][32 float2 scratch][cache].
template <typename T, int PACK, bool CACHED>
__device__ __forceinline__ void cluster_forward(const T* x, T* y, const MaskParams& p) {
    const ScaleMap sm = ScaleMap::of(p.scale);
    const unsigned rank = cluster_rank(), csize = cluster_size();
    const int64_t clusters = gridDim.x / csize;
    const int64_t row_packs = packs_in<PACK>(p.k_len);
    const int64_t chunk = (row_packs + csize - 1) / csize;
    const int64_t chunk_begin = min(row_packs, int64_t(rank) * chunk);
    const int64_t chunk_end = min(row_packs, chunk_begin + chunk);
    float2* published = dynamic_shared<float2>();
    float2* scratch = published + 1;
    float* cache = reinterpret_cast<float*>(scratch + WARP);

    for (int64_t row = blockIdx.x / csize; row < p.rows; row += clusters) {
        const RowWindow w = row_window(p, row);
        const int64_t offset = row * p.row_stride;
        const int64_t first = max(chunk_begin, w.start / PACK);
        const int64_t last = min(chunk_end, (w.end + PACK - 1) / PACK);

        SoftmaxStats st = stats_empty();
        for (int64_t i = first_owned(first, chunk_begin + threadIdx.x, blockDim.x); i < last; i += blockDim.x) {
            float keys[PACK];
            load_keys<T, PACK>(x + offset, i * PACK, w.start, w.end, sm, keys);
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                stats_add(st, keys[j], sm);
                if (CACHED) cache[(i - chunk_begin) * PACK + j] = keys[j];
            }
        }
        st = block_stats_merge(st, scratch, sm);
        if (threadIdx.x == 0) *published = make_float2(st.max_key, st.sum);
        cluster_sync();
        SoftmaxStats row_stats = stats_empty();
        for (unsigned r = 0; r < csize; ++r) {
            const float2 part = *cluster_map(published, r);
            row_stats = stats_merge(row_stats, SoftmaxStats{part.x, part.y}, sm);
        }
        cluster_sync();

        for (int64_t i = chunk_begin + threadIdx.x; i < chunk_end; i += blockDim.x) {
            float keys[PACK], out[PACK];
            if (CACHED) {
#pragma unroll
                for (int j = 0; j < PACK; ++j) keys[j] = cache[(i - chunk_begin) * PACK + j];
            } else {
                load_keys<T, PACK>(x + offset, i * PACK, w.start, w.end, sm, keys);
            }
#pragma unroll
            for (int j = 0; j < PACK; ++j) {
                const int64_t c = i * PACK + j;
                out[j] = (c >= w.start && c < w.end) ? stats_probability(row_stats, keys[j], sm) : 0.f;
            }
            store_values<T, PACK>(y + offset, i * PACK, p.k_len, out);
        }
    }
}
#endif

// ---------------------------------------------------------------- instantiations
// The Rust planner (src/plan.rs, KernelKind::all) lists exactly these names.

#define ROWS_KERNEL(SUFFIX, T, G, P, N)                                                              \
    extern "C" __global__ void masked_softmax_fwd_rows_g##G##_p##P##x##N##_##SUFFIX(const T* x, T* y, \
                                                                                    MaskParams p) { \
        rows_forward<T, P, N, G>(x, y, p);                                                          \
    }                                                                                               \
    REGISTER_KERNEL(masked_softmax_fwd_rows_g##G##_p##P##x##N##_##SUFFIX)

#define BLOCK_KERNELS(SUFFIX, T, P)                                                                      \
    extern "C" __global__ void masked_softmax_fwd_block_cached_p##P##_##SUFFIX(const T* x, T* y,         \
                                                                               MaskParams p) {          \
        block_cached_forward<T, P>(x, y, p);                                                            \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_block_cached_p##P##_##SUFFIX)                                    \
    extern "C" __global__ void masked_softmax_fwd_block_stream_p##P##_##SUFFIX(const T* x, T* y,         \
                                                                               MaskParams p) {          \
        block_stream_forward<T, P>(x, y, p);                                                            \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_block_stream_p##P##_##SUFFIX)

#if MASKED_SOFTMAX_HAS_CLUSTERS
#define CLUSTER_KERNEL(SUFFIX, T, P, MODE, CACHED)                                                       \
    extern "C" __global__ void masked_softmax_fwd_cluster_##MODE##_p##P##_##SUFFIX(const T* x, T* y,       \
                                                                                 MaskParams p) {        \
        cluster_forward<T, P, CACHED>(x, y, p);                                                         \
    }                                                                                                   \
    REGISTER_KERNEL(masked_softmax_fwd_cluster_##MODE##_p##P##_##SUFFIX)
#define CLUSTER_KERNELS(SUFFIX, T, P)             \
    CLUSTER_KERNEL(SUFFIX, T, P, cached, true)    \
    CLUSTER_KERNEL(SUFFIX, T, P, stream, false)
#else
#define CLUSTER_KERNELS(SUFFIX, T, P)
#endif

// Per type: 16-byte packs (P = 16 / sizeof(T)) where aligned, single elements otherwise.
#define TYPE_KERNELS(SUFFIX, T, VP)                  \
    ROWS_GROUP_LADDER(ROWS_KERNEL, SUFFIX, T, VP)    \
    ROWS_WARP_LADDER_8(ROWS_KERNEL, SUFFIX, T, VP)   \
    BLOCK_KERNELS(SUFFIX, T, VP)                     \
    CLUSTER_KERNELS(SUFFIX, T, VP)                   \
    ROWS_GROUP_LADDER(ROWS_KERNEL, SUFFIX, T, 1)     \
    ROWS_WARP_LADDER_32(ROWS_KERNEL, SUFFIX, T, 1)   \
    BLOCK_KERNELS(SUFFIX, T, 1)                      \
    CLUSTER_KERNELS(SUFFIX, T, 1)

TYPE_KERNELS(f32, float, 4)
TYPE_KERNELS(f16, __half, 8)
TYPE_KERNELS(bf16, __nv_bfloat16, 8)
