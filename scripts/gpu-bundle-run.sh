#!/usr/bin/env bash
# Runs the GPU bundle (built by scripts/build-gpu-bundle.sh) on a machine with a GPU.
#
#   run.sh [--sanitize] [--bench] OUT_DIR
#
# Writes to OUT_DIR: summary.txt (GPU, commit, one line per step with its exit status and
# seconds), tests.log (every test binary; GPU tests must run, not skip:
# MASKED_SOFTMAX_REQUIRE_GPU=1), demo.log (the examples, JIT cache off); with --sanitize one sanitize-<tool>.log per
# compute-sanitizer tool (memcheck, racecheck, initcheck, synccheck) over the GPU tests'
# sanitizer subset (MASKED_SOFTMAX_GPU_SUBSET=sanitize: every kernel class and type, fewer
# sizes); with --bench bench.log and bench/ (results.json, results.csv, bandwidth.svg;
# BENCH_ARGS are passed on, e.g. "--quick"). Exits non-zero if any step failed.
#
# SANITIZE_TOOLS picks the tools (default all four); SANITIZE_SHARDS=n runs each tool as n
# processes at once over interleaved shares of the subset (racecheck is slow).
#
# Time limits, so that a device call ends with its logs: DEADLINE (seconds from the start
# for the whole run; default none) and per-step caps TEST_TIMEOUT (default 300), EXAMPLE_TIMEOUT
# (60), SANITIZE_TIMEOUT (per tool, 120), BENCH_TIMEOUT (600). SANITIZE_FULL="memcheck ..."
# runs those tools once more over the whole GPU suite. A step that would start with
# less than 15 s left is skipped and counts as a failure.
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
deadline="${DEADLINE:-0}"
step() { # step NAME LOG CAP CMD...: runs CMD for at most CAP seconds (and within DEADLINE),
    # appends its output to LOG and its status to the summary (rc 124/137: timed out)
    local name="$1" log="$2" cap="$3"
    shift 3
    if [[ $deadline -gt 0 ]]; then
        local left=$((deadline - SECONDS))
        if [[ $left -lt 15 ]]; then
            printf '%-40s SKIPPED (deadline)\n' "$name" | tee -a "$summary"
            status=1
            return
        fi
        [[ $left -lt $cap ]] && cap=$left
    fi
    local start=$SECONDS
    echo "=== $name" >>"$log"
    local before
    before=$(wc -l <"$log")
    timeout -k 5 "$cap" "$@" >>"$log" 2>&1
    local rc=$?
    printf '%-40s rc=%d %4ds (cap %ds)\n' "$name" "$rc" $((SECONDS - start)) "$cap" | tee -a "$summary"
    # Every "test result" line of this step (one per shard when sharded).
    tail -n +$((before + 1)) "$log" | grep "^test result" | sed 's/^/    /' | tee -a "$summary"
    [[ $rc -eq 0 ]] || status=1
}

# Preflight: one GPU test. Should the fatbin build's kernels not load here where the
# PTX-only build's do, everything below runs the PTX-only build (bin-ptx: the GPU tests and
# the benchmark), and the summary says so.
if [[ -d "$here/bin-ptx" ]] && ! timeout 120 "$here/bin/test-gpu_kernels" --exact seed_example_f32 \
    >"$out/preflight.log" 2>&1; then
    if timeout 180 "$here/bin-ptx/test-gpu_kernels" --exact seed_example_f32 >>"$out/preflight.log" 2>&1; then
        echo "PREFLIGHT: the fatbin build failed where the PTX build passed; running the PTX build" |
            tee -a "$summary"
        grep -m 5 -iE "error|panicked" "$out/preflight.log" | cut -c1-300 | sed 's/^/    /' | tee -a "$summary"
        cp "$here"/bin-ptx/* "$here/bin/"
    else
        echo "PREFLIGHT: both builds fail seed_example_f32 (preflight.log)" | tee -a "$summary"
    fi
fi
for test in "$here"/bin/test-*; do
    step "$(basename "$test")" "$out/tests.log" "${TEST_TIMEOUT:-300}" "$test"
done
# With the driver's JIT cache off, each example's time includes its kernels' load as a
# fresh machine or container pays it: the embedded SASS, nothing compiled (the PTX alone
# cost the first process on a machine about 20-40 s; scripts/gpu-session.sh times that).
for example in "$here"/bin/*; do
    case "$(basename "$example")" in test-* | bench-*) continue ;; esac
    step "$(basename "$example") (no JIT cache)" "$out/demo.log" "${EXAMPLE_TIMEOUT:-60}" \
        env CUDA_CACHE_DISABLE=1 "$example"
done
awk '/^=== / { name = $2 } /kernels loaded/ { print "    " name ": " $0 }' "$out/demo.log" >>"$summary"

if [[ $sanitize -eq 1 ]]; then
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
    if [[ -z "$sanitizer" ]]; then
        echo "compute-sanitizer not found" | tee -a "$summary"
        status=1
    else
        for tool in ${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}; do
            for test in "$here"/bin/test-gpu_*; do
                step "sanitize-$tool $(basename "$test")" "$out/sanitize-$tool.log" "${SANITIZE_TIMEOUT:-120}" \
                    "$here/sharded.sh" "${SANITIZE_SHARDS:-1}" \
                    "$sanitizer" --tool "$tool" --error-exitcode 99 "$test" --test-threads 1
            done
            grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$out/sanitize-$tool.log" | sort | uniq -c | sed "s/^/  $tool: /" >>"$summary"
        done
        # SANITIZE_FULL="memcheck ...": these tools once more over every GPU test.
        for tool in ${SANITIZE_FULL:-}; do
            for test in "$here"/bin/test-gpu_*; do
                step "sanitize-full-$tool $(basename "$test")" "$out/sanitize-full-$tool.log" \
                    "${SANITIZE_TIMEOUT:-120}" "$sanitizer" --tool "$tool" --error-exitcode 99 "$test"
            done
            grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" "$out/sanitize-full-$tool.log" | sort | uniq -c | sed "s/^/  full $tool: /" >>"$summary"
        done
    fi
fi
if [[ $bench -eq 1 ]]; then
    for b in "$here"/bin/bench-*; do
        # shellcheck disable=SC2086
        step "$(basename "$b")" "$out/bench.log" "${BENCH_TIMEOUT:-600}" "$b" --out "$out/bench" ${BENCH_ARGS:-}
    done
fi
echo "overall: $([[ $status -eq 0 ]] && echo PASS || echo FAIL)" | tee -a "$summary"
exit $status
