#!/bin/bash
# Packs what the GPU machine needs to run sd3_gpu_tests into the git-ignored .gpu/ of a checkout (DEVICE.md):
# the stripped binaries and the non-system shared libraries they link, all gzipped (the working tree that
# travels, tests/data included, is capped at 64 MiB; Debian's OpenBLAS alone is 36 MB), and the run scripts. Usage, from the repository root:
#   cmake --build --preset dev --target sd3_gpu_tests sd3_gpu_bench && bash tests/gpu/pack_gpu.sh [dest-checkout [bundle]]
# The device tool sends the checkout its session started in (/work/main here), so dest-checkout names that one;
# `bundle` (default .gpu) lets several worktrees send their own (.gpu-<name>, all git-ignored).
set -euo pipefail
dest="${1:-.}/${2:-.gpu}"
bin=build/dev/tests/sd3_gpu_tests
rm -rf "$dest" && mkdir -p "$dest/lib"
pack_binary() { strip -o "$dest/$(basename "$1")" "$1" && gzip -9 "$dest/$(basename "$1")"; }
pack_binary "$bin"
[ -x build/dev/tests/sd3_gpu_bench ] && pack_binary build/dev/tests/sd3_gpu_bench
[ -x build/dev/sd3tune ] && pack_binary build/dev/sd3tune  # for run_models_gpu.sh
# Everything any of them links but glibc, libstdc++/libgcc (newer on the GPU machine) and the CUDA libraries (present there).
# cuDNN is never linked (attention_cudnn.cpp dlopens the GPU machine's own libcudnn.so.9), so never bundled.
bins="$bin $(ls build/dev/tests/sd3_gpu_bench build/dev/sd3tune 2>/dev/null)"
for lib in $(for b in $bins; do ldd "$b"; done | awk '/=>/ {print $3}' | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|librt|libpthread|libdl)\.so|/cuda|libcudnn'); do
    gzip -9 -c "$lib" > "$dest/lib/$(basename "$lib").gz"
done
cp tests/gpu/run_gpu.sh tests/gpu/run_models_gpu.sh tests/gpu/unpack_gpu.sh "$dest/"
du -sh "$dest"
