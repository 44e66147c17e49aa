#!/usr/bin/env bash
# The seed's two README recipes (reference-training.md 1.10) with `accelerate launch <script>.py` replaced by
# `sd3tune train`, pointed at the tiny model and the small test images, with fewer steps and a small resolution.
set -euo pipefail
BIN="$1"; DATA="$2"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
MODEL="$DATA/tiny-a/model"

# one prompt (train_dreambooth_lora_sd3.py)
"$BIN" train --pretrained_model_name_or_path="$MODEL" \
  --instance_data_dir="$DATA/train/images" --output_dir="$OUT/one" --mixed_precision=bf16 --instance_prompt "a photo of sks dog" \
  --resolution=32 --train_batch_size=4 --gradient_accumulation_steps=4 --learning_rate=0.0001 --report_to=wandb \
  --lr_scheduler=constant --lr_warmup_steps=0 --max_train_steps=2 --weighting_scheme=logit_normal --seed=42 \
  --use_8bit_adam --gradient_checkpointing --prior_generation_precision=bf16 > "$OUT/one.log" 2>&1 \
  || { cat "$OUT/one.log"; exit 1; }
test -s "$OUT/one/pytorch_lora_weights.safetensors"
grep -q "notice: --report_to wandb" "$OUT/one.log"
# On the CPU the flag is a notice; on a GPU it sets the compute dtype.
grep -q -e "notice: --mixed_precision bf16" -e "compute dtype bf16" "$OUT/one.log"
ls "$OUT/one/logs/dreambooth-sd3-lora/" | grep -q "events.out.tfevents"
test "$(grep -c '"step"' "$OUT/one/logs/train_log.jsonl")" -ge 2

# multiple prompts (train_multiple_prompts.py): a local imagefolder with metadata.jsonl captions
"$BIN" train --pretrained_model_name_or_path="$MODEL" \
  --dataset_name="$DATA/train/images_meta" --caption_column=caption --output_dir="$OUT/many" --mixed_precision=bf16 \
  --instance_prompt "a photo of sks dog" --resolution=32 --train_batch_size=4 --sample_batch_size=4 \
  --gradient_accumulation_steps=3 --learning_rate=0.0001 --report_to=wandb --lr_scheduler=constant --lr_warmup_steps=0 \
  --max_train_steps=2 --weighting_scheme=logit_normal --seed=42 --use_8bit_adam --gradient_checkpointing \
  --prior_generation_precision=bf16 > "$OUT/many.log" 2>&1 || { cat "$OUT/many.log"; exit 1; }
test -s "$OUT/many/pytorch_lora_weights.safetensors"
# four distinct captions were encoded
grep -q "encoding 4 prompts" "$OUT/many.log"
echo "ok"
