#!/usr/bin/env bash
# profile.sh OUT_DIR [TYPE:K_LEN:DIRECTION:KERNEL[:variants] ...]: Nsight Compute on single
# launches of the benchmark's sweep cases, for tuning: speed of light, warp stall reasons,
# occupancy, launch statistics, pipe utilization and instruction mix. One
# ncu-<type>-k<k_len>-<direction>[-<kernel>].txt per profile; KERNEL must match the
# planner's kernel for the case, or with `:variants` any kernel the benchmark's --variants
# runs on it (the bench then runs them all, the profiler catching the one named).
# PROFILE_MIB (default 256, the sweep's) sets the case size, and so the rows and the kernel.
# (Bundled next to run.sh; ncu must be on PATH or in /usr/local/cuda/bin.)
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: profile.sh OUT_DIR [TYPE:K_LEN:DIRECTION:KERNEL ...]}"
shift
mkdir -p "$out"
ncu="$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)"
[[ -n "$ncu" ]] || { echo "ncu not found"; exit 1; }
status=0
for spec in "$@"; do
    IFS=: read -r dtype k direction kernel variants <<<"$spec"
    log="$out/ncu-$dtype-k$k-$direction.txt"
    extra=()
    if [[ "$variants" == "variants" ]]; then
        extra=(--variants)
        log="$out/ncu-$dtype-k$k-$direction-$kernel.txt"
    fi
    timeout -k 5 "${PROFILE_TIMEOUT:-60}" "$ncu" --clock-control none \
        --section SpeedOfLight --section WarpStateStats --section Occupancy \
        --section LaunchStats --section MemoryWorkloadAnalysis \
        --section ComputeWorkloadAnalysis --section InstructionStats \
        -k "regex:$kernel" --launch-skip 2 -c 1 \
        "$here"/bin/bench-throughput --types "$dtype" --directions "$direction" --cases sweep \
        --k-lens "$k" --mib "${PROFILE_MIB:-256}" --repeats 3 --no-baseline ${extra[@]+"${extra[@]}"} \
        --out "$out/bench-scratch" \
        >"$log" 2>&1
    rc=$?
    [[ $rc -eq 0 ]] || status=1
    # The lines that say what bounds a kernel: DRAM and L2 traffic, occupancy, issue, and
    # the instructions executed (over the case's rows: the per-row cost of short rows).
    echo "$spec rc=$rc $(grep -E 'DRAM Throughput|L2 Hit Rate|Achieved Occupancy|Registers Per|Issue Slots Busy|Warp Cycles Per Issued|No Eligible|Executed Ipc Active|Executed Instructions  ' "$log" | tr -s ' ' | tr '\n' ';')"
done
rm -rf "$out/bench-scratch"
exit $status
