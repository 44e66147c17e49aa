#!/usr/bin/env bash
# `sd3tune info` and `sd3tune convert` on single-file checkpoints: info reports the detected layout, the
# components and the derived configs; folder -> single file -> folder -> single file gives the same bytes; bad
# input fails with exit 1 and a message that says what is wrong.
set -euo pipefail
bin=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
single="$data/tiny-a/single_file/sd3_tiny_incl_clips_t5fp8.safetensors"

out=$("$bin" info "$single" 2>/dev/null)
grep -q "layout: Stability single-file checkpoint with MMDiT, VAE, CLIP-L, CLIP-G, T5-XXL" <<<"$out" || fail "layout: $out"
for c in transformer vae text_encoder text_encoder_2 text_encoder_3 scheduler; do
    grep -q "^  $c  " <<<"$out" || fail "component $c missing from: $out"
done
grep -q "num_layers=2 num_attention_heads=4 attention_head_dim=8" <<<"$out" || fail "derived MMDiT config: $out"
grep -q "block_out_channels=\[8,8,16,16\]" <<<"$out" || fail "derived VAE config: $out"
grep -q "hidden_act=\"gelu\"" <<<"$out" || fail "CLIP-G activation: $out"
grep -q "f16+fp8-e4m3" <<<"$out" || fail "T5 dtypes: $out"
grep -q "note: transformer: attention_head_dim=8 by convention" <<<"$out" || fail "derivation note: $out"

"$bin" info --json "$single" 2>/dev/null >"$tmp/info.json"
grep -q '"layout": "Stability single file"' "$tmp/info.json" || fail "json layout"
grep -q '"config_source": "derived from weight shapes in' "$tmp/info.json" || fail "json config source"
grep -q '"relative_attention_num_buckets": 32' "$tmp/info.json" || fail "json derived config"

# folder -> single -> folder -> single: the two single files are byte-identical, and the folder round trip
# keeps every tensor (the gtest SingleFile.ConvertFolderToSingleFileAndBackIsLossless compares them bit by bit).
"$bin" convert --to single-file "$data/tiny-a/model" --output "$tmp/a.safetensors" 2>/dev/null
"$bin" convert --to diffusers "$tmp/a.safetensors" --tokenizers "$data/tiny-a/model" --output "$tmp/folder" 2>/dev/null
for f in model_index.json transformer/config.json transformer/diffusion_pytorch_model.safetensors vae/config.json \
         text_encoder_3/model.safetensors tokenizer_2/vocab.json tokenizer_3/spiece.model scheduler/scheduler_config.json; do
    [ -f "$tmp/folder/$f" ] || fail "converted folder lacks $f"
done
"$bin" convert --to single-file "$tmp/folder" -o "$tmp/b.safetensors" 2>/dev/null
cmp -s "$tmp/a.safetensors" "$tmp/b.safetensors" || fail "single file -> folder -> single file changed bytes"
"$bin" info "$tmp/folder" | grep -q "num_layers=2" || fail "converted folder does not open"

# Separate encoder file: a part given as an option replaces the model's.
"$bin" info "$tmp/folder/text_encoder_3/model.safetensors" 2>/dev/null | grep -q "layout: T5 encoder on its own" \
    || fail "component file layout"

set +e
msg=$("$bin" convert --to single-file "$data/tiny-a/model" --output "$tmp/a.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "existing output exit code $rc"
grep -q "exists; choose a new file name" <<<"$msg" || fail "existing output message: $msg"

set +e
msg=$("$bin" convert --to diffusers "$single" --clip-l "$tmp/folder/text_encoder_3/model.safetensors" --output "$tmp/x" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "wrong part exit code $rc"
grep -q "holds a T5 encoder, not a CLIP text encoder" <<<"$msg" || fail "wrong part message: $msg"

set +e
"$bin" convert --to onnx "$single" --output "$tmp/y" >/dev/null 2>&1; rc=$?
set -e
[ $rc -ne 0 ] || fail "unknown --to accepted"
# LoRA dialects: diffusers -> kohya -> comfyui -> diffusers keeps every factor (the gtest NameMapLora checks bits).
lora="$data/tiny-a/lora/pytorch_lora_weights.safetensors"
"$bin" convert --to kohya "$lora" -o "$tmp/kohya.safetensors" 2>/dev/null
"$bin" info "$tmp/kohya.safetensors" | grep -q "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight *F32 *\[96, 12\]" \
    || fail "kohya keys: $("$bin" info "$tmp/kohya.safetensors")"
"$bin" convert --to comfyui "$tmp/kohya.safetensors" -o "$tmp/comfy.safetensors" 2>/dev/null
"$bin" info "$tmp/comfy.safetensors" | grep -q "diffusion_model.joint_blocks.1.x_block.attn.proj.alpha" || fail "comfyui keys"
"$bin" convert --to diffusers "$tmp/comfy.safetensors" -o "$tmp/back_lora.safetensors" 2>/dev/null
"$bin" info "$tmp/back_lora.safetensors" | grep -q "transformer.transformer_blocks.1.attn.to_v.lora_B.weight *F32 *\[32, 4\]" \
    || fail "diffusers keys back"
set +e
msg=$("$bin" convert --to kohya "$single" -o "$tmp/z.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "model to kohya exit code $rc"
grep -q "converts LoRA files" <<<"$msg" || fail "model to kohya message: $msg"
echo "single_file: ok"
