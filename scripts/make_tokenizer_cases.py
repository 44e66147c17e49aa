#!/usr/bin/env python3
# Makes tests/data/tokenizers/cases.json: the reference ids (transformers 5 CLIPTokenizer and T5Tokenizer over
# the tokenizers library, loaded from tests/data/tiny-a/model) for a few hundred adversarial prompts beyond the
# 12 of tiny-a/tokenize.json: decomposed accents (NFC), Hangul jamo, Greek sigma, U+0130, full-width forms,
# every kind of whitespace, contractions in capitals, partial and real special tokens, "!", U+2581, emoji with
# ZWJ / variation selectors, control characters, long prompts, and invalid UTF-8 (stored as bytes; the
# reference sees bytes.decode("utf-8", "replace"), which is what our tokenizers define invalid bytes to mean).
# Needs: pip install "transformers>=5" tokenizers sentencepiece. Usage: python3 scripts/make_tokenizer_cases.py
import json
import os
import random
import unicodedata

import tokenizers
import transformers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
MODEL = os.path.join(ROOT, "tests", "data", "tiny-a", "model")
OUT = os.path.join(ROOT, "tests", "data", "tokenizers", "cases.json")

tok_l = AutoTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer"))
tok_g = AutoTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer_2"))
tok_t5 = AutoTokenizer.from_pretrained(os.path.join(MODEL, "tokenizer_3"))

PIECES = (list("abcxyzABCXYZ0123456789 .,;:!?'\"-_/()[]{}<>|\\@#$%^&*+=~`") +
          ["\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u2029", "\u202f",
           "\u205f", "\u3000", "\x1c", "\x1f", "\u200b", "\ufeff", "\u180e",
           "\x00", "\x07", "\x7f", "\x9f", "\ufffd", "\u2581", "\u2581\u2581",
           "caf\u00e9", "cafe\u0301", "A\u030a", "\u212b", "e\u0301\u0323", "o\u0323\u0302", "\u0301", "\u0344",
           "\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\ud55c\uad6d\uc5b4",
           "\u03a3", "\u039f\u0394\u039f\u03a3", "\u0130stanbul", "STRASSE", "\u1e9e", "\u01c5", "\u2160", "\u2460",
           "\uff21\uff42\uff43", "\uff11\uff12", "\ufb01", "\u00bd", "\u00b2", "\u0663\u0664", "\u0967",
           "\u65e5\u672c", "\u30c6\u30ad\u30b9\u30c8", "\uff71", "\u4e2d\u6587", "\u0645\u0631\u062d\u0628\u0627",
           "\u05e9\u05dc\u05d5\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
           "\U0001F436", "\U0001F525", "\u2764\ufe0f", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
           "\U0001F44D\U0001F3FD", "\U0001F1FA\U0001F1F8", "\U00010400", "\U0001D400",
           "'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "'t", "n't", "''",
           "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|endoftext", "|>", "<|",
           "</s>", "<pad>", "<unk>", "<extra_id_0>", "<extra_id_99>", "<extra_id_42>", "<extra_id_100>", "<extra_id_",
           "!!", "!!!", "?!", "...", "\u2014", "\u201cq\u201d", "\u2018s\u2019"])

WORDS = ("a photo of sks dog sitting on the beach at sunset highly detailed 8k render oil painting by an "
         "artist trending on artstation portrait of a woman with red hair").split()

# Characters that extend a grapheme cluster: SentencePiece normalizes them differently from the tokenizers
# library's Precompiled normalizer when they follow a character the charsmap rewrites (docs/tokenizers.md).
EXTENDING = {0x200C, 0x200D} | set(range(0xFE00, 0xFE10)) | set(range(0x1F3FB, 0x1F400)) | {0xFF9E, 0xFF9F}


def t5_exact_expected(s):
    return not any(unicodedata.category(c) in ("Mn", "Me", "Mc") or ord(c) in EXTENDING for c in s)


def random_prompt(rng):
    kind = rng.random()
    if kind < 0.5:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
    if kind < 0.8:
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 10))]
        for _ in range(rng.randint(0, 3)):
            words.insert(rng.randint(0, len(words)), rng.choice(PIECES))
        return rng.choice([" ", "  ", ", ", "\n"]).join(words)
    # Random code points from all planes (no surrogates).
    out = []
    for _ in range(rng.randint(1, 8)):
        cp = rng.choice([rng.randint(0x20, 0x7F), rng.randint(0x80, 0x2FF), rng.randint(0x300, 0x36F),
                         rng.randint(0x370, 0x2FFF), rng.randint(0x3000, 0xD7FF), rng.randint(0xE000, 0xFFFF),
                         rng.randint(0x10000, 0x10FFFF)])
        out.append(chr(cp))
    return "".join(out)


def random_bytes(rng):
    b = bytearray()
    for _ in range(rng.randint(1, 16)):
        r = rng.random()
        if r < 0.4:
            b += rng.choice([b"a", b"dog ", b" ", b"!", b"'s", "\u00e9".encode(), "\U0001F436".encode()])
        elif r < 0.7:
            b.append(rng.randint(0x80, 0xFF))
        else:  # a valid multi-byte sequence cut short, or a surrogate / overlong / out-of-range form
            b += rng.choice([b"\xe6\x97", b"\xf0\x9f\x90", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe0\x80\xaf",
                             b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xef\xbf\xbd"])
    return bytes(b)


def ids(tok, s):
    return tok(s)["input_ids"]


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=400, help="random prompts (plus a fixed set)")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    prompts = [p.encode("utf-8") for p in PIECES]
    prompts += [random_prompt(rng).encode("utf-8") for _ in range(args.random)]
    prompts += [random_bytes(rng) for _ in range(max(1, args.random * 3 // 10))]
    prompts += [" ".join(rng.choice(WORDS) for _ in range(n)).encode() for n in (74, 75, 76, 200)]
    cases, t5_exact = [], 0
    for raw in prompts:
        text = raw.decode("utf-8", errors="replace")
        case = {"bytes_hex": raw.hex(), "clip_l": ids(tok_l, text), "clip_g": ids(tok_g, text),
                "t5": ids(tok_t5, text), "t5_exact": t5_exact_expected(text)}
        t5_exact += case["t5_exact"]
        cases.append(case)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"made_by": "scripts/make_tokenizer_cases.py",
                   "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
                   "note": "ids without padding or truncation (bos/eos included); input = bytes decoded with "
                           "errors='replace'; t5_exact false = the prompt has grapheme-extending characters",
                   "cases": cases}, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases, {t5_exact} with t5_exact")


if __name__ == "__main__":
    main()
