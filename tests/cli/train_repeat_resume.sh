#!/usr/bin/env bash
# Two runs with one seed give identical bytes; a run stopped after a checkpoint and resumed with
# --resume_from_checkpoint latest ends with the same LoRA as the uninterrupted run; a --config file works.
set -euo pipefail
BIN="$1"; DATA="$2"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
COMMON=(--model "$DATA/tiny-a/model" --data "$DATA/train/images" --prompt "a photo of sks dog" --resolution 32
        --batch 2 --lr 1e-3 --seed 7 --lr_warmup_steps 0 --random_flip --quiet)
"$BIN" train "${COMMON[@]}" --out "$OUT/a" --steps 4 > "$OUT/a.log" 2>&1 || { cat "$OUT/a.log"; exit 1; }
"$BIN" train "${COMMON[@]}" --out "$OUT/b" --steps 4 > "$OUT/b.log" 2>&1 || { cat "$OUT/b.log"; exit 1; }
grep -q "memory plan on .*transformer weights .*saved activations of a micro-batch" "$OUT/a.log" || { echo "no memory plan in the log"; exit 1; }
cmp "$OUT/a/pytorch_lora_weights.safetensors" "$OUT/b/pytorch_lora_weights.safetensors"

# interrupted after update 3 (a checkpoint at 3, the run ends there), then resumed to 4
"$BIN" train "${COMMON[@]}" --out "$OUT/c" --steps 3 --checkpointing_steps 3 > "$OUT/c1.log" 2>&1 || { cat "$OUT/c1.log"; exit 1; }
test -f "$OUT/c/checkpoint-3/trainer_state.json"
"$BIN" train "${COMMON[@]}" --out "$OUT/c" --steps 4 --resume_from_checkpoint latest > "$OUT/c2.log" 2>&1 || { cat "$OUT/c2.log"; exit 1; }
grep -q "resumed from" "$OUT/c2.log"
cmp "$OUT/a/pytorch_lora_weights.safetensors" "$OUT/c/pytorch_lora_weights.safetensors"

# the same run from a TOML config (command-line flags still win: --out)
cat > "$OUT/run.toml" <<TOML
pretrained_model_name_or_path = "$DATA/tiny-a/model"
instance_data_dir = "$DATA/train/images"
instance_prompt = "a photo of sks dog"
resolution = 32
train_batch_size = 2
learning_rate = 1e-3
seed = 7
lr_warmup_steps = 0
random_flip = true
max_train_steps = 4
output_dir = "$OUT/ignored"
TOML
"$BIN" train --config "$OUT/run.toml" --out "$OUT/d" --quiet > "$OUT/d.log" 2>&1 || { cat "$OUT/d.log"; exit 1; }
cmp "$OUT/a/pytorch_lora_weights.safetensors" "$OUT/d/pytorch_lora_weights.safetensors"
test ! -e "$OUT/ignored"
echo "ok"
