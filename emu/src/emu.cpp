// The emulator's launcher: runs a registered kernel's thread-block clusters one after
// another (a plain launch is clusters of one block), every thread of a cluster as a fiber
// on the calling OS thread, switching fibers only at barriers and shuffles.
// Deterministic: the same launch always interleaves the same way.
//
// A fiber that waits hands over straight to the next fiber in order, not through a
// scheduler, and a shuffle is one rendezvous: a test run switches about a hundred million
// times, and the switches were most of its time. Fibers switch with a few instructions of
// assembly on x86-64 (swapcontext makes a system call per switch and setjmp/longjmp walk
// cleanup handlers), with swapcontext elsewhere.
#include <ucontext.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxCluster = 16;
// Bytes past a block's dynamic shared memory that must still hold the fill pattern after a
// launch: a kernel whose layout outgrows what the planner allocated is caught here. As
// large as the rows kernels' weight cache (32 KiB) and more, so that a launch giving it too
// little, even none, writes into the guard and not past the vector.
constexpr size_t kSharedGuardBytes = 64 * 1024;

// A rendezvous point: `expected` fibers arrive, then all of them go on.
struct Barrier {
    unsigned expected = 0;
    unsigned arrived = 0;
    uint64_t generation = 0;
    // What the first arrival of this generation came for: a warp's shuffles and __syncwarp
    // share its barrier, and lanes meeting at different ones (undefined on a GPU) must fail
    // here, not exchange stale slots.
    const char* operation = nullptr;
};

// Saves the callee-saved state on the current stack, stores the stack pointer in *from and
// continues on the stack `to` (which a previous switch saved, or make_stack prepared).
// (EMU_PORTABLE_SWITCH: swapcontext on x86-64 too, to test that path.)
#if defined(__x86_64__) && !defined(EMU_PORTABLE_SWITCH)
#define EMU_ASM_SWITCH 1
extern "C" void emu_switch_context(void** from, void* to);
asm(R"(
    .text
    .globl emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context
)");
#endif

struct Fiber {
#ifdef EMU_ASM_SWITCH
    void* sp = nullptr;  // saved stack pointer
#else
    ucontext_t context;  // saved context (a kilobyte: kept out of the asm build's fibers)
#endif
    std::unique_ptr<char[]> stack;
    Index3 index{0, 0, 0};   // threadIdx
    unsigned rank = 0;       // block within the cluster
    unsigned linear = 0;     // thread within its block
    bool done = false;
};

// What each block of the running cluster has of its own.
struct BlockState {
    Index3 index{0, 0, 0};
    std::vector<Barrier> warp_barriers;
    std::vector<uint64_t> warp_slots;  // two sets of 32 per warp (warp_exchange)
    Barrier barrier;
    std::vector<unsigned char> shared;
};

struct Launch {
    Invoker invoke = nullptr;
    void** params = nullptr;
    Index3 grid{1, 1, 1}, block{1, 1, 1};
    unsigned cluster = 1;
    unsigned shared_bytes = 0;
    std::vector<Fiber> fibers;
    std::vector<BlockState> blocks;  // `cluster` of them
    Barrier cluster_barrier;
#ifdef EMU_ASM_SWITCH
    void* scheduler_sp = nullptr;
#else
    ucontext_t scheduler_context;
#endif
    // The running cluster's fibers: how many, how many have not finished, which one runs,
    // and the order they take turns in (odd clusters backwards: run_cluster).
    unsigned first_block = 0;  // of the cluster, in the linearised grid
    unsigned fiber_count = 0;
    unsigned remaining = 0;
    unsigned current = 0;
    bool reversed = false;
    // Arrivals and exits, and their count when the turn order last wrapped around: a whole
    // round of turns without any is a deadlock.
    uint64_t progress = 0;
    uint64_t progress_at_wrap = 0;
    std::string error;
    uint64_t prefetches = 0;        // l2_prefetch calls of the launch
    uint64_t prefetched_bytes = 0;  // and the bytes they asked for
};

// One launch per OS thread at a time: tests on different threads emulate in parallel.
thread_local Launch* g_launch = nullptr;

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> kernels;
    return kernels;
}

