#!/usr/bin/env bash
# Line coverage of kernels/*.cu and *.cuh under the emulator's case matrix: builds the
# emulator with gcov instrumentation in its own target directory, runs
# `cargo test --release --test emu_kernels --test emu_baseline` (about 23 minutes on 2
# cores), and lists, per kernel file, the lines no trial executed (counts summed over
# every template instantiation). No GPU needed.
#
#   scripts/emu-coverage.sh [target-dir]     # default /tmp/masked-softmax-coverage
#
# Caveat: a line that only calls an always-inline function (`return weight(k, max_key);`)
# can show 0 because gcov books the inlined body's lines instead; check such a line by
# mutation (make it wrong, run the trials that should reach it). Checked that way: the
# return of `pack_sum` in masked_softmax.cu (session 23: its sum doubled, 409 of the 3,182
# f16 trials fail).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-/tmp/masked-softmax-coverage}"
cd "$root"
CXXFLAGS="--coverage" RUSTFLAGS="-C link-arg=-lgcov" CARGO_TARGET_DIR="$target" \
    cargo test --release --test emu_kernels --test emu_baseline >"$target.log" 2>&1 || {
    tail -20 "$target.log"
    exit 1
}
python3 - "$target" <<'PY'
import collections, glob, json, os, subprocess, sys
target = sys.argv[1]
counts = collections.defaultdict(lambda: collections.defaultdict(int))
for cpp in glob.glob(f"{target}/release/build/masked-softmax-emu-*/out/*.emu.cpp"):
    out_dir = os.path.dirname(cpp)
    stem = os.path.basename(cpp)[: -len(".cpp")]
    for obj in glob.glob(f"{out_dir}/*-{stem}.o"):
        if not os.path.exists(obj[:-2] + ".gcda"):
            continue
        report = subprocess.run(["gcov", "--json-format", "--stdout", "-o", obj, cpp],
                                capture_output=True, text=True, check=True).stdout
        for chunk in filter(str.strip, report.splitlines()):
            for f in json.loads(chunk)["files"]:
                if "/kernels/" in f["file"]:
                    for line in f["lines"]:
                        counts[f["file"]][line["line_number"]] += line["count"]
for path in sorted(counts):
    source = open(path).read().splitlines()
    never = [n for n, c in sorted(counts[path].items()) if c == 0]
    print(f"{os.path.relpath(path)}: {len(counts[path])} lines, {len(never)} never run")
    for n in never:
        print(f"    {n}: {source[n - 1].strip()[:100]}")
PY
