#!/usr/bin/env bash
# Compiles every kernels/*.cu to SASS for sm_80 and sm_90 with ptxas's report and fails
# if any kernel spills registers or uses a local-memory stack frame (our kernels keep
# their rows in registers or shared memory; a spill is a performance bug). Costs no GPU.
#
#   scripts/check-ptxas.sh [report-dir] [ptx-dir]
#
# report-dir defaults to target/ptxas. With ptx-dir (a build's OUT_DIR, holding sm_80/ and
# sm_90/ PTX) ptxas reads the PTX the crate embeds, as the driver does: sm_90 from
# sm_90/ where the file has Hopper PTX, else from sm_80/. That skips nvcc's front end, more
# than half of each compile (CI passes it); without it, every file compiles from source.
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

# Every (file, architecture) compiles at once (each nvcc is single-threaded); a failed
# compile fails the check.
status=0
pids=()
for cu in "$root"/kernels/*.cu; do
    name="$(basename "$cu" .cu)"
    for arch in sm_80 sm_90; do
        if [[ -n "$ptx_dir" ]]; then
            ptx="$ptx_dir/$arch/$name.ptx"
            [[ -f "$ptx" ]] || ptx="$ptx_dir/sm_80/$name.ptx"
            [[ -f "$ptx" ]] || { echo "error: no PTX of $name in $ptx_dir" >&2; exit 1; }
            "$ptxas" -arch="$arch" -v "$ptx" -o "$out/$name.$arch.cubin" 2>"$out/$name.$arch.txt" &
        else
            "$nvcc" -cubin -arch="$arch" --std=c++17 -Xptxas -v -I"$root/kernels" \
                "$cu" -o "$out/$name.$arch.cubin" 2>"$out/$name.$arch.txt" &
        fi
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
