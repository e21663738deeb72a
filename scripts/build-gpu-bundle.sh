#!/usr/bin/env bash
# Builds the self-contained GPU bundle in target/gpu-bundle: the release GPU test binary, the
# benchmark and the demo (kernels embedded as SASS and PTX; libcuda is loaded at run time, so they
# need no Rust and no CUDA toolkit where they run), the ptxas reports, and run.sh,
# which runs them, optionally under compute-sanitizer, and writes logs to a directory.
#
# Also packs it as target/gpu-pack/gpu-bundle.tar.xz (what to carry to a device machine;
# scripts/gpu-session.sh unpacks it there).
#
#   scripts/build-gpu-bundle.sh                         # then, on the GPU machine:
#   target/gpu-bundle/run.sh OUT_DIR                    # tests + demo
#   target/gpu-bundle/run.sh --sanitize --bench OUT_DIR # + 4 sanitizer tools + benchmark
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/target/gpu-bundle"

command -v nvcc >/dev/null || scripts/install-cuda-toolchain.sh >/dev/null
export MASKED_SOFTMAX_REQUIRE_KERNELS=1

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/bin-ptx" "$bundle/ptxas"
# build_into DEST CARGO_BUILD_ARGS...: a release build; copies into DEST the GPU tests, the
# GPU benchmark and any example it built (cargo prints each executable's path), and notes
# the crate's OUT_DIR (the PTX, fatbins and ptxas reports) in ptxas/OUT_DIR.
build_into() {
    local dest="$1"
    shift
    cargo build --release "$@" --message-format=json-render-diagnostics | python3 -c '
import json, os, re, shutil, sys
dest = sys.argv[1]
for line in sys.stdin:
    msg = json.loads(line)
    # "path+file:///dir#masked-softmax@0.1.0", or "...masked-softmax#0.1.0" in a folder of that name
    if msg.get("reason") == "build-script-executed" and re.search(r"[#/]masked-softmax[@#]", msg["package_id"]):
        with open(os.path.join(dest, "..", "ptxas", "OUT_DIR"), "w") as f:
            f.write(msg["out_dir"])
    exe = msg.get("executable") if msg.get("reason") == "compiler-artifact" else None
    if not exe:
        continue
    target = msg["target"]
    kind = target["kind"][0]
    name = target["name"].replace("-", "_")
    if kind == "bench":
        if name != "throughput":
            continue  # the CPU benches (criterion) need no GPU
        name = "bench-" + name
    elif msg["profile"]["test"]:
        if not name.startswith("gpu"):
            continue  # only the GPU tests: CI runs the rest, and the carry limit is 64 MiB
        name = "test-" + name
    elif kind != "example":
        continue
    shutil.copy2(exe, os.path.join(dest, name))
    print("bundled", os.path.basename(dest) + "/" + name)
' "$dest"
}
# First, the GPU tests and the benchmark embedding the PTX alone (MASKED_SOFTMAX_EMBED=ptx):
# run.sh switches to them only if the fatbin build's kernels do not load on the device
# (v23.1 is the first fatbin build; a GPU session is too rare to lose to it). Then the
# fatbin build, which leaves target/release as other builds expect it.
MASKED_SOFTMAX_EMBED=ptx build_into "$bundle/bin-ptx" --tests --benches
build_into "$bundle/bin" --tests --examples --benches
# The ptxas reports of the SASS the binaries embed (build.rs's, beside the PTX in OUT_DIR;
# the PTX itself stays out of the bundle, which holds it in each binary's fatbins).
out_dir="$(cat "$bundle/ptxas/OUT_DIR")"
rm "$bundle/ptxas/OUT_DIR"
scripts/check-ptxas.sh "$bundle/ptxas" "$out_dir" >"$bundle/ptxas/summary.txt" 2>&1 || {
    cat "$bundle/ptxas/summary.txt"
    exit 1
}
rm -f "$bundle"/ptxas/*.cubin
cp scripts/gpu-bundle-run.sh "$bundle/run.sh"
cp scripts/gpu-sharded.sh "$bundle/sharded.sh"
cp scripts/gpu-profile.sh "$bundle/profile.sh"
chmod +x "$bundle/run.sh"
git rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || echo "uncommitted" >"$bundle/COMMIT"
git status --short >>"$bundle/COMMIT" 2>/dev/null || true
du -sh "$bundle"
# The device tool carries at most 64 MiB. Each binary is mostly the same compressed fatbins
# (about 23 MB), which gzip cannot shrink (about 90 MB packed without bin-ptx); xz with a
# dictionary that spans the binaries stores them once, and bin-ptx's PTX compresses well:
# about 28 MB in all, in about 1.5 min. Carry target/gpu-pack;
# scripts/gpu-session.sh unpacks it.
mkdir -p "$root/target/gpu-pack"
rm -f "$root/target/gpu-pack/gpu-bundle.tgz"
tar cf - -C "$root/target" gpu-bundle | xz -T1 --lzma2=preset=6,dict=128MiB \
    >"$root/target/gpu-pack/gpu-bundle.tar.xz"
du -sh "$root/target/gpu-pack/gpu-bundle.tar.xz"
