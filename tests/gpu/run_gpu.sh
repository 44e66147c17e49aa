#!/bin/bash
# Runs on the GPU machine from the repository root (see pack_gpu.sh): unpacks the bundle, prints the device,
# runs every CUDA op test, then every test but cuDNN's and the out-of-memory one again under compute-sanitizer's
# memcheck and some under racecheck where the toolkit has it, then the timings of sd3_gpu_bench. Logs and the XML
# report go to $OUT.
set -uo pipefail
bundle="$(dirname "$0")"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
source "$bundle/unpack_gpu.sh"
export OMP_NUM_THREADS=8
# cuDNN is installed here (the directory above): its attention tests fail rather than skip when it cannot load.
[ -d /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib ] && export SD3_REQUIRE_CUDNN=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ldd "$unpack_dir"/sd3_gpu_tests | grep 'not found'
timeout 200 "$unpack_dir"/sd3_gpu_tests --gtest_output="xml:$out/gpu_tests.xml" "$@" 2>&1 | tee "$out/gpu_tests.log" | grep -v -E '^\[ +(RUN|OK) ' 
status=${PIPESTATUS[0]}
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$san" ] && [ "${SD3_SANITIZE:-1}" = 1 ]; then
    # SD3_ATTENTION=own: the sanitizers check our kernels, not cuDNN's run-time compiled ones.
    # Not the out-of-memory test: the API errors it provokes are its point, and memcheck counts them as errors.
    SD3_ATTENTION=own timeout 200 "$san" --tool memcheck --error-exitcode 3 "$unpack_dir"/sd3_gpu_tests \
        --gtest_filter='-CudnnAttention*:CudaDevice.OutOfMemoryIsAnError' > "$out/memcheck.log" 2>&1
    echo "memcheck exit $? (0 = clean; log in memcheck.log)"; tail -3 "$out/memcheck.log"
    # Shared-memory hazards in the tiled kernels (attention, GEMM fallback, group norm, conv).
    SD3_ATTENTION=own timeout 120 "$san" --tool racecheck --error-exitcode 3 "$unpack_dir"/sd3_gpu_tests \
        --gtest_filter='*Attention/f32:*Attention/bf16:*GroupNorm/f32:*Conv2d/f32:*Gemm/f32' > "$out/racecheck.log" 2>&1
    echo "racecheck exit $? (0 = clean; log in racecheck.log)"; tail -3 "$out/racecheck.log"
else
    echo "compute-sanitizer not found: memcheck skipped"
fi
if [ -x "$unpack_dir"/sd3_gpu_bench ] && [ "${SD3_BENCH:-1}" = 1 ]; then
    timeout 90 "$unpack_dir"/sd3_gpu_bench 2>&1 | tee "$out/bench.log"
fi
exit $status
