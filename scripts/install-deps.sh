#!/usr/bin/env bash
# Installs sd3tune's build dependencies from Debian/Ubuntu packages (README lists why each one is there).
# The CUDA toolkit is not installed here: the CUDA backend is built when nvcc is found (/usr/local/cuda).
# The cuDNN frontend headers (for cuDNN's fused attention) come from a PyPI wheel: fetch-cudnn-frontend.sh,
# which only warns when pip has no network (the build then uses the own attention kernels).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cmake ninja-build ccache pkg-config \
    libopenblas-dev libomp-dev libpng-dev libjpeg-dev libwebp-dev libsentencepiece-dev \
    nlohmann-json3-dev libcli11-dev libtomlplusplus-dev libgtest-dev python3-pip >/dev/null
bash "$(dirname "$0")/fetch-cudnn-frontend.sh"
