#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain (nvcc, ptxas, headers) from PyPI into
# the project-local, git-ignored folder .cuda-toolchain/, where build.rs looks for it.
# Needs only python3 with pip; no GPU, no root. Idempotent: a second run only checks.
#
#   scripts/install-cuda-toolchain.sh            # install if missing
#   scripts/install-cuda-toolchain.sh --print    # also print the nvcc path
#
# The metapackage pins every part to 13.0 (installing nvidia-cuda-nvcc alone drags in
# mismatched parts), and nvcc 13.0 matches driver 580: PTX from a newer nvcc does not load
# there (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
set -euo pipefail

PINNED="cuda-toolkit[nvcc,nvvm,crt,cudart,cccl]==13.0.2"
WANT_RELEASE="release 13.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cuda-toolchain"
nvcc="$dest/nvidia/cu13/bin/nvcc"

installed() {
    [[ -x "$nvcc" && -f "$dest/nvidia/cu13/include/cuda.h" ]] &&
        "$nvcc" --version 2>/dev/null | grep -q "$WANT_RELEASE"
}

if installed; then
    echo "CUDA toolchain already installed: $nvcc"
else
    echo "Installing $PINNED into $dest ..."
    python3 -m pip --version >/dev/null 2>&1 || {
        echo "error: python3 with pip is needed to fetch nvcc from PyPI" >&2
        exit 1
    }
    rm -rf "$dest.partial"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$dest.partial" "$PINNED"
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
    installed || {
        echo "error: $nvcc missing or not CUDA 13.0 after install" >&2
        exit 1
    }
    # build.rs only reruns when something it watches changes: make it look for nvcc again.
    touch "$root/build.rs"
    echo "Installed: $("$nvcc" --version | tail -n 2 | head -n 1)"
fi
if [[ "${1:-}" == "--print" ]]; then echo "$nvcc"; fi
