#!/usr/bin/env bash
# Builds examples/candle-attention with candle's CUDA backend (feature `cuda`) on a machine
# without a CUDA driver, and packs it for the GPU machine as
# target/gpu-pack/candle-attention.tgz (the binary and the CUDA runtime it links).
#
# candle links cudarc dynamically (-lcuda -lcublas -lcurand ...), and the pip toolchain has
# none of those libraries to link against. So: one link collects the undefined symbols,
# small stub libraries with those names and the real sonames (libcuda.so.1,
# libcublas.so.13, libcurand.so.10) are generated, and the second link uses them. At run
# time the real libraries are loaded; scripts/gpu-candle-example.sh finds them there.
# candle-kernels' nvcc build takes about 10 minutes the first time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain="$root/.cuda-toolchain/nvidia/cu13"
[[ -x "$toolchain/bin/nvcc" ]] || "$root/scripts/install-cuda-toolchain.sh" >/dev/null
stubs="${STUB_DIR:-$root/target/link-stubs}"  # where the stub libraries go (part of RUSTFLAGS: keep it fixed)
mkdir -p "$stubs"
ln -sf "$toolchain/lib/libcudart.so.13" "$stubs/libcudart.so"
make_stubs() { # make_stubs [SYMBOL...]: one stub library per CUDA library, with SYMBOLs
    local lib soname
    for spec in cuda:libcuda.so.1 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
        curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
        lib="${spec%%:*}" soname="${spec#*:}"
        {
            echo "void ${lib}_link_stub(void) {}"
            for sym in "$@"; do
                case "$lib:$sym" in
                cublasLt:cublasLt* | curand:curand* | nvrtc:nvrtc*) echo "int $sym(void) { return 999; }" ;;
                cublas:cublasLt*) ;;
                cublas:cublas*) echo "int $sym(void) { return 999; }" ;;
                cuda:cu[A-Z]*) echo "int $sym(void) { return 999; }" ;;
                esac
            done
        } >"$stubs/$lib.c"
        cc -shared -fPIC -o "$stubs/lib$lib.so" -Wl,-soname,"$soname" "$stubs/$lib.c"
    done
}
build() {
    (cd "$root/examples/candle-attention" &&
        PATH="$toolchain/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
            RUSTFLAGS="-L $stubs -C link-arg=-Wl,--error-limit=0" \
            cargo build --release --no-default-features --features cuda "$@")
}
make_stubs
if ! build 2>"$stubs/first-link.log"; then
    mapfile -t symbols < <(grep -o "undefined symbol: [A-Za-z0-9_]*" "$stubs/first-link.log" | awk '{print $3}' | sort -u)
    [[ ${#symbols[@]} -gt 0 ]] || { tail -n 30 "$stubs/first-link.log"; exit 1; }
    echo "stubbing ${#symbols[@]} CUDA library symbols for the link"
    make_stubs "${symbols[@]}"
    build
fi
pack="$root/target/gpu-pack"
mkdir -p "$pack" "$stubs/pack"
cp "$root/examples/candle-attention/target/release/candle-attention" "$stubs/pack/"
cp -L "$toolchain/lib/libcudart.so.13" "$stubs/pack/"
tar czf "$pack/candle-attention.tgz" -C "$stubs/pack" .
du -sh "$pack/candle-attention.tgz"
