#!/usr/bin/env bash
# Compiles every kernels/*.cu to SASS for sm_80 and sm_90 with ptxas's report and fails
# if any kernel spills registers or uses a local-memory stack frame (our kernels keep
# their rows in registers or shared memory; a spill is a performance bug). Costs no GPU.
#
#   scripts/check-ptxas.sh [report-dir]      # report-dir defaults to target/ptxas
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/target/ptxas}"
mkdir -p "$out"
nvcc="$(command -v nvcc || true)"
[[ -n "$nvcc" ]] || nvcc="$("$root/scripts/install-cuda-toolchain.sh" --print | tail -n 1)"

# Spills read in the SASS and accepted, as "arch kernel bytes": at most that many bytes of
# stack frame and of spill stores (loads unchecked). Each listed kernel stores and reloads
# one value once per row, outside every loop over a row's packs.
#  - block_stream_p8 16-bit forward on sm_90 (v17): the row index, at 64 registers
#    (__launch_bounds__(512, 2)); left free, ptxas takes 90 and one block fits.
allowed_spills="
sm_90 masked_softmax_fwd_block_stream_p8_f16 8
sm_90 masked_softmax_fwd_block_stream_p8_bf16 8
"

# Every (file, architecture) compiles at once (each nvcc is single-threaded); a failed
# compile fails the check.
status=0
pids=()
for cu in "$root"/kernels/*.cu; do
    name="$(basename "$cu" .cu)"
    for arch in sm_80 sm_90; do
        "$nvcc" -cubin -arch="$arch" --std=c++17 -Xptxas -v -I"$root/kernels" \
            "$cu" -o "$out/$name.$arch.cubin" 2>"$out/$name.$arch.txt" &
        pids+=($!)
    done
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "error: nvcc failed (reports in $out)" >&2; status=1; }
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