Fiber& me() { return g_launch->fibers[g_launch->current]; }
BlockState& my_block() { return g_launch->blocks[me().rank]; }

// Back to run_cluster, from the running fiber: the cluster finished, failed or deadlocked.
void switch_to_scheduler() {
#ifdef EMU_ASM_SWITCH
    emu_switch_context(&me().sp, g_launch->scheduler_sp);
#else
    swapcontext(&me().context, &g_launch->scheduler_context);
#endif
}

// From the running fiber to the next one in turn that has not finished, or back to the
// scheduler when none is left or none moved for a whole round (a deadlock). Returns when
// the running fiber's turn comes again.
void switch_to_next() {
    Launch& l = *g_launch;
    if (l.remaining == 0) switch_to_scheduler();
    const unsigned from = l.current;
    unsigned t = from;
    do {
        const bool wrapped = l.reversed ? t == 0 : t + 1 == l.fiber_count;
        t = l.reversed ? (wrapped ? l.fiber_count : t) - 1 : (wrapped ? 0 : t + 1);
        if (wrapped) {
            if (l.progress == l.progress_at_wrap) {
                char what[200];
                std::snprintf(what, sizeof what,
                              "deadlock in the cluster of block %u: %u threads wait at a barrier or "
                              "shuffle that threads which exited or diverged never reach",
                              l.first_block, l.remaining);
                l.error = what;
                switch_to_scheduler();
            }
            l.progress_at_wrap = l.progress;
        }
    } while (l.fibers[t].done);
    if (t == from) return;  // the only fiber left goes on
    l.current = t;
#ifdef EMU_ASM_SWITCH
    emu_switch_context(&l.fibers[from].sp, l.fibers[t].sp);
#else
    swapcontext(&l.fibers[from].context, &l.fibers[t].context);
#endif
}

void arrive_and_wait(Barrier& barrier, const char* operation) {
    if (barrier.arrived == 0) {
        barrier.operation = operation;
    } else if (barrier.operation != operation) {
        fail("the lanes of a warp meet at different operations (a shuffle and __syncwarp)");
    }
    Launch& l = *g_launch;
    const uint64_t generation = barrier.generation;
    ++l.progress;
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    while (barrier.generation == generation) switch_to_next();
}

void fiber_main() {
    Launch& l = *g_launch;
    l.invoke(l.params);
    me().done = true;
    ++l.progress;
    --l.remaining;
    switch_to_next();  // never resumed
    __builtin_unreachable();
}

// Makes `f` start in fiber_main at its next resume.
void make_stack(Launch& l, Fiber& f) {
#ifdef EMU_ASM_SWITCH
    (void)l;
    // What emu_switch_context pops, top down: a dummy return slot for fiber_main (keeps its
    // entry 16-byte aligned as after a call), its address to `ret` to, rbp rbx r12-r15, and
    // the MXCSR / x87 control words.
    auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStackBytes) & ~uintptr_t(15);
    auto* slot = reinterpret_cast<uint64_t*>(top);
    *--slot = 0;
    *--slot = reinterpret_cast<uint64_t>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--slot = 0;
    *--slot = 0x037F00001F80ull;  // fcw 0x037F in the high half, mxcsr 0x1F80 in the low
    f.sp = slot;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &l.scheduler_context;
    makecontext(&f.context, fiber_main, 0);
#endif
}

unsigned threads_per_block(const Index3& b) { return b.x * b.y * b.z; }

