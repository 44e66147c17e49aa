#!/usr/bin/env bash
# `sd3tune tokenize`: prints the three id lists of tests/data/tiny-a/tokenize.json (the reference) as JSON,
# pads T5 to --max-sequence-length (256 by default), warns on truncation, accepts invalid UTF-8, and fails with a
# clear message (exit 1) on a missing folder, a malformed merges.txt and an out-of-range length.
set -euo pipefail
bin=$1
data=$2
model="$data/tiny-a/model"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
compact() { tr -d ' \n\t'; }
golden=$(compact <"$data/tiny-a/tokenize.json")
list() { sed -n "s/.*\"$1\":\(\[[0-9,]*\]\).*/\1/p" <<<"$2"; }  # one id list of a compacted output
count() { tr ',' '\n' <<<"$1" | grep -c '[0-9]'; }

# A golden prompt with T5 at 77, as make_golden.py tokenized it.
out=$("$bin" tokenize --model "$model" --max-sequence-length 77 "A PHOTO of a Cat, sitting on a mat!!" | compact)
l=$(list clip_l "$out"); g=$(list clip_g "$out"); t=$(list t5 "$out")
[ -n "$l" ] && [ -n "$g" ] && [ -n "$t" ] || fail "output is not {clip_l, clip_g, t5}: $out"
grep -qF "\"prompt\":\"APHOTOofaCat,sittingonamat!!\",\"clip_l\":$l,\"clip_g\":$g," <<<"$golden" || fail "CLIP ids differ from tokenize.json: $out"
grep -qF "\"t5\":$t," <<<"$golden" || fail "T5 ids differ from tokenize.json: $t"
[ "$(count "$l")" -eq 77 ] && [ "$(count "$t")" -eq 77 ] || fail "lengths: $out"

# Default T5 length is 256 (generation), padded with 0 after eos 1.
out=$("$bin" tokenize --model "$model" "a photo of sks dog" | compact)
[ "$(count "$(list t5 "$out")")" -eq 256 ] || fail "t5 should have 256 ids by default: $out"
[ "$(count "$(list clip_g "$out")")" -eq 77 ] || fail "clip_g should have 77 ids: $out"

# --no-pad gives the reference's unpadded lists.
out=$("$bin" tokenize --model "$model" --no-pad "a photo of sks dog" | compact)
grep -qF "\"prompt\":\"aphotoofsksdog\",\"clip_l\":[49406,320,1125,539,48136,1929,49407,49407" <<<"$golden" || fail "golden changed?"
grep -qF "\"clip_l_unpadded\":$(list clip_l "$out")" <<<"$golden" || fail "unpadded clip_l: $out"
grep -qF "\"t5_unpadded\":$(list t5 "$out")" <<<"$golden" || fail "unpadded t5: $out"

# A long prompt is truncated with a warning that says how many tokens were dropped.
long=$(printf 'a very long prompt that keeps going %.0s' {1..14})
"$bin" tokenize --model "$model" --max-sequence-length 77 "$long" >"$tmp/out.json" 2>"$tmp/err.txt" || fail "long prompt failed"
grep -q "23 past the first 75 were dropped" "$tmp/err.txt" || fail "CLIP truncation warning: $(cat "$tmp/err.txt")"
grep -q "were dropped (max_sequence_length 77" "$tmp/err.txt" || fail "T5 truncation warning: $(cat "$tmp/err.txt")"

# Invalid UTF-8 is tokenized (as U+FFFD), not rejected.
out=$("$bin" tokenize --model "$model" $'dog \xff\xfe \xed\xa0\x80 cat' | compact) || fail "invalid UTF-8 prompt failed"
[ "$(count "$(list clip_l "$out")")" -eq 77 ] || fail "invalid UTF-8 output: $out"

# Bad input: exit 1 and a message naming what is wrong.
expect_fail() {  # expect_fail NEEDLE ARGS...
    local needle=$1; shift
    set +e
    msg=$("$bin" tokenize "$@" 2>&1); rc=$?
    set -e
    [ $rc -eq 1 ] || fail "exit code $rc for $*: $msg"
    grep -qF -- "$needle" <<<"$msg" || fail "message for $* should mention $needle: $msg"
}
expect_fail "no such model folder" --model "$tmp/nope" "a dog"
cp -r "$model/tokenizer" "$model/tokenizer_2" "$model/tokenizer_3" "$tmp/"
printf '#version: 0.2\ni n\nnot a merge line\n' >"$tmp/tokenizer/merges.txt"
expect_fail "merges.txt:3" --model "$tmp" "a dog"
expect_fail "--max-sequence-length 0 is out of range" --model "$model" --max-sequence-length 0 "a dog"
echo "tokenize: ok"
