#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine, builds sd3tune and runs the main job on the built-in tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh dev
bin=build/dev/sd3tune
model=tests/data/tiny-a/model
echo "== the built-in tiny SD3 model"
"$bin" info "$model"