// Runs one cluster (blocks `first` .. `first + cluster - 1` of the linearised grid) to
// completion; false (with l.error set) on a deadlock or failure.
bool run_cluster(Launch& l, unsigned first) {
    const unsigned per_block = threads_per_block(l.block);
    const unsigned warps = (per_block + 31) / 32;
    const unsigned n = per_block * l.cluster;
    for (unsigned r = 0; r < l.cluster; ++r) {
        BlockState& b = l.blocks[r];
        const unsigned id = first + r;
        b.index = Index3{id % l.grid.x, (id / l.grid.x) % l.grid.y, id / (l.grid.x * l.grid.y)};
        b.warp_barriers.assign(warps, Barrier{});
        for (unsigned w = 0; w < warps; ++w) b.warp_barriers[w].expected = std::min(32u, per_block - 32 * w);
        b.warp_slots.assign(2 * 32 * warps, 0);
        b.barrier = Barrier{per_block, 0, 0};
        // Garbage, as on a GPU, and a guard band past the end that must stay untouched.
        b.shared.assign(l.shared_bytes + kSharedGuardBytes, 0xA5);
    }
    l.cluster_barrier = Barrier{n, 0, 0};
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = l.fibers[t];
        f.done = false;
        f.rank = t / per_block;
        f.linear = t % per_block;
        f.index = Index3{f.linear % l.block.x, (f.linear / l.block.x) % l.block.y,
                         f.linear / (l.block.x * l.block.y)};
        make_stack(l, f);
    }
    // Between two barriers or shuffles a fiber runs alone, so the order decides which
    // writes a missing barrier hides: a thread that reads shared memory another wrote sees
    // the write only if the writer ran first. Odd clusters run their threads in reverse
    // order, so that every launch of two clusters or more tries both orders.
    l.reversed = (first / l.cluster) % 2 == 1;
    l.first_block = first;
    l.fiber_count = n;
    l.remaining = n;
    l.current = l.reversed ? n - 1 : 0;
    l.progress_at_wrap = l.progress;
    // The fibers take their turns among themselves (switch_to_next) and come back here at
    // the end, on a failure or on a deadlock.
#ifdef EMU_ASM_SWITCH
    emu_switch_context(&l.scheduler_sp, l.fibers[l.current].sp);
#else
    swapcontext(&l.scheduler_context, &l.fibers[l.current].context);
#endif
    if (!l.error.empty()) return false;
    static const std::vector<unsigned char> untouched(kSharedGuardBytes, 0xA5);
    for (unsigned r = 0; r < l.cluster; ++r) {
        const std::vector<unsigned char>& shared = l.blocks[r].shared;
        if (std::memcmp(shared.data() + l.shared_bytes, untouched.data(), kSharedGuardBytes) == 0) continue;
        for (size_t i = l.shared_bytes; i < shared.size(); ++i)
            if (shared[i] != 0xA5) {
                char what[200];
                std::snprintf(what, sizeof what,
                              "block %u wrote past its %u bytes of dynamic shared memory (at byte %zu)",
                              first + r, l.shared_bytes, i);
                l.error = what;
                return false;
            }
    }
    return true;
}

}  // namespace

const Index3& thread_index() { return me().index; }
const Index3& block_index() { return my_block().index; }
const Index3& block_dim() { return g_launch->block; }
const Index3& grid_dim() { return g_launch->grid; }

void warp_barrier() { arrive_and_wait(my_block().warp_barriers[me().linear / 32], "__syncwarp"); }
void block_barrier() { arrive_and_wait(my_block().barrier, "__syncthreads"); }
void cluster_barrier() { arrive_and_wait(g_launch->cluster_barrier, "cluster barrier"); }
unsigned cluster_rank() { return me().rank; }
unsigned cluster_size() { return g_launch->cluster; }

void* cluster_shared_memory(unsigned rank) {
    if (rank >= g_launch->cluster) fail("cluster rank out of range");
    return g_launch->blocks[rank].shared.data();
}

// One rendezvous a shuffle: the slot set alternates with the barrier's generation, so a
// lane that leaves this rendezvous first writes its next shuffle's value into the other
// set while the others still read this one; this set is written again only after the
// next rendezvous, which every lane reaches after its read.
uint64_t warp_exchange(uint64_t value, int src_lane) {
    BlockState& b = my_block();
    const unsigned t = me().linear, warp = t / 32;
    Barrier& barrier = b.warp_barriers[warp];
    if (barrier.expected != 32) fail("shuffle in a partial warp");
    uint64_t* slots = &b.warp_slots[(2 * warp + barrier.generation % 2) * 32];
    slots[t % 32] = value;
    arrive_and_wait(barrier, "shuffle");
    return slots[unsigned(src_lane)];
}

