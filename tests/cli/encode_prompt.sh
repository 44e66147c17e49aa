#!/usr/bin/env bash
# `sd3tune encode-prompt`: writes SD3's prompt encoding for the tiny model (shapes and names checked through
# `sd3tune info`; the numbers are checked against diffusers in tests/golden/test_prompt_text.cpp), and fails
# cleanly on a missing model, a bad --t5-dtype and a bad --max-sequence-length.
set -euo pipefail
bin=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
model="$data/tiny-a/model"

"$bin" encode-prompt --model "$model" --prompt "a photo of sks dog" --negative-prompt "blurry, low quality" \
    --max-sequence-length 77 --t5-dtype f32 --output "$tmp/e.safetensors" >/dev/null
out=$("$bin" info "$tmp/e.safetensors")
grep -q "^  prompt_embeds  *F32 *\[1, 154, 64\]" <<<"$out" || fail "prompt_embeds: $out"
grep -q "^  pooled_prompt_embeds  *F32 *\[1, 64\]" <<<"$out" || fail "pooled_prompt_embeds: $out"
grep -q "^  negative_prompt_embeds  *F32 *\[1, 154, 64\]" <<<"$out" || fail "negative_prompt_embeds: $out"
grep -q "^  negative_pooled_prompt_embeds  *F32 *\[1, 64\]" <<<"$out" || fail "negative_pooled_prompt_embeds: $out"
grep -q "metadata t5_dtype = f32" <<<"$out" || fail "metadata: $out"

# Defaults: 256 T5 tokens, int8 T5, no negative prompt.
for dt in int8 nf4 fp8; do
    "$bin" encode-prompt --model "$model" --prompt "a cat" --t5-dtype $dt --output "$tmp/d.safetensors" >/dev/null
    out=$("$bin" info "$tmp/d.safetensors")
    grep -q "^  prompt_embeds  *F32 *\[1, 333, 64\]" <<<"$out" || fail "$dt prompt_embeds: $out"
    ! grep -q "negative" <<<"$out" || fail "$dt: negative tensors without --negative-prompt: $out"
done
"$bin" encode-prompt --model "$model" --prompt "a cat" --output "$tmp/d.safetensors" >/dev/null
"$bin" info "$tmp/d.safetensors" | grep -q "metadata t5_dtype = int8" || fail "default t5 dtype is not int8"

# The Stability single file with an fp8 T5 (no tokenizers inside: --tokenizers supplies them).
sf="$data/tiny-a/single_file/sd3_tiny_incl_clips_t5fp8.safetensors"
"$bin" encode-prompt --model "$sf" --tokenizers "$model" --prompt "a photo of sks dog" --t5-dtype fp8 \
    --max-sequence-length 77 --output "$tmp/s.safetensors" >/dev/null
"$bin" info "$tmp/s.safetensors" | grep -q "^  prompt_embeds  *F32 *\[1, 154, 64\]" || fail "single file encoding"
set +e
msg=$("$bin" encode-prompt --model "$sf" --prompt x --output "$tmp/x.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "single file without tokenizers: exit code $rc"
grep -q -- "--tokenizers" <<<"$msg" || fail "single file without tokenizers should point at --tokenizers: $msg"

set +e
msg=$("$bin" encode-prompt --model "$tmp/nope" --prompt x --output "$tmp/x.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "missing model exit code $rc"
grep -q "no such model folder or file" <<<"$msg" || fail "missing model message: $msg"

set +e
"$bin" encode-prompt --model "$model" --prompt x --t5-dtype int4 --output "$tmp/x.safetensors" >/dev/null 2>&1; rc=$?
set -e
[ $rc -ne 0 ] || fail "--t5-dtype int4 accepted"
set +e
"$bin" encode-prompt --model "$model" --prompt x --max-sequence-length 0 --output "$tmp/x.safetensors" >/dev/null 2>&1; rc=$?
set -e
[ $rc -ne 0 ] || fail "--max-sequence-length 0 accepted"
[ ! -e "$tmp/x.safetensors" ] || fail "an output was written on error"
# Several prompts from a file, stacked in file order; --metrics-json reports the time and the device.
printf 'a photo of sks dog\n\na cat\r\nblurry, low quality\n' > "$tmp/prompts.txt"
"$bin" encode-prompt --model "$model" --prompts-file "$tmp/prompts.txt" --max-sequence-length 77 --t5-dtype f32 \
    --device cpu --output "$tmp/many.safetensors" --metrics-json "$tmp/m.json" >/dev/null
"$bin" info "$tmp/many.safetensors" | grep -q "^  prompt_embeds  *F32 *\[3, 154, 64\]" || fail "stacked prompt_embeds"
for key in '"prompts": 3' '"seconds"' '"load_seconds"' '"seconds_by_encoder"' '"T5 (text_encoder_3)"' '"peak_gpu_bytes"' '"device": "cpu"'; do
    grep -q "$key" "$tmp/m.json" || fail "metrics JSON lacks $key: $(cat "$tmp/m.json")"
done
set +e
msg=$("$bin" encode-prompt --model "$model" --prompt x --prompts-file "$tmp/prompts.txt" --output "$tmp/y.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] && grep -q "either --prompt or --prompts-file" <<<"$msg" || fail "both prompt options: $rc $msg"
set +e
msg=$("$bin" encode-prompt --model "$model" --prompt x --device cuda:7 --output "$tmp/y.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "--device cuda:7 exit code $rc"
grep -q -E "cuda:7|CUDA" <<<"$msg" || fail "--device cuda:7 message: $msg"
echo "encode_prompt: ok"
