#!/usr/bin/env python3
"""Counts the SASS instructions a warp issues on one path through a kernel's row loop.

No GPU: it reads `cuobjdump -sass -fun NAME file.cubin` (cubins from scripts/check-ptxas.sh,
cuobjdump from the nvidia-cuda-cuobjdump wheel) and walks from the loop's first instruction
to its back edge. Predicated instructions count as issued (a warp issues them whatever the
predicate), as ncu's instruction counts do. BRA.DIV (a shuffle's fallback for a diverged
warp) is not taken. Conditional branches are not taken, except:

- the reciprocal's in-range test (a compare against 0x1ffffff just before: taken, to the
  MUFU.RCP fast path; the other side is the called slow path for subnormal divisors);
- a branch on the usual-scale test (ScaleMap::plain: the FSETP against 2^-64,
  5.42101086242752217e-20, whose predicate holds for the unusual scales), when the walk
  passed that FSETP: to the usual scale's path, `@P` or `@!P`. (A test hoisted out of the
  loop, or a predicate rewritten by an instruction the walk does not read as a predicate
  write, escapes this rule: check the branches taken in the output.)
- (the 0x7fffffff rule is for kernels before v13, which tested k_len + q_len < 2^31 - 1
  in the loop; the calibration below is theirs);
- the 32-bit window test (`@!P` after a compare against 0x7fffffff: taken);
- the addresses given as ADDR:T (taken) or ADDR:N (not taken) in the third argument.

So the default path is the lane-a-row kernels' common one (every row active, a non-zero
row, the usual scale). Which branch is which, read in the SASS: in kernels of 16-byte
packs the default walks each pack's element-by-element path (a pack across the window's
edge), so give the whole-pack branches (the ones around LDG.E.128) as taken; in v13's
rows kernels give the 32-bit rows' branch (`@P0 BRA P2, ...` near the loop's head) and the
key-padding-alone skips as taken. Calibration: for
masked_softmax_fwd_rows_g1_p1x1_f32 before v13 it counts 490 instructions for a loop of 4
rows, 122.5 a row, where ncu measured 123 a row on the H200 (v10 profile, sweep k1).

    scripts/sass-path.py [--trace] SASS_FILE [TAKEN]      # loop bounds found from its back edge
    scripts/sass-path.py [--trace] --loops SASS_FILE      # every loop, whole packs
    e.g. cuobjdump -sass -fun masked_softmax_fwd_rows_g1_p1x1_f32 target/ptxas/masked_softmax.sm_90.cubin > k1.sass
         scripts/sass-path.py k1.sass 0x3d0:T,0x58a0:T

--union TAKEN2 walks the loop a second time with the decisions TAKEN2 and also counts the
instructions on either walk, each once: what a warp issues when its lanes split between
the two at the branches where they differ (a divergent warp runs both sides in turn). For
the rows kernels, TAKEN every pack whole and TAKEN2 every pack across the window's edge
(their branches not taken) give the cost of a warp whose rows end inside packs, which is
most warps of short rows (PERFORMANCE.md, v15).

    e.g. v15's rows_keys_g8_p8x1_f16 (from scripts/check-ptxas.sh's masked_softmax.sm_90.cubin),
    every fetch, decode and store whole, then every one across the edge (the own-columns
    stores, 0x31a0 and 0x4310, whole in both): 418, 581 and a union of 583
    scripts/sass-path.py k64.sass 0x1c00:T,0x1fa0:T,0x23d0:T,0x3020:T,0x31a0:T,0x35b0:T,0x41a0:T,0x4310:T
        --union 0x1c00:N,0x1fa0:N,0x23d0:N,0x3020:N,0x31a0:T,0x35b0:N,0x41a0:N,0x4310:T   (one command line)
    (addresses move with any change to the kernels: find the branches again with --trace).
    The union counts distinct addresses, so an instruction a walk passes twice (a rolled
    inner loop, such as the unusual scale's) counts once there.

--loops lists every loop of the kernel instead (each backward branch before its first EXIT,
inner loops and the row loop alike), each walked with the whole-pack decisions: every
branch on two predicates (`@!P1 BRA P2, 0x...`, the form the looping kernels' tests of a
pack against the window and the row's columns compile to) taken, which is the path of a
whole pack (`LDG.E.128`, `STG.E.128`); with the loop's static size, its path and the
loads, stores and MUFU on it. PERFORMANCE.md v17 and v18 count their batches this way
(a batch of U packs a loop: divide by U; the write loops of zero packs show as small ones
around a single STG).

    e.g. scripts/sass-path.py --loops bc.sass     (bc.sass: the SASS of masked_softmax_fwd_block_cached_p4_f32)

    Not every whole-pack branch has two predicates: where ptxas if-converts the whole
    pack's code and branches around the edge code on one (`@!P0 BRA` just after the
    predicated whole-pack instructions: v19's 16-bit forward rows kernels' max, the
    16-bit backward g32 p8x4's loads), --loops walks the edge code too. Read --trace's
    not-taken branches and give those as taken (PERFORMANCE.md, v20: 819 was 630).

--rows walks each row loop of a 16-bit forward raw-pair rows kernel (PERFORMANCE.md v20, v22:
each loop whose back edge an EXIT follows; v22's kernels have two, with and without the
weight cache) three ways, with no decisions to give: `whole` (every branch on two
predicates taken, as --loops does, and each live pack's store branch: a branch on one
positive predicate over a store of zeros, `STG.E.128 ..., RZ`, within the next 45
instructions), `crossed` (the same, but the fetch's and the fill's branches, those before
the loop's first shuffle, not taken: every pack index crossed by some row's end) and their
union. It reproduces v20's hand-found walks (623/895/899 for rows_g8_p8x4_f16 on v21).

    e.g. scripts/sass-path.py --rows g8.sass

--trace also prints, in the walk's order, each conditional branch met (its address, the
instruction and T or N: where to look for the decisions to give) and each global load or
store, MUFU and shuffle with its place on the path. The count does not say whether a
kernel's loads are all in flight before their first use: in v14 a change that cut 38
instructions from a batch had ptxas issue rows 2-4's score loads after row 1's `exp`,
which waits on row 1's load (PERFORMANCE.md, v14). The order does.
"""
import re
import sys


