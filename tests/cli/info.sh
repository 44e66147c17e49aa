#!/usr/bin/env bash
# `sd3tune info`: lists the tiny pipeline's nine components, prints JSON with --json, describes a single
# .safetensors file, and fails with a clear message (exit 1) on a missing path and a corrupt file.
set -euo pipefail
bin=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$bin" info "$data/tiny-a/model")
for c in transformer vae text_encoder text_encoder_2 text_encoder_3 tokenizer tokenizer_2 tokenizer_3 scheduler; do
    grep -q "^  $c  " <<<"$out" || fail "component $c missing from: $out"
done
grep -q "SD3Transformer2DModel" <<<"$out" || fail "transformer class missing"
grep -q "num_layers=2" <<<"$out" || fail "transformer config missing"

"$bin" info --json "$data/tiny-a/model" >"$tmp/info.json"
[ "$(grep -c '"name":' "$tmp/info.json")" -eq 9 ] || fail "json should list 9 components"
grep -q '"f16":' "$tmp/info.json" || fail "json dtypes missing"

out=$("$bin" info "$data/tiny-a/mmdit.safetensors")
grep -q "0.hidden_states *F32 *\[1, 16, 8, 8\]" <<<"$out" || fail "tensor listing: $out"
"$bin" info --json "$data/tiny-a/lora/pytorch_lora_weights.safetensors" | grep -q '"tensors"' || fail "json tensors"

set +e
msg=$("$bin" info "$tmp/nope" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "missing path exit code $rc"
grep -q "no such file or folder" <<<"$msg" || fail "missing path message: $msg"

head -c 100 "$data/tiny-a/mmdit.safetensors" >"$tmp/broken.safetensors"
set +e
msg=$("$bin" info "$tmp/broken.safetensors" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] || fail "corrupt file exit code $rc"
grep -q "not a valid safetensors file" <<<"$msg" || fail "corrupt message: $msg"

set +e
"$bin" info --bogus-flag "$data/tiny-a/model" >/dev/null 2>&1; rc=$?
set -e
[ $rc -ne 0 ] || fail "unknown flag accepted"
out=$("$bin" info --tensors "$data/tiny-a/model/transformer/diffusion_pytorch_model.safetensors")
grep -q "pos_embed.proj.weight *F16 *\[32, 16, 2, 2\]" <<<"$out" || fail "--tensors listing: $out"
echo "info: ok"
