#!/usr/bin/env bash
# Installs sd3tune's build dependencies from Debian/Ubuntu packages (README lists why each one is there).
# The CUDA toolkit is not installed here: the CUDA backend is built when nvcc is found (/usr/local/cuda).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cmake ninja-build ccache pkg-config \
    libopenblas-dev libomp-dev libpng-dev libjpeg-dev libwebp-dev libsentencepiece-dev \
    nlohmann-json3-dev libcli11-dev libtomlplusplus-dev libgtest-dev >/dev/null
