#!/usr/bin/env bash
# Compiles every kernels/*.cu to SASS for sm_80 and sm_90 with ptxas's report and fails
# if any kernel spills registers or uses a local-memory stack frame (our kernels keep
# their rows in registers or shared memory; a spill is a performance bug). Costs no GPU.
#
#   scripts/check-ptxas.sh [report-dir] [ptx-dir]
#
# report-dir defaults to target/ptxas. Without ptx-dir every file compiles from source
# (nvcc). With ptx-dir (a build's OUT_DIR: sm_<cap>/ folders of the PTX the crate embeds)
# ptxas compiles, for each file and architecture, the PTX the driver would load there: the
# highest target at or below it (on sm_90, a base-80 build's sm_90/). That skips nvcc's front end, more than half of each compile (CI and
# the GPU bundle pass it); a build with no PTX for sm_80 (a base of 90) is an error. Where
# build.rs compiled that very PTX for that architecture (the SASS it embeds), its ptxas
# report beside the PTX is taken as it is, and nothing compiles: the report is of the SASS
# the crate ships. (cuobjdump reads SASS from the build's .fatbin files beside the PTX;
# without ptx-dir, from the cubins this writes.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/target/ptxas}"
ptx_dir="${2:-}"
mkdir -p "$out"
nvcc="$(command -v nvcc || true)"
[[ -n "$nvcc" ]] || nvcc="$("$root/scripts/install-cuda-toolchain.sh" --print | tail -n 1)"
ptxas="$(dirname "$nvcc")/ptxas"

# Spills read in the SASS and accepted, as "arch kernel bytes": at most that many bytes of
# stack frame and of spill stores (loads unchecked). Each listed kernel stores and reloads
# one value once per row, outside every loop over a row's packs.
#  - block_stream_p8 16-bit forward on sm_90 (v17): the row index, at 64 registers
#    (__launch_bounds__(512, 2)); left free, ptxas takes 90 and one block fits.
allowed_spills="
sm_90 masked_softmax_fwd_block_stream_p8_f16 8
sm_90 masked_softmax_fwd_block_stream_p8_bf16 8
"

# The PTX of kernel file $1 that a device of compute capability $2 (80, 90) loads: the
# highest sm_<cap>/ of ptx_dir at or below it that has the file; empty if none.
ptx_for() {
    local best="" best_cap=0 folder cap
    for folder in "$ptx_dir"/sm_*/; do
        cap="$(basename "$folder")"
        cap="${cap#sm_}"
        if [[ "$cap" =~ ^[0-9]+$ && -f "$folder$1.ptx" ]] && ((cap <= $2 && cap > best_cap)); then
            best="$folder$1.ptx"
            best_cap=$cap
        fi
    done
    echo "$best"
}
if [[ -n "$ptx_dir" ]]; then
    for cu in "$root"/kernels/*.cu; do
        name="$(basename "$cu" .cu)"
        for cap in 80 90; do
            [[ -n "$(ptx_for "$name" "$cap")" ]] ||
                { echo "error: no PTX of $name for sm_$cap in $ptx_dir" >&2; exit 1; }
        done
    done
fi

# Every (file, architecture) compiles at once (each nvcc or ptxas is single-threaded); a
# failed compile fails the check.
status=0
pids=()
for cu in "$root"/kernels/*.cu; do
    name="$(basename "$cu" .cu)"
    for arch in sm_80 sm_90; do
        if [[ -n "$ptx_dir" ]]; then
            ptx="$(ptx_for "$name" "${arch#sm_}")"
            # (The fatbin is written after every ptxas of the build succeeded: a report without
            # it is from a build that stopped.)
            if [[ "$(basename "$(dirname "$ptx")")" == "$arch" && -f "${ptx%.ptx}.ptxas.txt" &&
                -f "${ptx%.ptx}.fatbin" ]]; then
                cp "${ptx%.ptx}.ptxas.txt" "$out/$name.$arch.txt"
                continue
            fi
            "$ptxas" -arch="$arch" -v "$ptx" -o "$out/$name.$arch.cubin" 2>"$out/$name.$arch.txt" &
        else
            "$nvcc" -cubin -arch="$arch" --std=c++17 -Xptxas -v -I"$root/kernels" \
                "$cu" -o "$out/$name.$arch.cubin" 2>"$out/$name.$arch.txt" &
        fi
        pids+=($!)
    done
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "error: a compile failed (reports in $out)" >&2; status=1; }
done
for cu in "$root"/kernels/*.cu; do
    name="$(basename "$cu" .cu)"
    for arch in sm_80 sm_90; do
        report="$out/$name.$arch.txt"
        # ptxas prints the function name, then its stack/spill line, then its registers.
        awk -v arch="$arch" -v allowed="$allowed_spills" '
            BEGIN { n = split(allowed, lines, "\n"); for (i = 1; i <= n; i++) { split(lines[i], f, " "); if (f[1] == arch) most[f[2]] = f[3] } }
            /Compiling entry function/ { fn = $0; sub(/.*function .\047?/, "", fn); sub(/\047.*/, "", fn) }
            /bytes stack frame/ {
                stack = $1 + 0; stores = $5 + 0; loads = $9 + 0
                if ((fn in most) && stores <= most[fn] + 0 && stack <= most[fn] + 0) {
                    if (stores) printf "ALLOWED SPILL %s %s: %s\n", arch, fn, $0
                } else if (stack || stores || loads) { printf "SPILL %s %s: %s\n", arch, fn, $0; bad = 1 }
            }
            /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); printf "%-6s %-40s %s\n", arch, fn, substr($0, RSTART, RLENGTH) }
            END { exit bad }
        ' "$report" || status=1
    done
done
if [[ $status -ne 0 ]]; then
    echo "error: a kernel spills or uses a stack frame (reports in $out)" >&2
fi
exit $status
