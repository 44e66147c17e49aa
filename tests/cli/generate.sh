#!/usr/bin/env bash
# `sd3tune generate` on the tiny model at 64x64: writes a PNG whose text chunks hold the prompt, seed and settings,
# several images from one batch, saved latents, a LoRA at a scale, a single-file model with tiled decoding; refuses bad input with a clear message:
# a missing model folder, a size that is not a multiple of 16, an unknown flag, a misplaced --lora-scale.
set -euo pipefail
bin=$1
data=$2
model="$data/tiny-a/model"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
small=(--model "$model" --width 64 --height 64 --steps 2 --max-sequence-length 77)

"$bin" generate "${small[@]}" --prompt "a photo of sks dog" --negative-prompt "blurry" --seed 7 \
    --output "$tmp/dog.png" --metrics-json "$tmp/m.json" 2>"$tmp/log.txt" || { cat "$tmp/log.txt" >&2; fail "generate failed"; }
for key in '"seconds_per_image"' '"sampling_seconds_per_image"' '"decode_seconds_per_image"' '"encode_seconds"' '"load_seconds"' '"peak_gpu_bytes"' '"device"'; do
    grep -q "$key" "$tmp/m.json" || fail "metrics JSON lacks $key: $(cat "$tmp/m.json")"
done
[ -s "$tmp/dog.png" ] || fail "no PNG written"
[ "$(head -c 8 "$tmp/dog.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || fail "not a PNG signature"
for chunk in prompt negative_prompt seed steps guidance_scale size parameters; do
    grep -aq "tEXt$chunk" "$tmp/dog.png" || fail "text chunk $chunk missing"
done
grep -aq "a photo of sks dog" "$tmp/dog.png" || fail "prompt text missing from the PNG"
grep -aq "Seed: 7" "$tmp/dog.png" || fail "seed missing from the parameters chunk"
grep -q "step 2/2 .*steps/s" "$tmp/log.txt" || fail "no progress with steps/s on stderr: $(cat "$tmp/log.txt")"
[ ! -e "$tmp/dog.png.tmp" ] || fail "temporary file left behind"

# The same seed gives the same file (also after an untimed warm-up); another seed a different one.
"$bin" generate "${small[@]}" --prompt "a photo of sks dog" --negative-prompt "blurry" --seed 7 \
    --output "$tmp/dog2.png" --warmup-steps 1 2>"$tmp/log2.txt" || { cat "$tmp/log2.txt" >&2; fail "warm-up run failed"; }
cmp -s "$tmp/dog.png" "$tmp/dog2.png" || fail "same seed gave a different image"
grep -q "warming up: 1 untimed step" "$tmp/log2.txt" || fail "no warm-up reported: $(cat "$tmp/log2.txt")"
[ "$(grep -c "step 2/2" "$tmp/log2.txt")" = 1 ] || fail "the warm-up printed progress: $(cat "$tmp/log2.txt")"
"$bin" generate "${small[@]}" --prompt "a photo of sks dog" --negative-prompt "blurry" --seed 8 \
    --output "$tmp/dog3.png" 2>/dev/null
! cmp -s "$tmp/dog.png" "$tmp/dog3.png" || fail "another seed gave the same image"

# Two images from one batch, saved latents, a LoRA at half strength, UTF-8 prompt (iTXt).
"$bin" generate "${small[@]}" --prompt "caf$(printf '\xc3\xa9') dog" --num-images 2 \
    --lora "$data/tiny-a/lora/pytorch_lora_weights.safetensors" --lora-scale 0.5 \
    --save-latents "$tmp/lat.safetensors" --output "$tmp/batch.png" 2>/dev/null
[ -s "$tmp/batch-0.png" ] && [ -s "$tmp/batch-1.png" ] || fail "batch images missing"
grep -aq "iTXtprompt" "$tmp/batch-0.png" || fail "UTF-8 prompt not written as iTXt"
grep -aq "pytorch_lora_weights.safetensors:0.5" "$tmp/batch-0.png" || fail "LoRA not recorded"
out=$("$bin" info "$tmp/lat.safetensors")
grep -q "latents *F32 *\[2, 16, 8, 8\]" <<<"$out" || fail "saved latents: $out"

# Start from saved latents.
"$bin" generate "${small[@]}" --prompt "x" --init-latents "$data/tiny-a/pipeline.safetensors:0.latents_in" \
    --output "$tmp/init.png" 2>/dev/null
grep -aq "none (initial latents given)" "$tmp/init.png" || fail "init latents not recorded"

# A single-file checkpoint (fp8 T5) with the folder's tokenizers, and tiled VAE decoding of a 128x96 image
# (tiles of 64 pixels for the tiny VAE).
"$bin" generate --model "$data/tiny-a/single_file/sd3_tiny_incl_clips_t5fp8.safetensors" --tokenizers "$model" \
    --t5-format fp8 --width 128 --height 96 --steps 2 --max-sequence-length 77 --prompt "dog" --vae-tiling \
    --output "$tmp/single.png" 2>/dev/null || fail "single-file generation failed"
[ -s "$tmp/single.png" ] || fail "single-file PNG missing"

expect_error() {  # expect_error CODE PATTERN ARGS...
    local code=$1 pattern=$2; shift 2
    set +e
    msg=$("$bin" generate "$@" 2>&1); rc=$?
    set -e
    [ "$rc" -eq "$code" ] || fail "exit code $rc (wanted $code) for: $* -- $msg"
    grep -qi -- "$pattern" <<<"$msg" || fail "message for $* lacks '$pattern': $msg"
}
expect_error 1 "no such file or folder" --model "$tmp/missing" --prompt x --output "$tmp/e.png"
expect_error 1 "multiples of 16" --model "$model" --prompt x --width 72 --height 64 --output "$tmp/e.png"
expect_error 1 "must follow the --lora" --model "$model" --prompt x --lora-scale 0.5 --output "$tmp/e.png"
expect_error 1 "\.png" --model "$model" --prompt x --output "$tmp/e.jpg"
expect_error 1 "max-sequence-length" --model "$model" --width 64 --height 64 --prompt x --max-sequence-length 600 --output "$tmp/e.png"
set +e
"$bin" generate --model "$model" --prompt x --output "$tmp/e.png" --bogus-flag >/dev/null 2>&1; rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 1 ] || fail "unknown flag gave exit code $rc"
[ ! -e "$tmp/e.png" ] || fail "an image was written despite an error"
echo "generate: ok"
