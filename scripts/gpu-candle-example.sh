#!/usr/bin/env bash
# On the GPU machine: runs the candle-attention example built by
# scripts/build-candle-cuda-example.sh (carried in target/gpu-pack), with the CUDA
# libraries it links (cuBLAS, cuRAND; the driver's libcuda) found on this machine.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$(mktemp -d)"
tar xzf "$root/target/gpu-pack/candle-attention.tgz" -C "$dir"
libs="$dir"
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    found="$(find /usr/local/cuda*/ /usr/lib /opt /usr/local/lib -name "$lib" 2>/dev/null | head -n 1)"
    [[ -z "$found" ]] && found="$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null |
        xargs -I{} find {} -name "$lib" 2>/dev/null | head -n 1)"
    if [[ -n "$found" ]]; then
        echo "$lib: $found"
        libs="$libs:$(dirname "$found")"
    else
        echo "$lib: not found on this machine"
    fi
done
LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout -k 5 "${EXAMPLE_TIMEOUT:-120}" "$dir/candle-attention"
