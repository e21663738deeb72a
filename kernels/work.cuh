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
