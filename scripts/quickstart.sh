#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine, builds sd3tune, and runs the main job on the built-in tiny model:
# a short LoRA training run on a handful of small images, then an image generated with that LoRA.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh dev
bin=build/dev/sd3tune
model=tests/data/tiny-a/model   # a complete SD3 pipeline folder with random weights (the golden reference's model)
out=${1:-demo}
rm -rf "$out"
echo "== the built-in tiny SD3 model"
"$bin" info "$model"
echo "== training a LoRA on tests/data/train/images (on the GPU when there is one, else the CPU)"
"$bin" train --model "$model" --data tests/data/train/images --prompt "a photo of sks dog" \
    --output_dir "$out/lora" --resolution 64 --train_batch_size 2 --max_train_steps 40 --learning_rate 1e-3 \
    --checkpointing_steps 20 --seed 0
echo "== generating with the LoRA"
"$bin" generate --model "$model" --prompt "a photo of sks dog" --lora "$out/lora/pytorch_lora_weights.safetensors" \
    --lora-scale 1.0 --seed 42 --output "$out/sks_dog.png"
echo "done: $out/lora/pytorch_lora_weights.safetensors and $out/sks_dog.png"
