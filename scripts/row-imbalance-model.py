#!/usr/bin/env python3
"""How much the looping kernels lose to uneven rows: a fluid model, no GPU needed.

A kernel with a block (or cluster) per row runs a grid-stride loop: slot s of the
resident slots takes rows s, s + slots, ...  A row costs the bytes its kernel moves (a
streaming kernel reads the valid inputs twice and writes the whole row); the active slots
share the copy bandwidth, and one block can pull at most `cap` times its fair share of it
(its loads in flight over the memory latency). When the benchmark's random lengths
(uniform in [1, k_len]) leave few rows per slot, the last slots run alone, at their cap.

A grid of more slots than the device runs at once (`fits`) starts the slots beyond as the
first ones finish all their rows (v10: 33 clusters of 8 planned where 32 fit an H100's
GPCs).

Prints, per case, the time over (bytes / full bandwidth) for a few caps: the factor the
imbalance adds on top of the kernel's own bytes. PERFORMANCE.md ("What limits each case",
"v10") quotes it.

    scripts/row-imbalance-model.py
"""
import random

RESIDENT_BLOCKS = 264  # 132 SMs x 2 blocks of 512 threads (H100/H200 looping kernels)


def makespan(costs, slots, slot_cap, fits=None):
    """Time to finish `costs` (in units of the full bandwidth) on `slots` slots, of which
    `fits` (all if None) run at once; the others start, in order, as running ones end."""
    queues = [costs[s::slots] for s in range(slots)]
    remaining = [q[0] if q else 0.0 for q in queues]
    index = [0] * slots
    waiting = [s for s in range(slots) if queues[s]]
    fits = len(waiting) if fits is None else fits
    active, waiting = waiting[:fits], waiting[fits:]
    t = 0.0
    while active:
        rate = min(1.0 / len(active), slot_cap)
        dt = min(remaining[s] for s in active) / rate
        t += dt
        still = []
        for s in active:
            remaining[s] -= rate * dt
            if remaining[s] > 1e-12:
                still.append(s)
                continue
            index[s] += 1
            if index[s] < len(queues[s]):
                remaining[s] = queues[s][index[s]]
                still.append(s)
            elif waiting:
                still.append(waiting.pop(0))
        active = still
    return t / sum(costs)


def imbalance(rows, k_len, slots, blocks_per_slot, cap, reads, fits=None, trials=5, seed=1):
    rng = random.Random(seed)
    total = 0.0
    for _ in range(trials):
        costs = [reads * rng.randint(1, k_len) + k_len for _ in range(rows)]
        slot_cap = cap * blocks_per_slot / RESIDENT_BLOCKS
        total += makespan(costs, min(slots, rows), slot_cap, fits)
    return total / trials


CASES = [
    # name, rows, k_len, slots (the grid), blocks per slot, valid inputs read (x2: twice),
    # slots that fit at once (None: all)
    ("f32 fwd 2^18, block_stream", 256, 1 << 18, 264, 1, 2),
    ("f32 fwd 65536, block_stream", 1024, 1 << 16, 264, 1, 2),
    ("16-bit fwd 2^18, cluster_stream x8", 512, 1 << 18, 33, 8, 2),
    ("  33 planned, 32 fit (v9.3 on an H100)", 512, 1 << 18, 33, 8, 2, 32),
    ("  32 planned and fit (v10)", 512, 1 << 18, 32, 8, 2),
    ("f32 fwd 2^20, cluster_stream x8", 64, 1 << 20, 33, 8, 2),
    ("16-bit fwd 2^20, cluster_stream x8", 128, 1 << 20, 33, 8, 2),
    ("f32 bwd 2^20, block_stream (v5)", 64, 1 << 20, 264, 1, 4),
    ("16-bit bwd 2^20, block_stream (v5)", 128, 1 << 20, 264, 1, 4),
    ("f32 bwd 2^18, block_stream", 256, 1 << 18, 264, 1, 4),
]

if __name__ == "__main__":
    caps = [1.5, 2, 3, 4]
    print("imbalance factor (time over bytes at full bandwidth) by per-block cap")
    print(f"{'case':40s}" + "".join(f"  cap {c:<4}" for c in caps))
    for name, rows, k_len, slots, per_slot, reads, *fits in CASES:
        row = [imbalance(rows, k_len, slots, per_slot, c, reads, *fits) for c in caps]
        print(f"{name:40s}" + "".join(f"  x{v:<7.2f}" for v in row))
