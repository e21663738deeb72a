// Thread-block clusters (compute capability 9.0+): the blocks of a cluster run at the same
// time, can wait for each other and read each other's shared memory. A thin layer over
// cooperative groups, with the emulator's equivalents, so kernels say what they mean.
// MASKED_SOFTMAX_HAS_CLUSTERS is 1 where the cluster kernels are compiled.
#pragma once
#include <stdint.h>

#include "emulation.cuh"
#include "mask.cuh"
#include "work.cuh"

#if defined(MASKED_SOFTMAX_EMULATION)
#define MASKED_SOFTMAX_HAS_CLUSTERS 1

__device__ __forceinline__ unsigned cluster_rank() { return emu::cluster_rank(); }
__device__ __forceinline__ unsigned cluster_size() { return emu::cluster_size(); }
// The cluster's index in the grid, and the clusters in the grid (1-D grids).
__device__ __forceinline__ unsigned cluster_id() { return blockIdx.x / emu::cluster_size(); }
__device__ __forceinline__ unsigned cluster_count() { return gridDim.x / emu::cluster_size(); }
__device__ __forceinline__ void cluster_sync() { emu::cluster_barrier(); }
// The object at `local` (in this block's dynamic shared memory) as block `rank` holds it.
template <typename T>
__device__ __forceinline__ T* cluster_map(T* local, unsigned rank) {
    const size_t offset = reinterpret_cast<char*>(local) - static_cast<char*>(emu::dynamic_shared_memory());
    return reinterpret_cast<T*>(static_cast<char*>(emu::cluster_shared_memory(rank)) + offset);
}

#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MASKED_SOFTMAX_HAS_CLUSTERS 1
#include <cooperative_groups.h>

__device__ __forceinline__ unsigned cluster_rank() { return cooperative_groups::this_cluster().block_rank(); }
__device__ __forceinline__ unsigned cluster_size() { return cooperative_groups::this_cluster().num_blocks(); }
// Read from special registers rather than worked out by a division: a divided value stays
// live across a kernel's row loop, where the 16-bit backward's streaming cluster (held to
// 64 registers) spilled it.
__device__ __forceinline__ unsigned cluster_id() {
    unsigned id;
    asm("mov.u32 %0, %%clusterid.x;" : "=r"(id));
    return id;
}
__device__ __forceinline__ unsigned cluster_count() {
    unsigned n;
    asm("mov.u32 %0, %%nclusterid.x;" : "=r"(n));
    return n;
}
__device__ __forceinline__ void cluster_sync() { cooperative_groups::this_cluster().sync(); }
template <typename T>
__device__ __forceinline__ T* cluster_map(T* local, unsigned rank) {
    return cooperative_groups::this_cluster().map_shared_rank(local, rank);
}

#else
#define MASKED_SOFTMAX_HAS_CLUSTERS 0
#endif

#if MASKED_SOFTMAX_HAS_CLUSTERS
// A cluster kernel's dynamic shared memory: the block's published part of the row's
// reduction (one float2, padded to 16 bytes), 32 float2 of block-reduction scratch, then
// the chunk's cache, 16-byte aligned so that a pack moves as one 16-byte access (with the
// cache 8 bytes off, packs of 4 floats went as two 8-byte accesses and bank conflicts).
// src/plan.rs (CLUSTER_HEADER_BYTES) counts the same bytes.
struct ClusterShared {
    float2* published;
    float2* scratch;
    float* cache;

    __device__ __forceinline__ static ClusterShared of() {
        float2* base = dynamic_shared<float2>();
        return ClusterShared{base, base + 2, reinterpret_cast<float*>(base + 2 + WARP)};
    }
};

// The chunk of every row that a block of a cluster owns: with `blocks` blocks per cluster,
// block cluster_rank() takes packs [begin, end) of rows of `columns` columns (chunks of
// `size` packs, the last ones shorter or empty), of rows cluster_id(), + cluster_count(),
// + 2 cluster_count(), ...
struct ClusterChunk {
    unsigned blocks;
    int64_t size, begin, end;

    template <int PACK>
    __device__ __forceinline__ static ClusterChunk of(int64_t columns) {
        const unsigned rank = cluster_rank(), blocks = cluster_size();
        const int64_t row_packs = packs_in<PACK>(columns);
        const int64_t size = (row_packs + blocks - 1) / blocks;
        const int64_t begin = min(row_packs, int64_t(rank) * size);
        return ClusterChunk{blocks, size, begin, min(row_packs, begin + size)};
    }
};
#endif