def parse(path):
    ins, order = {}, []
    for line in open(path):
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            ins[addr] = m.group(2)
            order.append(addr)
    return ins, order


def branch_target(text):
    m = re.search(r"BRA (?:!?U?P[0-9T], )?(0x[0-9a-f]+)", text)
    return int(m.group(1), 16) if m else None


def decisions(arg):
    overrides = {}
    for item in filter(None, (arg or "").split(",")):
        addr, way = item.split(":")
        overrides[int(addr, 16)] = way == "T"
    return overrides


def walk(ins, order, start, end, overrides, trace):
    """The addresses on the path from start to the back edge at end, and the branches taken."""
    pc, path, taken = start, [], []
    unusual_scale = None  # the predicate that holds for the unusual scales, while it lives
    while True:
        text = ins[pc]
        path.append(pc)
        if trace and re.search(r"\b(LDG|STG|MUFU|SHFL)", text):
            print(f"    {len(path):5d} {pc:#x} {text}")
        body = re.sub(r"^@!?U?P\w+ ", "", text)
        dest = re.match(r"[FIP]\w*SETP\S* (P\d),|PLOP3\S* (P\d),", body)
        if dest:
            written = dest.group(1) or dest.group(2)
            # ScaleMap::plain's test: |scale| < 2^-64 or |scale| log2(e) = inf.
            unusual_scale = written if "5.42101086242752217e-20" in body else (
                None if written == unusual_scale else unusual_scale)
        if len(path) > 100000:
            sys.exit("the path does not reach the back edge: give more branch decisions")
        if pc == end:
            return path, taken
        i = order.index(pc)
        nxt = order[i + 1]
        target = branch_target(text)
        if target is not None:
            if text.startswith("@"):
                before = " ".join(ins[order[j]] for j in range(max(0, i - 3), i))
                take = "0x1ffffff" in before or ("0x7fffffff" in before and text.startswith("@!P"))
                guard = re.match(r"@(!?)(P\d) ", text)
                if guard and guard.group(2) == unusual_scale:
                    take = guard.group(1) == "!"  # to the usual scale's path
                take = overrides.get(pc, take)
                if trace:
                    print(f"  branch {pc:#x} {text} -> {'T' if take else 'N'}")
                if take:
                    nxt = target
                    taken.append(hex(pc))
            else:
                nxt = target
        pc = nxt


def loops(ins, order, trace):
    """--loops: every loop before the first EXIT, walked with the whole-pack decisions."""
    exits = [a for a in order if ins[a] == "EXIT"]
    first_exit = exits[0] if exits else order[-1] + 1
    whole = {a: True for a in order if re.match(r"@!?U?P\w+ BRA !?U?P\w+, ", ins[a])}
    for end in order:
        start = branch_target(ins[end])
        if start is None or start >= end or end >= first_exit:
            continue
        path, taken = walk(ins, order, start, end, whole, trace)
        bodies = [re.sub(r"^@!?U?P\w+ ", "", ins[a]) for a in path]
        counts = " ".join(f"{op} {sum(b.startswith(op) for b in bodies)}"
                          for op in ("LDG", "LDS", "STS", "STG", "MUFU"))
        print(f"loop {start:#x}..{end:#x}: static {(end - start) // 16 + 1}, "
              f"{len(path)} on the path; {counts}")