void fail(const char* what) {
    Launch& l = *g_launch;
    char where[160];
    const Index3& b = my_block().index;
    std::snprintf(where, sizeof where, " (block (%u,%u,%u), thread %u)", b.x, b.y, b.z, me().linear);
    l.error = std::string(what) + where;
    // Never resumed: the launch ends here and the fiber's stack is reused.
    switch_to_scheduler();
    __builtin_unreachable();
}

void* dynamic_shared_memory() { return my_block().shared.data(); }
unsigned dynamic_shared_bytes() { return g_launch->shared_bytes; }

void l2_prefetch(const void* begin, size_t bytes) {
    if (reinterpret_cast<uintptr_t>(begin) % 16 != 0 || bytes == 0 || bytes % 16 != 0)
        fail("L2 prefetch of a range not in whole 16-byte chunks");
    // Read its ends (a range past a buffer faults on the guard pages) and count it.
    const volatile unsigned char* b = static_cast<const volatile unsigned char*>(begin);
    (void)b[0];
    (void)b[bytes - 1];
    g_launch->prefetches += 1;
    g_launch->prefetched_bytes += bytes;
}

int register_kernel(const char* name, Invoker invoke) {
    registry()[name] = invoke;
    return 0;
}

}  // namespace emu

// The calling thread's last launch (its counters outlive it).
thread_local emu::Launch* emu_last_launch = nullptr;

extern "C" {

// Runs kernel `name` like cuLaunchKernelEx: grid and block dimensions, clusters of
// `cluster` blocks along x (1: no clusters), dynamic shared memory bytes and an array of
// pointers to the arguments. Returns 0 on success, else writes a message to `error` (at
// most `error_len` bytes, NUL-terminated) and returns 1.
int emu_launch(const char* name, const unsigned grid[3], const unsigned block[3], unsigned cluster,
               unsigned shared_bytes, void** params, char* error, size_t error_len) {
    using namespace emu;
    auto report = [&](const std::string& what) {
        std::snprintf(error, error_len, "%s", what.c_str());
        return 1;
    };
    auto found = registry().find(name);
    if (found == registry().end()) return report(std::string("no kernel named ") + name);
    const Index3 b{block[0], block[1], block[2]}, g{grid[0], grid[1], grid[2]};
    const unsigned n = threads_per_block(b);
    if (n == 0 || n > kMaxThreads || g.x == 0 || g.y == 0 || g.z == 0)
        return report("invalid launch configuration");
    if (cluster == 0 || cluster > kMaxCluster || g.x % cluster != 0)
        return report("invalid cluster size (must divide grid.x, at most 16)");
    static thread_local Launch launch;  // fibers and stacks are reused across launches
    Launch& l = launch;
    emu_last_launch = &l;
    l.invoke = found->second;
    l.params = params;
    l.grid = g;
    l.block = b;
    l.cluster = cluster;
    l.shared_bytes = shared_bytes;
    l.error.clear();
    l.prefetches = 0;
    l.prefetched_bytes = 0;
    l.blocks.resize(cluster);
    while (l.fibers.size() < n * cluster) {
        l.fibers.emplace_back();
        l.fibers.back().stack.reset(new char[kStackBytes]);
    }
    g_launch = &l;
    const unsigned blocks = g.x * g.y * g.z;
    for (unsigned first = 0; first < blocks; first += cluster) {
        if (!run_cluster(l, first)) {
            g_launch = nullptr;
            return report(l.error);
        }
    }
    g_launch = nullptr;
    return 0;
}

// The L2 prefetches (emu::l2_prefetch) of the calling thread's last launch: how many, and
// their bytes.
void emu_last_launch_prefetches(uint64_t* count, uint64_t* bytes) {
    *count = *bytes = 0;
    if (emu_last_launch) {
        *count = emu_last_launch->prefetches;
        *bytes = emu_last_launch->prefetched_bytes;
    }
}

// The names of the registered kernels, separated by '\n', into `out` (NUL-terminated).
size_t emu_kernel_names(char* out, size_t out_len) {
    std::string names;
    for (auto& [name, _] : emu::registry()) names += name + "\n";
    if (out_len > 0) std::snprintf(out, out_len, "%s", names.c_str());
    return names.size();
}
}
