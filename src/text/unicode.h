// The Unicode the tokenizers need, without ICU: UTF-8 decoding that never fails (invalid bytes become U+FFFD),
// general-category tests (letters, numbers, White_Space), per-character full lowercase, and NFC.
// Tables come from scripts/gen_unicode_tables.py (Python's unicodedata); see docs/tokenizers.md.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sd3::unicode {

constexpr char32_t kReplacement = 0xFFFD;

// Decodes UTF-8. Each maximal ill-formed subsequence (Unicode ch. 3 "U+FFFD substitution of maximal subparts",
// what Python's bytes.decode("utf-8", "replace") does) becomes one U+FFFD: stray continuation bytes, overlong
// forms, surrogates (ED A0..BF), code points above U+10FFFF and truncated sequences.
std::u32string decode_utf8(std::string_view bytes);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(std::u32string_view cps);
// decode + encode: valid UTF-8 with every invalid subsequence replaced by U+FFFD.
std::string sanitize_utf8(std::string_view bytes);

bool is_letter(char32_t cp);      // \p{L}
bool is_number(char32_t cp);      // \p{N}
bool is_white_space(char32_t cp); // the White_Space property (regex \s, Rust's char::is_whitespace)

// Appends the full lowercase of one code point (Rust's char::to_lowercase; U+0130 gives two code points).
void append_lower(std::u32string& out, char32_t cp);
uint8_t combining_class(char32_t cp);
// Canonical composition (NFC) of a code point sequence.
std::u32string nfc(std::u32string_view text);

const char* unicode_version();

}  // namespace sd3::unicode