def rows(ins, order):
    """--rows: each row loop's whole, crossed and union walks (see the docstring)."""
    index = {a: n for n, a in enumerate(order)}
    ends = [a for n, a in enumerate(order[:-1])
            if (branch_target(ins[a]) or a) < a and a - branch_target(ins[a]) > 0x1000
            and any("EXIT" in ins[b] for b in order[n + 1:n + 4])]
    if not ends:
        sys.exit("no row loop (a back edge before an EXIT)")
    for end in ends:
        start = branch_target(ins[end])
        whole = {}
        for _ in range(200):  # take one more branch a pass, until none is left to take
            path, _ = walk(ins, order, start, end, whole, False)
            more = None
            for a in path:
                m = re.match(r"@(!?)P\d BRA (!?P\d, )?(0x[0-9a-f]+)", ins[a])
                if not m or a in whole or not start <= int(m.group(3), 16) <= end:
                    continue
                ahead = [ins[b] for b in order[index[a] + 1:index[a] + 46]]
                zeros = any(re.search(r"STG\.E\.128 .*, RZ$", t) for t in ahead)
                if m.group(2) or (zeros and not m.group(1)):
                    more = a
                    break
            if more is None:
                break
            whole[more] = True
        first_shuffle = min((a for a in order if start <= a <= end and "SHFL" in ins[a]), default=end)
        crossed = {a: t for a, t in whole.items() if a > first_shuffle}
        path, _ = walk(ins, order, start, end, whole, False)
        path2, _ = walk(ins, order, start, end, crossed, False)
        mufu = sum("MUFU" in ins[a] for a in path)
        lds = sum(re.sub(r"^@!?U?P\w+ ", "", ins[a]).startswith("LDS") for a in path)
        print(f"row loop {start:#x}..{end:#x}: whole {len(path)}, crossed {len(path2)}, "
              f"union {len(set(path) | set(path2))}; MUFU {mufu}, LDS {lds} on the whole path")


def main():
    argv = sys.argv[1:]
    trace = "--trace" in argv
    argv = [a for a in argv if a != "--trace"]
    if "--rows" in argv:
        argv.remove("--rows")
        if not argv:
            sys.exit(__doc__)
        ins, order = parse(argv[0])
        rows(ins, order)
        return
    if "--loops" in argv:
        argv.remove("--loops")
        if not argv:
            sys.exit(__doc__)
        ins, order = parse(argv[0])
        loops(ins, order, trace)
        return
    second = None
    if "--union" in argv:
        i = argv.index("--union")
        if i + 1 >= len(argv):
            sys.exit("--union needs a second set of decisions")
        second = argv[i + 1]
        del argv[i:i + 2]
    if not argv:
        sys.exit(__doc__)
    ins, order = parse(argv[0])
    # The row loop: the backward branch that spans the most code (the warp-divergence
    # fallbacks of shuffles, reached by BRA.DIV, also branch back, into the loop's body).
    # Those stubs sit after the kernel's first unconditional EXIT: only branches before it count.
    exits = [a for a in order if ins[a] == "EXIT"]
    first_exit = exits[0] if exits else order[-1] + 1
    back = [(a, branch_target(ins[a])) for a in order if branch_target(ins[a]) is not None and branch_target(ins[a]) < a]
    back = [b for b in back if b[0] < first_exit] or back
    if not back:
        sys.exit("no loop (no backward branch) in " + argv[0])
    end, start = max(back, key=lambda b: b[0] - b[1])
    path, taken = walk(ins, order, start, end, decisions(argv[1] if len(argv) > 1 else ""), trace)
    print(f"loop {start:#x}..{end:#x}: {len(path)} instructions on the path; branches taken: {' '.join(taken) or 'none'}")
    if second is not None:
        if trace:
            print("  second walk (--union):")
        path2, taken2 = walk(ins, order, start, end, decisions(second), trace)
        print(f"second walk: {len(path2)} instructions; branches taken: {' '.join(taken2) or 'none'}")
        print(f"union: {len(set(path) | set(path2))} instructions on either walk")


if __name__ == "__main__":
    main()
