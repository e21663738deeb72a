#!/usr/bin/env bash
# sharded.sh N CMD...: runs CMD N times at once over the GPU tests' sanitizer subset, the
# i-th process with MASKED_SOFTMAX_GPU_SHARD=i/N; prints each process's output in turn and
# exits non-zero if any process failed. (Bundled next to run.sh.)
set -uo pipefail
n="$1"
shift
[[ "$n" =~ ^[0-9]+$ ]] || { echo "sharded.sh: shard count '$n' is not a number" >&2; exit 2; }
export MASKED_SOFTMAX_GPU_SUBSET=sanitize
if [[ "$n" -le 1 ]]; then
    exec "$@"
fi
dir="$(mktemp -d)"
dump() {
    for ((i = 0; i < n; i++)); do
        echo "--- shard $i/$n"
        cat "$dir/$i.log" 2>/dev/null
    done
    rm -rf "$dir"
}
# A time limit (timeout signals the whole process group) still leaves every shard's log.
trap 'dump; exit 124' TERM INT
pids=()
for ((i = 0; i < n; i++)); do
    MASKED_SOFTMAX_GPU_SHARD="$i/$n" "$@" >"$dir/$i.log" 2>&1 &
    pids+=($!)
done
status=0
for ((i = 0; i < n; i++)); do
    wait "${pids[$i]}" || status=1
done
dump
exit $status
