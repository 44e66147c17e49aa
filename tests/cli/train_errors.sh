#!/usr/bin/env bash
# Bad command lines stop at once with a message saying what to change.
set -uo pipefail
BIN="$1"; DATA="$2"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
MODEL="$DATA/tiny-a/model"
expect_fail() {  # expect_fail CODE PATTERN args...
    local code="$1" pattern="$2"; shift 2  # CODE: exit status, or any non-zero
    "$BIN" train "$@" > "$OUT/log" 2>&1; local rc=$?
    if { [ "$code" = any ] && [ "$rc" -eq 0 ]; } || { [ "$code" != any ] && [ "$rc" -ne "$code" ]; }; then echo "expected exit $code, got $rc for: $*"; cat "$OUT/log"; exit 1; fi
    grep -q -- "$pattern" "$OUT/log" || { echo "expected '$pattern' for: $*"; cat "$OUT/log"; exit 1; }
}
expect_fail any "not expected" --model "$MODEL" --data "$DATA/train/images" --no_such_flag
expect_fail 1 "needs --class_data_dir" --model "$MODEL" --data "$DATA/train/images" --prompt p --with_prior_preservation --class_prompt dog --out "$OUT/x"
expect_fail 1 "no model" --data "$DATA/train/images"
expect_fail 1 "is not a folder" --model "$MODEL" --data "$OUT/missing" --prompt p --out "$OUT/x"
expect_fail 1 "multiple of 16" --model "$MODEL" --data "$DATA/train/images" --prompt p --resolution 30 --out "$OUT/x"
expect_fail 1 "unknown --lr_scheduler" --model "$MODEL" --data "$DATA/train/images" --prompt p --lr_scheduler fancy --out "$OUT/x"
expect_fail 1 "applies to AdamW only" --model "$MODEL" --data "$DATA/train/images" --prompt p --optimizer prodigy --use_8bit_adam --out "$OUT/x"
expect_fail 1 "train_text_encoder is not supported" --model "$MODEL" --data "$DATA/train/images" --prompt p --train_text_encoder --out "$OUT/x"
expect_fail 1 "no caption" --model "$MODEL" --data "$DATA/train/images" --out "$OUT/x" --resolution 32 --steps 1
printf 'resolution = 32\nnot_an_option = 3\n' > "$OUT/bad.toml"
expect_fail 1 "unknown option 'not_an_option'" --config "$OUT/bad.toml" --model "$MODEL"
expect_fail any "deterministic,atomic" --model "$MODEL" --data "$DATA/train/images" --prompt p --attention-backward fast
# The atomic attention backward: a notice on the CPU (always deterministic there), named at start-up on a GPU.
"$BIN" train --model "$MODEL" --data "$DATA/train/images" --prompt p --resolution 32 --steps 1 --quiet \
    --attention-backward atomic --out "$OUT/atomic" > "$OUT/log" 2>&1 || { echo "--attention-backward atomic failed"; cat "$OUT/log"; exit 1; }
grep -q -e "notice: --attention-backward atomic has no effect on the CPU" -e "attention backward with atomics" "$OUT/log" \
    || { echo "--attention-backward atomic: neither the CPU's notice nor the GPU's start-up line"; cat "$OUT/log"; exit 1; }
echo "ok"
