#!/usr/bin/env bash
# One device call's worth of GPU checks, for the `device` tool's machines: runs the bundle
# that scripts/build-gpu-bundle.sh built (carry target/gpu-bundle) and leaves at most a few
# files in OUT_DIR (the tool brings back 8): summary.txt and results.tgz with every log and
# the benchmark's results.
#
#   scripts/gpu-session.sh [run.sh options: --sanitize --bench] OUT_DIR
#
# Example device command (carry target/gpu-pack, the packed bundle, which this unpacks):
#   scripts/gpu-session.sh --sanitize --bench "$OUT"
#
# After run.sh, two optional steps, also into results.tgz, each with a line in summary.txt:
#   VARIANT_ARGS="--cases sweep --k-lens 4096,65536"  bench-throughput --variants with
#                                                      these arguments (into variants/;
#                                                      crossovers.txt: --crossovers on it)
#   PROFILE_SPECS="f16:262144:forward:block_stream_p8 ..."  profile.sh (Nsight Compute) on
#                                                      these kernels (into profile/)
# DEADLINE (seconds, as run.sh reads it) bounds them too: a step is skipped with less
# than 30 s left. Then, with 100 s left, the demo with the PTX JIT forced (its time in
# summary.txt against the examples' lines: what the embedded SASS saves). With --bench, predictions.txt checks results/predictions.json
# (PERFORMANCE.md's predictions) against the run, and grid-fit.txt lists each case's time
# on the grid counted before v10 over its time on the fitted one.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
args=("$@")
out="${args[-1]}"
unset 'args[-1]'
pack="$root/target/gpu-pack/gpu-bundle.tar.xz"
if [[ -f "$pack" ]]; then
    rm -rf "$root/target/gpu-bundle"
    # Python's tarfile where the machine has no xz for tar.
    tar xJf "$pack" -C "$root/target" || python3 - "$pack" "$root/target" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as pack:
    try:
        pack.extractall(sys.argv[2], filter="tar")
    except TypeError:  # a Python without extraction filters
        pack.extractall(sys.argv[2])
PY
fi
work="$(mktemp -d)"
"$root/target/gpu-bundle/run.sh" "${args[@]}" "$work"
status=$?
bundle="$root/target/gpu-bundle"
left() { [[ "${DEADLINE:-0}" -le 0 ]] && echo 600 || echo $((DEADLINE - SECONDS)); }
if [[ -n "${VARIANT_ARGS:-}" ]]; then
    if [[ $(left) -ge 30 ]]; then
        start=$SECONDS
        # shellcheck disable=SC2086
        timeout -k 5 "$(left)" "$bundle/bin/bench-throughput" --variants $VARIANT_ARGS \
            --out "$work/variants" >"$work/variants.log" 2>&1
        rc=$?
        printf '%-40s rc=%d %4ds\n' "variants" "$rc" $((SECONDS - start)) >>"$work/summary.txt"
        [[ $rc -eq 0 ]] || status=1
        # Where a variant beat the planner's kernel (marked <<), also from a run cut short.
        if [[ -f "$work/variants/results.json" ]]; then
            "$bundle/bin/bench-throughput" --crossovers "$work/variants/results.json" \
                >"$work/variants/crossovers.txt" 2>&1
            grep -E '<<|cases have' "$work/variants/crossovers.txt" | sed 's/^/    /' >>"$work/summary.txt"
        fi
    else
        echo "variants                                 SKIPPED (deadline)" >>"$work/summary.txt"
    fi
fi
if [[ -n "${PROFILE_SPECS:-}" ]]; then
    if [[ $(left) -ge 30 ]]; then
        start=$SECONDS
        # shellcheck disable=SC2086
        timeout -k 5 "$(left)" "$bundle/profile.sh" "$work/profile" $PROFILE_SPECS >"$work/profile.log" 2>&1
        rc=$?
        printf '%-40s rc=%d %4ds\n' "profile" "$rc" $((SECONDS - start)) >>"$work/summary.txt"
        sed 's/^/    /' "$work/profile.log" >>"$work/summary.txt"
        [[ $rc -eq 0 ]] || status=1
    else
        echo "profile                                  SKIPPED (deadline)" >>"$work/summary.txt"
    fi
fi
# What the embedded SASS saves: the demo once more, the driver made to ignore the SASS and
# compile the PTX (as a PTX-only build, before v23.1, made every fresh machine do), with no
# JIT cache. Last, as it costs most of a minute and decides nothing else.
if [[ -x "$bundle/bin/demo" && $(left) -ge 100 ]]; then
    start=$SECONDS
    timeout -k 5 90 env CUDA_CACHE_DISABLE=1 CUDA_FORCE_PTX_JIT=1 "$bundle/bin/demo" \
        >"$work/demo-ptx-jit.log" 2>&1
    rc=$?
    printf '%-40s rc=%d %4ds\n' "demo (PTX JIT forced, no cache)" "$rc" $((SECONDS - start)) >>"$work/summary.txt"
    grep -h "kernels loaded" "$work/demo-ptx-jit.log" | sed 's/^/    demo: /' >>"$work/summary.txt"
fi
# PERFORMANCE.md's predictions against this run (results/predictions.json, no GPU needed).
if [[ -f "$root/results/predictions.json" && -f "$work/bench/results.json" ]]; then
    against="$work/bench/results.json"
    [[ -f "$work/variants/results.json" ]] && against="$against,$work/variants/results.json"
    "$bundle/bin/bench-throughput" --predictions "$root/results/predictions.json" \
        --against "$against" >"$work/predictions.txt" 2>&1
    echo "predictions: $(tail -n 1 "$work/predictions.txt")" >>"$work/summary.txt"
fi
# v10's grid fitting in this run: each case's time on the old grid over the new.
if [[ -f "$work/bench/results.json" ]]; then
    "$bundle/bin/bench-throughput" --grid-fit "$work/bench/results.json" >"$work/grid-fit.txt" 2>&1
    { echo "grid fit: $(tail -n 1 "$work/grid-fit.txt")"; head -n 1 "$work/grid-fit.txt" | sed 's/^/    /'; } >>"$work/summary.txt"
fi
grep -h "host-bound timing" "$work/bench.log" 2>/dev/null | cut -c1-600 | sed 's/^/host: /' >>"$work/summary.txt"
cp "$work/summary.txt" "$out/" 2>/dev/null
# The device tool returns the end of stdout: put the first failures there too.
for log in "$work"/tests.log "$work"/demo.log "$work"/sanitize-*.log; do
    [[ -f "$log" ]] || continue
    if grep -qE "^failures:|ERROR SUMMARY: [1-9]|panicked|Error" "$log"; then
        echo "--- $(basename "$log"): first failure lines"
        grep -m 40 -E -A4 "^---- |ERROR SUMMARY: [1-9]|panicked|Error:|Invalid|Race|Barrier" "$log" | cut -c1-300 | head -n 60
    fi
done
for f in results.json results.csv bandwidth.svg; do
    [[ -f "$work/bench/$f" ]] && cp "$work/bench/$f" "$out/"
done
tar czf "$out/results.tgz" -C "$work" .
exit $status
