#!/usr/bin/env bash
# --base-dtype (the transformer's block weights quantized) through the command line on the CPU: training with an
# int8 base writes a LoRA, its memory plan shows smaller transformer weights than the float32 run's, generation
# with an nf4 base writes an image; --max-vram is accepted (on the CPU nothing streams); a bad format is refused.
set -euo pipefail
BIN="$1"; DATA="$2"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
MODEL="$DATA/tiny-a/model"
fail() { echo "FAIL: $*" >&2; exit 1; }
train=(train --model "$MODEL" --data "$DATA/train/images" --prompt "a photo of sks dog" --resolution 32
       --train_batch_size 2 --max_train_steps 2 --seed 1 --quiet --device cpu)

"$BIN" "${train[@]}" --output_dir "$OUT/f32" > "$OUT/f32.log" 2>&1 || { cat "$OUT/f32.log"; fail "f32 training"; }
"$BIN" "${train[@]}" --output_dir "$OUT/int8" --base-dtype int8 --max-vram 1 > "$OUT/int8.log" 2>&1 \
    || { cat "$OUT/int8.log"; fail "int8-base training"; }
test -s "$OUT/int8/pytorch_lora_weights.safetensors" || fail "no LoRA from the int8-base run"
weights() { sed -n 's/.*transformer weights \([0-9.]* [KMG]*i*B\).*/\1/p' "$1"; }
w32=$(weights "$OUT/f32.log"); w8=$(weights "$OUT/int8.log")
[ -n "$w32" ] && [ -n "$w8" ] && [ "$w32" != "$w8" ] || fail "memory plans: float32 '$w32', int8 '$w8'"

"$BIN" generate --model "$MODEL" --prompt "a photo of sks dog" --width 32 --height 32 --steps 2 \
    --max-sequence-length 77 --device cpu --base-dtype nf4 --lora "$OUT/int8/pytorch_lora_weights.safetensors" \
    --output "$OUT/nf4.png" > "$OUT/gen.log" 2>&1 || { cat "$OUT/gen.log"; fail "nf4-base generate"; }
test -s "$OUT/nf4.png" || fail "no image from the nf4-base generate"

set +e
"$BIN" "${train[@]}" --output_dir "$OUT/bad" --base-dtype int4 > "$OUT/bad.log" 2>&1; rc=$?
set -e
[ $rc -eq 2 ] || fail "--base-dtype int4: exit code $rc"
[ ! -e "$OUT/bad/pytorch_lora_weights.safetensors" ] || fail "a LoRA was written for a refused option"
echo "train_base_dtype: ok"
