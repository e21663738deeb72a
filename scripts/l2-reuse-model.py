#!/usr/bin/env python3
"""How much of a streaming kernel's second read the L2 cache can serve: an LRU model, no GPU.

block_stream and cluster_stream read a row's valid scores twice (the backward: y and dy
twice): once for the statistics, then again to write. Every slot (a resident block, or a
cluster's block) works on its own row, all at the same pace, so between a slot's first and
second read of a column the L2 sees the traffic of every slot. Four ways to run pass 2:
- fwd: in pass 1's order with normal priorities (v8). With more traffic in flight than the
  L2 holds this is LRU's cyclic worst case: the head of the row, asked for first, was the
  first evicted;
- rev: backwards from the end of the valid columns (most recently read first), the pads
  written after;
- fwdH, revH: the same with L2 eviction priorities: the first read's lines kept
  (evict_last), the second read and the writes evicted first. (v9 runs fwdH: the writes
  there are normal, which the model does not tell apart, and rev cost registers.)

The model: `slots` slots take rows s, s + slots, ... (grid-stride); in each round every
slot with work left moves one chunk (reads in pass 1; a read and a write per valid chunk
and a write per pad chunk in pass 2); the L2 is one LRU list of `l2_mib` MiB of chunks,
writes allocating, lines under a priority put at the end of the list it names. It prints,
per case, the share of second reads that hit and the DRAM bytes over the floor's (valid
inputs read once, the whole output written once). The real L2 (two partitions, hashed
sets, its own replacement policy) is not LRU: the model gives the direction and a rough
size, not a prediction to the percent. PERFORMANCE.md (v9) quotes it.

    scripts/l2-reuse-model.py
"""
import random
from collections import OrderedDict

CHUNK = 4096  # bytes a slot moves per round (32 lines of 128 bytes)
MIB = 1 << 20


def simulate(k_len, elem, inputs, rows, slots, l2_mib, reverse, hints, seed=7):
    rng = random.Random(seed)
    row_bytes = k_len * elem
    chunks_per_row = max(1, row_bytes // CHUNK)
    lengths = [rng.randint(1, k_len) for _ in range(rows)]
    capacity = l2_mib * MIB // CHUNK

    def ops(row):
        """The chunk operations of one row, in order: ('r', key) or ('w', key)."""
        valid = max(1, (lengths[row] * elem + CHUNK - 1) // CHUNK)
        base = row * chunks_per_row
        reads = [(inp, base + c) for c in range(valid) for inp in range(inputs)]
        out = [("r", (inp, c)) for inp, c in reads]
        second = reversed(range(valid)) if reverse else range(valid)
        for c in second:
            out += [("r2", (inp, base + c)) for inp in range(inputs)]
            out.append(("w", (inputs, base + c)))
        out += [("w", (inputs, base + c)) for c in range(valid, chunks_per_row)]
        return out

    cache = OrderedDict()
    queues = [list(range(s, rows, slots)) for s in range(slots)]
    current = [iter(ops(q[0])) if q else None for q in queues]
    index = [0] * slots
    second_reads = second_hits = dram_chunks = 0
    active = [s for s in range(slots) if current[s] is not None]
    while active:
        still = []
        for s in active:
            op = next(current[s], None)
            while op is None:
                index[s] += 1
                if index[s] >= len(queues[s]):
                    break
                current[s] = iter(ops(queues[s][index[s]]))
                op = next(current[s], None)
            if op is None:
                continue
            still.append(s)
            kind, key = op
            hit = key in cache
            # With hints, only the first read stays (L2::evict_last); the second read and
            # the writes are their data's last use (L2::evict_first): next out.
            keep = kind == "r" or not hints
            if not hit:
                cache[key] = True
                if len(cache) > capacity:
                    cache.popitem(last=False)
            cache.move_to_end(key, last=keep)
            if kind == "r2":
                second_reads += 1
                second_hits += hit
            if kind == "w" or not hit:
                dram_chunks += 1  # a write goes to DRAM once; a read miss is read from it
        active = still
    valid_chunks = sum(max(1, (n * elem + CHUNK - 1) // CHUNK) for n in lengths)
    floor_chunks = inputs * valid_chunks + rows * chunks_per_row
    return second_hits / max(1, second_reads), dram_chunks / floor_chunks


def main():
    # (name, k_len, element bytes, inputs, rows, slots): the benchmark's 256 MiB sweep cases
    # and the decode cases that run a streaming kernel, with the H100's residency (132
    # multiprocessors: 2 blocks of 512 threads each for block_stream; clusters of 8 blocks,
    # one a multiprocessor, for cluster_stream).
    cases = [
        ("f32 forward k=16384 block_stream", 16384, 4, 1, 4096, 264),
        ("f32 forward k=65536 block_stream", 65536, 4, 1, 1024, 264),
        ("f32 forward k=2^18 block_stream", 1 << 18, 4, 1, 256, 264),
        # A cluster of 8 as 8 slots of an eighth of the row each (its blocks run alike).
        ("f32 forward k=2^20 cluster_stream x8", 1 << 17, 4, 1, 64 * 8, 16 * 8),
        ("f16 forward k=65536 cluster_stream x8", 8192, 2, 1, 2048 * 8, 16 * 8),
        ("f16 forward k=2^18 cluster_stream x8", 1 << 15, 2, 1, 512 * 8, 16 * 8),
        ("f32 backward k=65536 block_stream", 65536, 4, 2, 1024, 264),
        ("f32 backward k=2^18 block_stream", 1 << 18, 4, 2, 256, 264),
        ("f16 backward k=2^18 block_stream", 1 << 18, 2, 2, 512, 264),
        ("f32 decode b64 h32 k=32768 block_stream", 32768, 4, 1, 2048, 264),
        ("f32 decode b64 h32 k=131072 block_stream", 131072, 4, 1, 2048, 264),
    ]
    print("second-read hits and DRAM bytes over the floor's, for pass 2 forward / reversed,")
    print("then the same with cache hints (first reads L2::evict_last, the rest evict_first)")
    print(f"{'case':44} {'L2 MiB':>6}  {'hits: fwd  rev  fwdH revH':26} {'DRAM: fwd  rev  fwdH revH'}")
    for name, k, elem, inputs, rows, slots in cases:
        for l2 in (25, 50):
            res = [simulate(k, elem, inputs, rows, slots, l2, rev, hints)
                   for hints in (False, True) for rev in (False, True)]
            hits = " ".join(f"{h:4.0%}" for h, _ in res)
            dram = " ".join(f"{b:4.2f}" for _, b in res)
            print(f"{name:44} {l2:6}  {hits}   {dram}")


if __name__ == "__main__":
    main()
