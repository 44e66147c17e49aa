# Sourced by run_gpu.sh and run_models_gpu.sh on the GPU machine: unpacks the bundle of pack_gpu.sh (gzipped
# binaries to /tmp/sd3bin, libraries to /tmp/sd3lib; once per machine) and sets the library path.
unpack_dir=/tmp/sd3bin
if [ ! -e "$unpack_dir/.done" ] || [ "$bundle/sd3_gpu_tests.gz" -nt "$unpack_dir/.done" ]; then
    mkdir -p "$unpack_dir" /tmp/sd3lib
    for f in "$bundle"/*.gz; do gunzip -c "$f" > "$unpack_dir/$(basename "$f" .gz)" && chmod +x "$unpack_dir/$(basename "$f" .gz)"; done
    for f in "$bundle"/lib/*.gz; do gunzip -c "$f" > "/tmp/sd3lib/$(basename "$f" .gz)"; done
    touch "$unpack_dir/.done"
fi
export LD_LIBRARY_PATH=/tmp/sd3lib:/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib
