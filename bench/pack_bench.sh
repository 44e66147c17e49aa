#!/bin/bash
# Packs what bench/run_bench.sh needs on the GPU machine into the git-ignored .bench/ of a checkout; builds nothing.
# Usage, from the repository root after `cmake --build --preset dev --target sd3tune`:
#   bash bench/pack_bench.sh [dest-checkout]      (default /work/main: the checkout the device tool sends)
# then run there with carry [".bench"]. Contents: the stripped sd3tune, gzipped, with the non-system shared
# libraries it links (DEVICE.md: glibc, libstdc++/libgcc and the CUDA/cuDNN/NCCL libraries are on the machine);
# the diffusers wheel the reference side needs (that machine has torch, transformers and peft but not diffusers),
# and wheels of diffusers' small dependencies that torch's stack may lack there (installed only where missing);
# COMMIT, the sd3tune commit the table names.
set -euo pipefail
dest="${1:-/work/main}/.bench"
bin=${SD3TUNE_BIN:-build/dev/sd3tune}
diffusers=0.40.0  # the version the golden data was made with, against torch 2.11 and transformers 5.17
rm -rf "$dest" && mkdir -p "$dest/lib" "$dest/whl"
strip -o "$dest/sd3tune" "$bin" && gzip -9 "$dest/sd3tune"
for lib in $(ldd "$bin" | awk '/=>/ {print $3}' |
             grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|librt|libpthread|libdl)\.so|/cuda|/lib(cu|nccl|nv)[^/]*$'); do
    gzip -9 -c "$lib" > "$dest/lib/$(basename "$lib").gz"
done
pip download -q --no-deps -d "$dest/whl" "diffusers==$diffusers"
# The GPU machine's Python is 3.12 on x86-64 (DEVICE.md).
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$dest/whl" \
    pillow requests urllib3 idna certifi charset-normalizer
dirty=$(git diff --quiet HEAD -- src tools CMakeLists.txt || echo '+uncommitted')
echo "$(git rev-parse --short HEAD)$dirty" > "$dest/COMMIT"
ls -la "$dest" "$dest/lib" "$dest/whl"
du -sh "$dest"
