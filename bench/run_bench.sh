#!/bin/bash
# The whole benchmark in one command on the GPU machine (docs/benchmarks.md), from the repository root with the
# bundle of bench/pack_bench.sh carried as .bench/:  OUT=$OUT bash bench/run_bench.sh
# Unpacks sd3tune and its libraries, installs the carried diffusers wheel (and any of its small dependencies the
# machine lacks) into /tmp/site, makes an SD3-Medium folder of random weights on local disk, then runs every
# workload on both sides, each process under its own timeout and all of them within BENCH_BUDGET_S, rewriting
# $OUT/results.json and $OUT/table.md after each so a run cut short keeps what it measured.
# Settings (environment):
#   BENCH_WORKLOADS   subset, comma-separated, of train512,train1024,bound,generate,whole1024,t5,whole512 (default
#                     all of these) and profile (never by default: sd3tune's kernels of one update under ncu, profile512.md;
#                     profile1024 the same at 1024², batch 1, profile1024.md)
#                     and profile_generate (never by default: one denoising step and the decode at 1024² under ncu,
#                     profile_gen_step.md and profile_gen_decode.md) and stream (never by default: training at 1024²
#                     with about half the transformer's blocks streamed from host memory, --max-vram
#                     BENCH_STREAM_MAX_VRAM; also with the bundle's sd3tune_baseline.gz when there is one, an
#                     earlier build to compare with)
#   BENCH_BUDGET_S    wall seconds for everything (default 540: the device tool stops a command at 600)
#   BENCH_STEPS       updates per training-step workload, 2 of them warm-up (default 12)
#   BENCH_WHOLE_STEPS updates of a whole run; the table adds the rest of 100 at the median rate (default 30)
#   BENCH_BASE_DTYPE  quantized base weights of the second whole run per resolution: int8 or fp8 (default int8)
#   BENCH_WHOLE_MAX_VRAM  --max-vram in GiB of the whole runs with bf16 base weights (default 4)
#   BENCH_STREAM_MAX_VRAM --max-vram in GiB of the stream workload (default 2)
#   BENCH_QUANT_MAX_VRAM  the same for the quantized base (default 3). Without --max-vram, checkpointing keeps
#                     every block the GPU has room for, which on an H100 is all of them: fast, not lean.
#   BENCH_DRY_RUN=1   the tiny preset on the CPU at 1/8 of the resolutions, to try the script without a GPU
#   BENCH_BUNDLE      the bundle folder (default .bench); a .gpu bundle of tests/gpu/pack_gpu.sh serves too once
#                     the diffusers wheel (whl/) and COMMIT are added to it, so one upload runs tests and bench
set -uo pipefail
repo=$PWD
out=${OUT:-/tmp/bench-out}
work=${BENCH_WORK:-/tmp/sd3bench}
bundle=${BENCH_BUNDLE:-$repo/.bench}
py=${BENCH_PYTHON:-python3}
budget=${BENCH_BUDGET_S:-540}
workloads=",${BENCH_WORKLOADS:-train512,train1024,bound,generate,whole1024,t5,whole512},"
steps=${BENCH_STEPS:-12}
whole_steps=${BENCH_WHOLE_STEPS:-30}
base_q=${BENCH_BASE_DTYPE:-int8}
whole_max_vram=${BENCH_WHOLE_MAX_VRAM:-4}
quant_max_vram=${BENCH_QUANT_MAX_VRAM:-3}
stream_max_vram=${BENCH_STREAM_MAX_VRAM:-2}
recompute_max_vram=4.5  # the training-step runs that recompute every block: what the weights and one block fit
preset=sd3-medium device=cuda precision=bf16 div=1 val_steps=28 captions=100
if [ "${BENCH_DRY_RUN:-0}" = 1 ]; then  # sd3tune computes in float32 on the CPU
    preset=tiny device=cpu precision=no div=8 val_steps=2 captions=10
fi
prompt="a photo of sks dog" val_prompt="a photo of sks dog in a bucket"
json=$out/json logs=$out/logs
# Outputs of an earlier run on the same machine go (the model folder stays: it takes a minute to write).
rm -rf "$json" "$logs" "$work"/sd3_* "$work"/ref_* "$work"/cache* "$work"/t5_* "$work/images"
mkdir -p "$json" "$logs" "$work/lib"
start=$SECONDS

