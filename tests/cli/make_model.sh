#!/usr/bin/env bash
# `sd3tune make-model`: writes a loadable tiny pipeline with random weights; refuses bad presets and dtypes.
set -euo pipefail
bin=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" make-model --preset tiny --random --output "$tmp/m" --tokenizers "$data/tiny-a/model" --dtype f16 2>/dev/null
out=$("$bin" info "$tmp/m")
grep -q "transformer  SD3Transformer2DModel  91.0 K parameters, f16" <<<"$out" || fail "info of the made model: $out"

set +e
msg=$("$bin" make-model --preset sd4 --random --output "$tmp/x" --tokenizers "$data/tiny-a/model" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] && grep -q 'unknown preset "sd4"' <<<"$msg" || fail "bad preset: rc $rc, $msg"
set +e
msg=$("$bin" make-model --preset tiny --random --output "$tmp/m" --tokenizers "$data/tiny-a/model" 2>&1); rc=$?
set -e
[ $rc -eq 1 ] && grep -q "not an empty folder" <<<"$msg" || fail "existing output: rc $rc, $msg"
set +e
"$bin" make-model --preset tiny --output "$tmp/y" --tokenizers "$data/tiny-a/model" >/dev/null 2>&1; rc=$?
set -e
[ $rc -eq 2 ] || fail "missing --random should be a usage error, got $rc"
echo "make_model: ok"
