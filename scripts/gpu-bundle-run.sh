#!/usr/bin/env bash
# Runs the GPU bundle (built by scripts/build-gpu-bundle.sh) on a machine with a GPU.
#
#   run.sh [--sanitize] [--bench] OUT_DIR
#
# Writes to OUT_DIR: summary.txt (GPU, commit, one line per step with its exit status and
# seconds), tests.log (every test binary; GPU tests must run, not skip:
# MASKED_SOFTMAX_REQUIRE_GPU=1), demo.log; with --sanitize one sanitize-<tool>.log per
# compute-sanitizer tool (memcheck, racecheck, initcheck, synccheck) over the GPU tests'
# sanitizer subset (MASKED_SOFTMAX_GPU_SUBSET=sanitize: every kernel class and type, fewer
# sizes); with --bench bench.log and bench/ (results.json, results.csv, bandwidth.svg;
# BENCH_ARGS are passed on, e.g. "--quick"). Exits non-zero if any step failed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sanitize=0
bench=0
while [[ "${1:-}" == --* ]]; do
    case "$1" in
    --sanitize) sanitize=1 ;;
    --bench) bench=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
out="${1:?usage: run.sh [--sanitize] [--bench] OUT_DIR}"
mkdir -p "$out"
export MASKED_SOFTMAX_REQUIRE_GPU=1
summary="$out/summary.txt"
{
    echo "bundle commit: $(head -n 1 "$here/COMMIT")"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
    date -u
} >"$summary"
status=0
step() { # step NAME LOG CMD...: runs CMD, appends its output to LOG and its status to the summary
    local name="$1" log="$2"
    shift 2
    local start=$SECONDS
    echo "=== $name" >>"$log"
    "$@" >>"$log" 2>&1
    local rc=$?
    printf '%-40s rc=%d %4ds\n' "$name" "$rc" $((SECONDS - start)) | tee -a "$summary"
    [[ $rc -eq 0 ]] || status=1
}

for test in "$here"/bin/test-*; do
    step "$(basename "$test")" "$out/tests.log" "$test"
done
for example in "$here"/bin/*; do
    case "$(basename "$example")" in test-* | bench-*) continue ;; esac
    step "$(basename "$example")" "$out/demo.log" "$example"
done

if [[ $sanitize -eq 1 ]]; then
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
    if [[ -z "$sanitizer" ]]; then
        echo "compute-sanitizer not found" | tee -a "$summary"
        status=1
    else
        for tool in memcheck racecheck initcheck synccheck; do
            for test in "$here"/bin/test-gpu_*; do
                step "sanitize-$tool $(basename "$test")" "$out/sanitize-$tool.log" \
                    env MASKED_SOFTMAX_GPU_SUBSET=sanitize \
                    "$sanitizer" --tool "$tool" --error-exitcode 99 "$test" --test-threads 1
            done
            grep -h "ERROR SUMMARY" "$out/sanitize-$tool.log" | sort | uniq -c | sed "s/^/  $tool: /" >>"$summary"
        done
    fi
fi
if [[ $bench -eq 1 ]]; then
    for b in "$here"/bin/bench-*; do
        # shellcheck disable=SC2086
        step "$(basename "$b")" "$out/bench.log" "$b" --out "$out/bench" ${BENCH_ARGS:-}
    done
fi
echo "overall: $([[ $status -eq 0 ]] && echo PASS || echo FAIL)" | tee -a "$summary"
exit $status
