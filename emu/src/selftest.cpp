// Kernels that test the emulator itself (tests/selftest.rs): shuffles, barriers with
// shared memory, and the faults it must report instead of hiding.
#include <cstdint>

// Each lane writes what __shfl_xor_sync / __shfl_down_sync / __shfl_up_sync /
// __shfl_sync bring it. Each shuffle sends other values (lane * 10 + k), so a lane that
// leaves one shuffle early and overwrites what the others have yet to read shows.
extern "C" __global__ void selftest_shuffles(int32_t* out, int width) {
    const int t = threadIdx.x;
    const int lane = t % 32;
    out[4 * t + 0] = __shfl_xor_sync(0xffffffffu, lane * 10, 1, width);
    out[4 * t + 1] = __shfl_down_sync(0xffffffffu, lane * 10 + 1, 3, width);
    out[4 * t + 2] = __shfl_up_sync(0xffffffffu, lane * 10 + 2, 2, width);
    out[4 * t + 3] = __shfl_sync(0xffffffffu, lane * 10 + 3, 5, width);
}
EMU_REGISTER_KERNEL(selftest_shuffles)

// Block sum through static shared memory and __syncthreads; one output per block.
extern "C" __global__ void selftest_block_sum(const int32_t* in, int32_t* out) {
    __shared__ int32_t partial[1024];
    partial[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}
EMU_REGISTER_KERNEL(selftest_block_sum)

// A missing barrier: each thread writes its slot of dynamic shared memory (as the kernels'
// scratch is) and the last thread reads slot 0 without __syncthreads. It reads thread 0's
// write only where thread 0 happened to run first.
extern "C" __global__ void selftest_missing_barrier(int32_t* out) {
    int32_t* slots = static_cast<int32_t*>(emu::dynamic_shared_memory());
    slots[threadIdx.x] = int32_t(threadIdx.x) + 1;
    if (threadIdx.x == blockDim.x - 1) out[blockIdx.x] = slots[0];
}
EMU_REGISTER_KERNEL(selftest_missing_barrier)

// Lanes 0..15 return early; the rest shuffle with a full mask: undefined on a GPU.
extern "C" __global__ void selftest_divergent_shuffle(int32_t* out) {
    if (threadIdx.x % 32 < 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}
EMU_REGISTER_KERNEL(selftest_divergent_shuffle)

// Lanes 0..15 shuffle while lanes 16..31 wait at __syncwarp: undefined on a GPU.
extern "C" __global__ void selftest_shuffle_meets_syncwarp(int32_t* out) {
    int v = int(threadIdx.x);
    if (threadIdx.x % 32 < 16) {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    } else {
        __syncwarp();
    }
    out[threadIdx.x] = v;
}
EMU_REGISTER_KERNEL(selftest_shuffle_meets_syncwarp)

// A 16-byte vector load from an address that is only 4-byte aligned.
extern "C" __global__ void selftest_misaligned(const float* in, float* out) {
    emu_check_aligned(in + 1, 16);
    out[0] = in[1];
}
EMU_REGISTER_KERNEL(selftest_misaligned)

// Clusters: each block puts its rank in its dynamic shared memory, the cluster syncs, and
// thread 0 of each block reads the next block's value through the cluster mapping.
extern "C" __global__ void selftest_cluster_ring(int32_t* out) {
    int32_t* mine = static_cast<int32_t*>(emu::dynamic_shared_memory());
    if (threadIdx.x == 0) mine[0] = int32_t(emu::cluster_rank()) * 100 + int32_t(blockIdx.x);
    emu::cluster_barrier();
    const unsigned next = (emu::cluster_rank() + 1) % emu::cluster_size();
    const int32_t* theirs = static_cast<const int32_t*>(emu::cluster_shared_memory(next));
    if (threadIdx.x == 0) out[blockIdx.x] = theirs[0];
    emu::cluster_barrier();
}
EMU_REGISTER_KERNEL(selftest_cluster_ring)

// Writes `words` 32-bit words into its dynamic shared memory: past its end when the launch
// gave it fewer bytes.
extern "C" __global__ void selftest_shared_overrun(int words) {
    int32_t* mine = static_cast<int32_t*>(emu::dynamic_shared_memory());
    for (int i = int(threadIdx.x); i < words; i += int(blockDim.x)) mine[i] = i;
}
EMU_REGISTER_KERNEL(selftest_shared_overrun)
