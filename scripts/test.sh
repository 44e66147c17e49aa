#!/usr/bin/env bash
# The test command: builds and runs every test (unit, golden, command-line behaviour) in the release build,
# then the unit and golden tests again under AddressSanitizer + UBSan (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
# Idle OpenMP threads sleep instead of spinning, so parallel tests on a small machine do not starve each other.
export OMP_WAIT_POLICY=passive
scripts/build.sh dev
ctest --preset dev
scripts/build.sh asan
ctest --preset asan
