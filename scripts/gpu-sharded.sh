#!/usr/bin/env bash
# sharded.sh N CMD...: runs CMD N times at once over the GPU tests' sanitizer subset, the
# i-th process with MASKED_SOFTMAX_GPU_SHARD=i/N; prints each process's output in turn and
# exits non-zero if any process failed. (Bundled next to run.sh.)
set -uo pipefail
n="$1"
shift
export MASKED_SOFTMAX_GPU_SUBSET=sanitize
if [[ "$n" -le 1 ]]; then
    exec "$@"
fi
dir="$(mktemp -d)"
pids=()
for ((i = 0; i < n; i++)); do
    MASKED_SOFTMAX_GPU_SHARD="$i/$n" "$@" >"$dir/$i.log" 2>&1 &
    pids+=($!)
done
dump() {
    for ((i = 0; i < n; i++)); do
        echo "--- shard $i/$n"
        cat "$dir/$i.log"
    done
    rm -rf "$dir"
}
# A time limit (timeout signals the whole process group) still leaves every shard's log.
trap 'dump; exit 124' TERM INT
status=0
for ((i = 0; i < n; i++)); do
    wait "${pids[$i]}" || status=1
done
dump
exit $status
