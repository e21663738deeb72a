// The emulator's launcher: runs a registered kernel's blocks one after another, each
// block's threads as fibers on the calling OS thread, switching fibers only at barriers
// and shuffles. Deterministic: the same launch always interleaves the same way.
//
// A fiber is entered the first time with swapcontext (which gives it its own stack) and
// switched afterwards with _setjmp/_longjmp, which unlike swapcontext make no system call
// (swapcontext saves the signal mask every time, and the emulator switches millions of
// times per test run).
#include <setjmp.h>
#include <ucontext.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned kMaxThreads = 1024;

// A rendezvous point: `expected` fibers arrive, then all of them go on.
struct Barrier {
    unsigned expected = 0;
    unsigned arrived = 0;
    uint64_t generation = 0;
};

struct Fiber {
    ucontext_t context;  // first entry only
    jmp_buf resume;
    bool started = false;
    std::unique_ptr<char[]> stack;
    Index3 index{0, 0, 0};
    bool done = false;
};

struct Launch {
    Invoker invoke = nullptr;
    void** params = nullptr;
    Index3 grid{1, 1, 1}, block{1, 1, 1}, block_idx{0, 0, 0};
    std::vector<Fiber> fibers;
    std::vector<Barrier> warp_barriers;
    std::vector<uint64_t> warp_slots;  // 32 per warp
    Barrier block_barrier;
    std::vector<unsigned char> shared;
    ucontext_t scheduler_context;  // where a fiber's first entry returns from
    jmp_buf scheduler;
    unsigned current = 0;
    uint64_t progress = 0;  // arrivals and exits: a round without any is a deadlock
    std::string error;
};

Launch* g_launch = nullptr;

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> kernels;
    return kernels;
}

Fiber& me() { return g_launch->fibers[g_launch->current]; }

void yield_to_scheduler() {
    if (_setjmp(me().resume) == 0) _longjmp(g_launch->scheduler, 1);
}

// Runs fiber `t` until it yields, finishes or fails.
void resume(Launch& l, unsigned t) {
    l.current = t;
    Fiber& f = l.fibers[t];
    if (_setjmp(l.scheduler) != 0) return;
    if (f.started) _longjmp(f.resume, 1);
    f.started = true;
    swapcontext(&l.scheduler_context, &f.context);
}

void arrive_and_wait(Barrier& barrier) {
    Launch& l = *g_launch;
    const uint64_t generation = barrier.generation;
    ++l.progress;
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    while (barrier.generation == generation) yield_to_scheduler();
}

void fiber_main() {
    Launch& l = *g_launch;
    l.invoke(l.params);
    me().done = true;
    ++l.progress;
    _longjmp(l.scheduler, 1);
}

unsigned threads_per_block(const Index3& b) { return b.x * b.y * b.z; }

// Runs one block to completion; false (with l.error set) on a deadlock or failure.
bool run_block(Launch& l) {
    const unsigned n = threads_per_block(l.block);
    const unsigned warps = (n + 31) / 32;
    l.warp_barriers.assign(warps, Barrier{});
    for (unsigned w = 0; w < warps; ++w) l.warp_barriers[w].expected = std::min(32u, n - 32 * w);
    l.warp_slots.assign(32 * warps, 0);
    l.block_barrier = Barrier{n, 0, 0};
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = l.fibers[t];
        f.done = false;
        f.started = false;
        f.index = Index3{t % l.block.x, (t / l.block.x) % l.block.y, t / (l.block.x * l.block.y)};
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.get();
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &l.scheduler_context;  // never used: fibers end by _longjmp
        makecontext(&f.context, fiber_main, 0);
    }
    unsigned remaining = n;
    while (remaining > 0) {
        const uint64_t before = l.progress;
        for (unsigned t = 0; t < n; ++t) {
            if (l.fibers[t].done) continue;
            resume(l, t);
            if (!l.error.empty()) return false;
            if (l.fibers[t].done) --remaining;
        }
        if (remaining > 0 && l.progress == before) {
            char what[200];
            std::snprintf(what, sizeof what,
                          "deadlock in block (%u,%u,%u): %u threads wait at a barrier or shuffle that "
                          "threads which exited or diverged never reach",
                          l.block_idx.x, l.block_idx.y, l.block_idx.z, remaining);
            l.error = what;
            return false;
        }
    }
    return true;
}

}  // namespace

const Index3& thread_index() { return me().index; }
const Index3& block_index() { return g_launch->block_idx; }
const Index3& block_dim() { return g_launch->block; }
const Index3& grid_dim() { return g_launch->grid; }

static unsigned linear_thread() {
    const Index3& i = me().index;
    const Index3& b = g_launch->block;
    return i.x + b.x * (i.y + b.y * i.z);
}

void warp_barrier() { arrive_and_wait(g_launch->warp_barriers[linear_thread() / 32]); }
void block_barrier() { arrive_and_wait(g_launch->block_barrier); }

uint64_t warp_exchange(uint64_t value, int src_lane) {
    Launch& l = *g_launch;
    const unsigned t = linear_thread(), warp = t / 32;
    if (l.warp_barriers[warp].expected != 32) fail("shuffle in a partial warp");
    l.warp_slots[t] = value;
    warp_barrier();
    const uint64_t out = l.warp_slots[warp * 32 + unsigned(src_lane)];
    warp_barrier();
    return out;
}

void fail(const char* what) {
    Launch& l = *g_launch;
    char where[160];
    std::snprintf(where, sizeof where, " (block (%u,%u,%u), thread %u)", l.block_idx.x, l.block_idx.y,
                  l.block_idx.z, linear_thread());
    l.error = std::string(what) + where;
    // Never resumed: the launch ends here and the fiber's stack is reused.
    _longjmp(l.scheduler, 1);
}

void* dynamic_shared_memory() { return g_launch->shared.data(); }

int register_kernel(const char* name, Invoker invoke) {
    registry()[name] = invoke;
    return 0;
}

}  // namespace emu

extern "C" {

// Runs kernel `name` like cuLaunchKernel: grid and block dimensions, dynamic shared
// memory bytes and an array of pointers to the arguments. Returns 0 on success, else
// writes a message to `error` (at most `error_len` bytes, NUL-terminated) and returns 1.
int emu_launch(const char* name, const unsigned grid[3], const unsigned block[3], unsigned shared_bytes,
               void** params, char* error, size_t error_len) {
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
    static Launch launch;  // fibers and stacks are reused across launches
    Launch& l = launch;
    l.invoke = found->second;
    l.params = params;
    l.grid = g;
    l.block = b;
    l.error.clear();
    l.shared.assign(shared_bytes, 0xA5);  // garbage, as on a GPU
    while (l.fibers.size() < n) {
        l.fibers.emplace_back();
        l.fibers.back().stack.reset(new char[kStackBytes]);
    }
    g_launch = &l;
    for (unsigned z = 0; z < g.z; ++z)
        for (unsigned y = 0; y < g.y; ++y)
            for (unsigned x = 0; x < g.x; ++x) {
                l.block_idx = Index3{x, y, z};
                if (!run_block(l)) {
                    g_launch = nullptr;
                    return report(l.error);
                }
            }
    g_launch = nullptr;
    return 0;
}

// The names of the registered kernels, separated by '\n', into `out` (NUL-terminated).
size_t emu_kernel_names(char* out, size_t out_len) {
    std::string names;
    for (auto& [name, _] : emu::registry()) names += name + "\n";
    if (out_len > 0) std::snprintf(out, out_len, "%s", names.c_str());
    return names.size();
}
}