# 1. sd3tune and its libraries; the machine's CUDA, cuDNN and NCCL (DEVICE.md).
gunzip -c "$bundle/sd3tune.gz" > "$work/sd3tune" && chmod +x "$work/sd3tune"
for f in "$bundle"/lib/*.gz; do [ -e "$f" ] && gunzip -c "$f" > "$work/lib/$(basename "$f" .gz)"; done
nv=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$work/lib:$nv/cudnn/lib:$nv/nccl/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
sd3=$work/sd3tune

# 2. diffusers, plus each carried fallback wheel whose module is missing here. Wheels are zip files: extracting
#    them is installing them (no pip needed, nothing is downloaded).
site=/tmp/site
mkdir -p "$site"
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 \
    TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
for whl in "$bundle"/whl/*.whl; do
    dist=$(basename "$whl" | cut -d- -f1)
    module=$(echo "$dist" | tr 'A-Z' 'a-z' | sed 's/^pillow$/PIL/')
    if [ "$dist" = diffusers ] || ! "$py" -c "import $module" 2>/dev/null; then
        "$py" -m zipfile -e "$whl" "$site" && echo "installed $(basename "$whl")"
    fi
done

# 3. What this run is, for the table's header.
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
"$py" - "$json/env.json" "${driver:-?}" "$(cat "$bundle/COMMIT" 2>/dev/null || echo unknown)" \
    "$whole_steps" "$base_q" "$captions" "$quant_max_vram" "$whole_max_vram" "$recompute_max_vram" \
    "$stream_max_vram" <<'PY'
import json, sys, time
import torch
gpu = "none (CPU dry run)"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    gpu = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, driver {sys.argv[2]}"
env = {"gpu": gpu, "commit": sys.argv[3], "whole_steps": int(sys.argv[4]), "base_dtype": sys.argv[5],
       "captions": int(sys.argv[6]), "quant_max_vram_gib": float(sys.argv[7] or 0),
       "whole_max_vram_gib": float(sys.argv[8] or 0), "recompute_max_vram_gib": float(sys.argv[9]),
       "stream_max_vram_gib": float(sys.argv[10]), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
for mod in ("torch", "diffusers", "transformers", "peft", "bitsandbytes"):
    try:
        env[mod] = __import__(mod).__version__
    except Exception as e:
        env[mod] = None if isinstance(e, ImportError) else f"broken: {e}"
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(env)
PY

table() { "$py" "$repo/bench/table.py" --json-dir "$json" --out "$out" > /dev/null; }

# run NAME TIMEOUT CMD...: one process, its log in logs/NAME.log and its exit code (or why it did not run) in
# json/NAME.status; the timeout shrinks to what is left of the budget.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - (SECONDS - start)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 15 ]; then
        echo "not run: out of the ${budget} s budget" > "$json/$name.status"
        echo "== $name: skipped (budget)"
        return 1
    fi
    echo "== $name (timeout ${limit} s, at $((SECONDS - start)) s)"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then echo "timed out after ${limit} s" > "$json/$name.status"
    else echo $rc > "$json/$name.status"; fi
    echo "   exit $rc in $((SECONDS - t0)) s"
    [ $rc = 0 ] || tail -5 "$logs/$name.log"
    table
    return $rc
}
want() { [[ $workloads == *",$1,"* ]]; }
launcher=()  # a profiler to run sd3tune under (the profile workload)
train() {  # train NAME RES BATCH STEPS EXTRA...: sd3tune's training command as a user types it
    local name=$1 res=$2 batch=$3 n=$4
    shift 4
    run "$name" 180 "${launcher[@]}" "$sd3" train --model "$model" --instance_data_dir "$work/images" --instance_prompt "$prompt" \
        --resolution "$res" --train_batch_size "$batch" --max_train_steps "$n" --rank 4 --mixed_precision $precision \
        --seed 0 --report_to none --quiet --output_dir "$work/$name" --device "$device" \
        --metrics-json "$json/$name.json" "$@"
}

# 4. The model folder (kept from an earlier run on the same machine) and the inputs.
model=$work/model-$preset
if [ ! -f "$model/model_index.json" ]; then
    rm -rf "$model"
    run make_model 240 "$sd3" make-model --preset "$preset" --random --output "$model" \
        --tokenizers "$repo/tests/data/tiny-a/model" || { echo "no model folder: stopping"; exit 1; }
fi
"$py" "$repo/bench/make_inputs.py" --images "$work/images" --count 8 --size $((1024 / div)) \
    --captions "$work/captions.txt" --num-captions "$captions"
r512=$((512 / div)) r1024=$((1024 / div)) ts=$((steps - 2))
rb=$repo/bench/reference on=(--model "$model" --device "$device")

# 5. The workloads, most wanted first.
if want train512; then
    run ref_train512 120 "$py" "$rb/train_step.py" "${on[@]}" --out "$json/ref_train512.json" \
        --resolution $r512 --batch 4 --steps $ts --warmup 2
    train sd3_train512_ckpt $r512 4 "$steps" --gradient_checkpointing --cache_dir "$work/cache512"
    train sd3_train512_ckpt_atomic $r512 4 "$steps" --gradient_checkpointing --cache_dir "$work/cache512" \
        --attention-backward atomic
    train sd3_train512_recompute $r512 4 "$steps" --gradient_checkpointing --cache_dir "$work/cache512" \
        --max-vram $recompute_max_vram
    train sd3_train512_nockpt $r512 4 "$steps" --cache_dir "$work/cache512"
fi
if want train1024; then
    run ref_train1024 120 "$py" "$rb/train_step.py" "${on[@]}" --out "$json/ref_train1024.json" \
        --resolution $r1024 --batch 1 --steps $ts --warmup 2
    train sd3_train1024_ckpt $r1024 1 "$steps" --gradient_checkpointing --cache_dir "$work/cache1024"
    train sd3_train1024_ckpt_atomic $r1024 1 "$steps" --gradient_checkpointing --cache_dir "$work/cache1024" \
        --attention-backward atomic
    train sd3_train1024_recompute $r1024 1 "$steps" --gradient_checkpointing --cache_dir "$work/cache1024" \
        --max-vram $recompute_max_vram
    train sd3_train1024_nockpt $r1024 1 "$steps" --cache_dir "$work/cache1024"
fi
if want bound; then
    run ref_bound512 60 "$py" "$rb/kernel_bound.py" "${on[@]}" --out "$json/ref_bound512.json" \
        --resolution $r512 --batch 4
    run ref_bound1024 60 "$py" "$rb/kernel_bound.py" "${on[@]}" --out "$json/ref_bound1024.json" \
        --resolution $r1024 --batch 1
fi
if want generate; then
    run ref_generate 150 "$py" "$rb/generate.py" "${on[@]}" --out "$json/ref_generate.json" --size $r1024 \
        --steps $val_steps --image "$work/ref_generate.png"
    run sd3_generate 150 "$sd3" generate --model "$model" --prompt "$val_prompt" --steps $val_steps --cfg 7 \
        --width $r1024 --height $r1024 --seed 0 --t5-format int8 --output "$work/sd3_generate.png" \
        --device "$device" --warmup-steps 2 --metrics-json "$json/sd3_generate.json"
    run sd3_generate_cold 150 "$sd3" generate --model "$model" --prompt "$val_prompt" --steps $val_steps --cfg 7 \
        --width $r1024 --height $r1024 --seed 0 --t5-format int8 --output "$work/sd3_generate_cold.png" \
        --device "$device" --metrics-json "$json/sd3_generate_cold.json"
fi
# A whole run: the cache phase (int8 T5), training with checkpointing, one validation image at the end (a
# validation interval past the last step leaves only the final one).
whole() {  # whole RES BATCH
    local res=$1 batch=$2 tag=$(($1 * div))
    run ref_whole$tag 200 "$py" "$rb/whole_run.py" "${on[@]}" --out "$json/ref_whole$tag.json" \
        --images "$work/images" --resolution "$res" --batch "$batch" --steps "$whole_steps" --t5-dtype int8 \
        --prompt "$prompt" \
        --validation-prompt "$val_prompt" --validation-steps $val_steps --output-dir "$work/ref_whole$tag"
    for base in bf16 "$base_q"; do
        local q=()
        [ "$base" = bf16 ] || q=(--base-dtype "$base")
        [ "$base" = bf16 ] || [ -z "$quant_max_vram" ] || q+=(--max-vram "$quant_max_vram")
        [ "$base" != bf16 ] || [ -z "$whole_max_vram" ] || q+=(--max-vram "$whole_max_vram")
        train sd3_whole${tag}_$base "$res" "$batch" "$whole_steps" --gradient_checkpointing --t5-dtype int8 \
            "${q[@]}" --validation_prompt "$val_prompt" --num_validation_images 1 \
            --validation_steps $((whole_steps + 1))
    done
}
want whole1024 && whole $r1024 1
if want t5; then
    run ref_t5 200 "$py" "$rb/t5_encode.py" "${on[@]}" --out "$json/ref_t5.json" --captions "$work/captions.txt" \
        --dtypes int8,bf16,nf4
    for d in int8 bf16 nf4; do
        run sd3_t5_$d 120 "$sd3" encode-prompt --model "$model" --prompts-file "$work/captions.txt" \
            --max-sequence-length 256 --t5-dtype $d --device "$device" --output "$work/t5_$d.safetensors" \
            --metrics-json "$json/sd3_t5_$d.json"
    done
fi
want whole512 && whole $r512 4
if want stream; then
    # Blocks past --max-vram stream in for every forward and backward (nn/streamed_blocks.h); an earlier build
    # carried as sd3tune_baseline.gz runs the same command for comparison.
    train sd3_stream1024 $r1024 1 "$steps" --gradient_checkpointing --cache_dir "$work/cache1024" \
        --max-vram "$stream_max_vram"
    if [ -f "$bundle/sd3tune_baseline.gz" ]; then
        gunzip -c "$bundle/sd3tune_baseline.gz" > "$work/sd3tune_baseline" && chmod +x "$work/sd3tune_baseline"
        current=$sd3
        sd3=$work/sd3tune_baseline
        train sd3_stream1024_baseline $r1024 1 "$steps" --gradient_checkpointing --cache_dir "$work/cache1024" \
            --max-vram "$stream_max_vram"
        sd3=$current
    fi
fi
# Where sd3tune's training step spends its GPU time: every kernel of update 3 of 4 with checkpointing, at 512²
# and batch 4 (profile) or 1024² and batch 1 (profile1024), timed one by one by Nsight Compute (the machine has
# ncu, not nsys; SD3_PROFILE_UPDATE has sd3tune start and stop the capture around that update); the cache of
# train512 or train1024 is reused when that ran. kernel_summary.py adds them up per kernel; the run's JSON has the
# update's host-side phases.
for spec in profile:512:4 profile1024:1024:1; do
    IFS=: read -r name size batch <<< "$spec"
    want "$name" || continue
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -n "$ncu" ] && [ "${BENCH_DRY_RUN:-0}" != 1 ]; then
        launcher=(env SD3_PROFILE_UPDATE=3 "$ncu" --profile-from-start off --metrics gpu__time_duration.sum --csv
                  --page raw --clock-control none --log-file "$json/profile$size.csv")
        train sd3_profile$size $((size / div)) "$batch" 4 --gradient_checkpointing --cache_dir "$work/cache$size"
        launcher=()
        "$py" "$repo/bench/kernel_summary.py" "$json/profile$size.csv" --units 1 > "$out/profile$size.md"
    else
        echo "== $name: skipped (no ncu, or a dry run)"
    fi
done
if want profile_generate; then
    # Where generation spends its GPU time: every kernel of denoising step 3 of 4 at 1024² (CFG batch of 2), then
    # of the VAE decode, each under Nsight Compute as in the profile workload.
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -n "$ncu" ] && [ "${BENCH_DRY_RUN:-0}" != 1 ]; then
        for part in step decode; do
            if [ $part = step ]; then capture=(SD3_PROFILE_STEP=3); else capture=(SD3_PROFILE_DECODE=1); fi
            run sd3_profile_gen_$part 240 env "${capture[@]}" "$ncu" --profile-from-start off --metrics \
                gpu__time_duration.sum --csv --page raw --clock-control none --log-file "$json/profile_gen_$part.csv" \
                "$sd3" generate --model "$model" --prompt "$val_prompt" --steps 4 --cfg 7 --width $r1024 \
                --height $r1024 --seed 0 --t5-format int8 --output "$work/sd3_profile_gen.png" --device "$device"
            "$py" "$repo/bench/kernel_summary.py" "$json/profile_gen_$part.csv" --units 1 --unit $part \
                > "$out/profile_gen_$part.md"
        done
    else
        echo "== profile_generate: skipped (no ncu, or a dry run)"
    fi
fi

table
cat "$out/table.md"
echo "total $((SECONDS - start)) s"
# The device tool returns at most 8 files: the logs and per-process JSON travel as one archive.
tar czf "$out/logs.tgz" -C "$out" logs json && rm -rf "$logs" "$json"
