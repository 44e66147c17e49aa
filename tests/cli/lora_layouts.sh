#!/usr/bin/env bash
# A LoRA saved in one layout and converted to another gives the same image: the golden diffusers/PEFT LoRA,
# converted to kohya and to ComfyUI keys with `sd3tune convert`, generates byte-identical PNGs with `generate`.
set -euo pipefail
bin=$1
data=$2
model="$data/tiny-a/model"
lora="$data/tiny-a/lora/pytorch_lora_weights.safetensors"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
gen=(generate --model "$model" --width 64 --height 64 --steps 3 --max-sequence-length 77 --prompt "a photo of sks dog" --seed 3)

"$bin" "${gen[@]}" --lora "$lora" --lora-scale 0.8 --output "$tmp/diffusers.png" 2>/dev/null
"$bin" "${gen[@]}" --output "$tmp/base.png" 2>/dev/null
cmp -s "$tmp/diffusers.png" "$tmp/base.png" && fail "the LoRA changed nothing"
for layout in kohya comfyui; do
    "$bin" convert --to "$layout" --mmdit-layers 2 "$lora" -o "$tmp/$layout.safetensors" 2>/dev/null
    "$bin" "${gen[@]}" --lora "$tmp/$layout.safetensors" --lora-scale 0.8 --output "$tmp/$layout.png" 2>/dev/null
    # The PNG's text chunks name the LoRA file, so compare the pixels through a re-encode-free check: the
    # saved latents are the model's output before the VAE.
    "$bin" "${gen[@]}" --lora "$lora" --lora-scale 0.8 --save-latents "$tmp/ref_latents.safetensors" --output "$tmp/r.png" 2>/dev/null
    "$bin" "${gen[@]}" --lora "$tmp/$layout.safetensors" --lora-scale 0.8 --save-latents "$tmp/${layout}_latents.safetensors" \
        --output "$tmp/l.png" 2>/dev/null
    cmp -s "$tmp/ref_latents.safetensors" "$tmp/${layout}_latents.safetensors" || fail "$layout LoRA gave other latents"
done
echo "lora_layouts: ok"
