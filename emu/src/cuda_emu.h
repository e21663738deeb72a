// CPU emulation of the small part of CUDA C++ our kernels use, so that CI (which has no
// GPU) runs the real kernel sources against the CPU reference.
//
// Force-included (g++ -include) before a kernels/*.cu file. Every CUDA thread of a block
// is a fiber on one OS thread; blocks run one after another. Warp shuffles and barriers
// are exact rendezvous of the participating fibers: a shuffle or __syncthreads reached by
// only some of the threads that must reach it is reported as a deadlock (on a GPU it is
// undefined behaviour). Vector accesses check their alignment. What it cannot show:
// timing, memory-model races between blocks, and anything about real hardware limits.
#pragma once
#define MASKED_SOFTMAX_EMULATION 1

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

// cuda_runtime's host_defines.h gives these host-compiler meanings; ours are plainer.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __maxnreg__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __maxnreg__(...)
// One block runs at a time on each OS thread, so a function-local thread_local static is
// exactly one block's copy (launches on other threads have theirs).
#define __shared__ static thread_local

namespace emu {

struct Index3 {
    unsigned x, y, z;
};

// The running fiber's thread index, and the running block's.
const Index3& thread_index();
const Index3& block_index();
const Index3& block_dim();
const Index3& grid_dim();

// Rendezvous of every thread of the current warp / block.
void warp_barrier();
void block_barrier();
// Exchange of 8-byte slots across the current warp: writes `value`, returns lane `src`'s.
uint64_t warp_exchange(uint64_t value, int src_lane);
// Stops the launch with an error (bad shuffle mask, misaligned vector access, ...).
[[noreturn]] void fail(const char* what);
// Dynamic shared memory of the running block, and its size in bytes (the launch's).
void* dynamic_shared_memory();
unsigned dynamic_shared_bytes();
// A kernel's L2 prefetch hint of `bytes` bytes at `begin` (whole 16-byte chunks): no effect
// here but a read of its first and last bytes, counted per launch (emu_last_launch_prefetches).
void l2_prefetch(const void* begin, size_t bytes);
// Thread-block clusters (blocks of a cluster run together; a kernel launched with clusters
// must keep its shared data in dynamic shared memory, since a function-local static is
// one copy for the whole cluster here).
void cluster_barrier();
unsigned cluster_rank();
unsigned cluster_size();
void* cluster_shared_memory(unsigned rank);
// (Launches run on the calling OS thread; launches on different threads run in parallel.)

// Registers a kernel under its name; `invoke` calls it with cuLaunchKernel-style params.
using Invoker = void (*)(void** params);
int register_kernel(const char* name, Invoker invoke);

template <typename... A, size_t... I>
void invoke_with(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}

}  // namespace emu

#define threadIdx (emu::thread_index())
#define blockIdx (emu::block_index())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu::fail("__syncwarp with a partial mask is not emulated");
    emu::warp_barrier();
}

template <typename T>
T emu_shuffle(unsigned mask, T value, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    if (mask != 0xffffffffu) emu::fail("shuffle with a partial mask is not emulated");
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    bits = emu::warp_exchange(bits, src_lane);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

// Lane arithmetic as the PTX shfl instructions define it for segments of `width` lanes.
inline int emu_lane() { return int(threadIdx.x % 32); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    const int lane = emu_lane(), src = lane ^ lane_mask;
    return emu_shuffle(mask, value, (src / width == lane / width) ? src : lane);
}
template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
    const int lane = emu_lane();
    return emu_shuffle(mask, value, (lane / width) * width + (src_lane % width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    const int lane = emu_lane(), src = lane + int(delta);
    return emu_shuffle(mask, value, (src / width == lane / width) ? src : lane);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
    const int lane = emu_lane(), src = lane - int(delta);
    return emu_shuffle(mask, value, (src >= 0 && src / width == lane / width) ? src : lane);
}

// The warp vote, as a butterfly of exchanges (every lane of the warp must reach it).
inline int __any_sync(unsigned mask, int predicate) {
    if (mask != 0xffffffffu) emu::fail("vote with a partial mask is not emulated");
    int any = predicate != 0;
    for (int offset = 16; offset > 0; offset /= 2) any |= __shfl_xor_sync(mask, any, offset);
    return any;
}
inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, 4);
    return f;
}
inline int __float_as_int(float f) {
    int v;
    std::memcpy(&v, &f, 4);
    return v;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
using std::max;
using std::min;

// Alignment check used by the kernels' vector loads and stores.
inline void emu_check_aligned(const void* p, size_t bytes) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) emu::fail("misaligned vector access");
}

// Registers `kernel` (an extern "C" __global__ function) with the emulator's launcher.
#define EMU_REGISTER_KERNEL(kernel)                                                              \
    static int emu_registered_##kernel = emu::register_kernel(#kernel, [](void** params) {      \
        emu::invoke_with(kernel, params,                                                         \
                         std::make_index_sequence<emu_arity(kernel)>{});                         \
    });

template <typename... A>
constexpr size_t emu_arity(void (*)(A...)) {
    return sizeof...(A);
}
