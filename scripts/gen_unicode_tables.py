#!/usr/bin/env python3
# Generates src/text/unicode_data.cpp: the Unicode tables our tokenizers need (letter and number categories for
# CLIP's pre-tokenizing regex, per-character full lowercase, and canonical decomposition / combining classes /
# composition pairs for NFC). The generated C++ is data only; the algorithms are in src/text/unicode.cpp.
#
# Unicode version: the reference (tokenizers 0.23 in transformers 5) classifies with Oniguruma 6.9.10 and
# lowercases with Rust's std, both Unicode 16.0, while Python 3.11's own unicodedata is 14.0 (a CJK Ext. H
# ideograph would then be a symbol, not a letter). So categories and NFC come from `unicodedata2==16.0.0`, and
# the lowercase table is read from the reference's own Lowercase normalizer (data only, per code point).
# Needs: pip install "unicodedata2==16.0.0" tokenizers.  Usage: python3 scripts/gen_unicode_tables.py [OUT.cpp]
import os
import sys

import unicodedata2 as ud
from tokenizers import normalizers

WANTED_UNICODE = "16.0.0"
if ud.unidata_version != WANTED_UNICODE:
    sys.exit(f"unicodedata2 {ud.unidata_version} found; install unicodedata2=={WANTED_UNICODE} (the reference's version)")

MAX_CP = 0x110000
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "src", "text", "unicode_data.cpp")


def is_surrogate(c):
    return 0xD800 <= c <= 0xDFFF


def ranges(pred):
    out, start = [], None
    for c in range(MAX_CP + 1):
        inside = c < MAX_CP and not is_surrogate(c) and pred(c)
        if inside and start is None:
            start = c
        elif not inside and start is not None:
            out.append((start, c - 1))
            start = None
    return out


def category(c):
    return ud.category(chr(c))


letters = ranges(lambda c: category(c).startswith("L"))   # \p{L}: Lu Ll Lt Lm Lo
numbers = ranges(lambda c: category(c).startswith("N"))   # \p{N}: Nd Nl No

# Per-character full lowercase, as the reference's Lowercase normalizer does it (Rust's char::to_lowercase char
# by char: no final-sigma context; U+0130 -> "i\u0307").
lowercase = normalizers.Lowercase()
lower_single, lower_multi = [], []
for c in range(MAX_CP):
    if is_surrogate(c):
        continue
    low = lowercase.normalize_str(chr(c))
    if low == chr(c):
        continue
    if len(low) == 1:
        lower_single.append((c, ord(low)))
    else:
        assert len(low) <= 3, (hex(c), low)
        lower_multi.append((c, [ord(x) for x in low]))

# Canonical combining classes, as ranges of equal non-zero class.
ccc_ranges = []
for c in range(MAX_CP):
    if is_surrogate(c):
        continue
    k = ud.combining(chr(c))
    if k == 0:
        continue
    if ccc_ranges and ccc_ranges[-1][1] == c - 1 and ccc_ranges[-1][2] == k:
        ccc_ranges[-1][1] = c
    else:
        ccc_ranges.append([c, c, k])


def canonical_decomposition(c):
    d = ud.decomposition(chr(c))
    if not d or d.startswith("<"):
        return None
    return [int(x, 16) for x in d.split()]


def full_decomposition(c):
    d = canonical_decomposition(c)
    if d is None:
        return [c]
    out = []
    for x in d:
        out.extend(full_decomposition(x))
    return out


# Full (recursive) canonical decompositions; Hangul syllables are algorithmic and left out.
decomp = []
for c in range(MAX_CP):
    if is_surrogate(c) or 0xAC00 <= c <= 0xD7A3:
        continue
    if canonical_decomposition(c) is not None:
        full = full_decomposition(c)
        assert ud.normalize("NFD", chr(c)) == "".join(map(chr, full)), hex(c)
        decomp.append((c, full))

# Primary composites: a two-character canonical decomposition that NFC recomposes (this excludes the
# composition exclusions, singletons and non-starter decompositions without needing their data files).
compose = []
for c in range(MAX_CP):
    if is_surrogate(c) or 0xAC00 <= c <= 0xD7A3:
        continue
    d = canonical_decomposition(c)
    if d is not None and len(d) == 2 and ud.normalize("NFC", chr(c)) == chr(c):
        compose.append((d[0], d[1], c))
compose.sort()
# Below this code point every character is its own NFC and never combines with a neighbour, which lets NFC
# skip pure-Latin-1 text.
min_second = min(s for _, s, _ in compose)
min_nonzero_ccc = min(r[0] for r in ccc_ranges)
min_decomposable = min(c for c, _ in decomp)
nfc_stable_below = min(min_second, min_nonzero_ccc, 0x1100)  # 0x1100: Hangul jamo compose algorithmically
assert all(ud.normalize("NFC", chr(c)) == chr(c) for c in range(nfc_stable_below))


def emit_pairs(f, name, rows, width):
    f.write(f"const uint32_t {name}[]{'' if width == 1 else f'[{width}]'} = {{\n")
    line = "   "
    for r in rows:
        item = " " + ", ".join(f"0x{x:X}" for x in r) + "," if width == 1 else " {" + ", ".join(f"0x{x:X}" for x in r) + "},"
        if len(line) + len(item) > 116:
            f.write(line + "\n")
            line = "   "
        line += item
    f.write(line + "\n};\n")
    f.write(f"const size_t {name}_size = {len(rows)};\n\n")


with open(OUT, "w", encoding="utf-8") as f:
    f.write("// GENERATED by scripts/gen_unicode_tables.py from unicodedata2 and the reference's lowercase "
            f"(Unicode {ud.unidata_version}); do not edit.\n")
    f.write("// Data only: categories (L, N), per-character lowercase, and the NFC tables; used by text/unicode.cpp.\n")
    f.write('#include "text/unicode_data.h"\n\nnamespace sd3::unicode_data {\n\n')
    f.write(f'const char* const kUnicodeVersion = "{ud.unidata_version}";\n')
    f.write(f"const uint32_t kNfcStableBelow = 0x{nfc_stable_below:X};\n\n")
    emit_pairs(f, "kLetterRanges", letters, 2)
    emit_pairs(f, "kNumberRanges", numbers, 2)
    emit_pairs(f, "kLowerSingle", lower_single, 2)
    emit_pairs(f, "kLowerMulti", [(c, len(m), *(m + [0] * (3 - len(m)))) for c, m in lower_multi], 5)
    emit_pairs(f, "kCombiningClass", ccc_ranges, 3)
    flat, index = [], []
    for c, full in decomp:
        index.append((c, len(flat), len(full)))
        flat.extend(full)
    emit_pairs(f, "kDecompIndex", index, 3)
    emit_pairs(f, "kDecompData", [(x,) for x in flat], 1)
    emit_pairs(f, "kCompose", compose, 3)
    f.write("}  // namespace sd3::unicode_data\n")
print(f"wrote {OUT}: {len(letters)} letter ranges, {len(numbers)} number ranges, {len(lower_single)}+{len(lower_multi)} "
      f"lowercase, {len(ccc_ranges)} ccc ranges, {len(decomp)} decompositions, {len(compose)} compositions, "
      f"NFC-stable below U+{nfc_stable_below:04X} (Unicode {ud.unidata_version})")
