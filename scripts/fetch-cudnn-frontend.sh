#!/usr/bin/env bash
# Fetches the header-only cuDNN frontend (the C++ graph API behind cuDNN's fused SDPA, docs/cuda.md) into the
# git-ignored .deps/cudnn-frontend/include of the repository. NVIDIA ships those headers only inside the PyPI
# wheel `nvidia-cudnn-frontend` (research/gpu-components.md §1.2), so this downloads that one wheel with pip,
# without its dependencies, and unpacks only its include/ folder. The wheel's Python module is never used.
# Never fails the caller: without pip or network it warns, and CMake builds the own attention kernels only.
# Usage: bash scripts/fetch-cudnn-frontend.sh   (CMake looks in .deps/cudnn-frontend/include)
set -uo pipefail
# 1.16.0 works with cuDNN >= 8.5 and was built and tested against cuDNN 9.19 (docs/cuda.md).
VERSION="${CUDNN_FRONTEND_VERSION:-1.16.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.deps/cudnn-frontend"
stamp="$dest/VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ] && [ -f "$dest/include/cudnn_frontend.h" ]; then
    echo "cudnn-frontend $VERSION already in $dest"
    exit 0
fi
warn() { echo "WARNING: $*; building without cuDNN attention (the own kernels only)" >&2; exit 0; }
command -v python3 >/dev/null || warn "python3 not found"
python3 -m pip --version >/dev/null 2>&1 || warn "pip not found (apt-get install python3-pip)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The headers are the same in every wheel of a version: pin one interpreter and platform so any host's pip
# (whatever its own Python) downloads the same file.
timeout 300 python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 --dest "$tmp" "nvidia-cudnn-frontend==$VERSION" \
    || warn "pip could not download nvidia-cudnn-frontend==$VERSION (no network?)"
whl=$(ls "$tmp"/nvidia_cudnn_frontend-*.whl 2>/dev/null | head -1)
[ -n "$whl" ] || warn "no wheel downloaded"
# A wheel is a zip; Python's zipfile is there wherever pip is (unzip may not be).
python3 - "$whl" "$tmp/x" <<'PY' || warn "could not unpack $whl"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("include/")])
PY
[ -f "$tmp/x/include/cudnn_frontend.h" ] || warn "the wheel has no include/cudnn_frontend.h"
rm -rf "$dest" && mkdir -p "$dest"
mv "$tmp/x/include" "$dest/include"
echo "$VERSION" > "$stamp"
echo "cudnn-frontend $VERSION headers in $dest/include"
