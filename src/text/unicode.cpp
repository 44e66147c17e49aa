// UTF-8 coding, category lookups, lowercase and NFC over the generated tables (text/unicode_data.cpp).
// NFC follows UAX #15: full canonical decomposition (Hangul algorithmically), canonical ordering by combining
// class, then canonical composition with blocking; the tables exclude composition exclusions already.
#include "text/unicode.h"

#include <algorithm>
#include <iterator>

#include "text/unicode_data.h"

namespace sd3::unicode {

namespace ud = unicode_data;

std::u32string decode_utf8(std::string_view bytes) {
    std::u32string out;
    out.reserve(bytes.size());
    const size_t n = bytes.size();
    size_t i = 0;
    while (i < n) {
        const uint8_t b = static_cast<uint8_t>(bytes[i]);
        if (b < 0x80) {
            out.push_back(b);
            ++i;
            continue;
        }
        // Length and the allowed range of the second byte (Unicode Table 3-7, well-formed byte sequences).
        int len = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        char32_t cp = 0;
        if (b >= 0xC2 && b <= 0xDF) { len = 2; cp = b & 0x1F; }
        else if (b == 0xE0) { len = 3; lo = 0xA0; cp = b & 0x0F; }
        else if (b >= 0xE1 && b <= 0xEC) { len = 3; cp = b & 0x0F; }
        else if (b == 0xED) { len = 3; hi = 0x9F; cp = b & 0x0F; }
        else if (b >= 0xEE && b <= 0xEF) { len = 3; cp = b & 0x0F; }
        else if (b == 0xF0) { len = 4; lo = 0x90; cp = b & 0x07; }
        else if (b >= 0xF1 && b <= 0xF3) { len = 4; cp = b & 0x07; }
        else if (b == 0xF4) { len = 4; hi = 0x8F; cp = b & 0x07; }
        if (len == 0) {  // 80..C1, F5..FF can start nothing
            out.push_back(kReplacement);
            ++i;
            continue;
        }
        size_t j = i + 1;
        bool ok = true;
        for (int k = 1; k < len; ++k, ++j) {
            const uint8_t c = j < n ? static_cast<uint8_t>(bytes[j]) : 0;
            const uint8_t clo = k == 1 ? lo : 0x80, chi = k == 1 ? hi : 0xBF;
            if (j >= n || c < clo || c > chi) {
                ok = false;
                break;
            }
            cp = (cp << 6) | (c & 0x3F);
        }
        out.push_back(ok ? cp : kReplacement);  // a truncated sequence is one maximal subpart: one U+FFFD
        i = j;
    }
    return out;
}

void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::string encode_utf8(std::u32string_view cps) {
    std::string out;
    out.reserve(cps.size());
    for (char32_t c : cps) append_utf8(out, c);
    return out;
}

std::string sanitize_utf8(std::string_view bytes) {
    bool ascii = true;
    for (char c : bytes) ascii &= static_cast<uint8_t>(c) < 0x80;
    if (ascii) return std::string(bytes);
    return encode_utf8(decode_utf8(bytes));
}

namespace {

bool in_ranges(const uint32_t (*table)[2], size_t size, char32_t cp) {
    // First range whose last >= cp.
    size_t lo = 0, hi = size;
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (table[mid][1] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < size && table[lo][0] <= cp;
}

template <size_t W>
const uint32_t* find_row(const uint32_t (*table)[W], size_t size, char32_t cp) {
    const uint32_t(*end)[W] = table + size;
    const uint32_t(*it)[W] = std::lower_bound(table, end, cp, [](const uint32_t(&row)[W], char32_t v) { return row[0] < v; });
    return (it != end && (*it)[0] == cp) ? *it : nullptr;
}

// Hangul syllable arithmetic (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(std::u32string& out, char32_t cp) {
    if (cp >= kSBase && cp < kSBase + kSCount) {
        const int s = static_cast<int>(cp - kSBase);
        out.push_back(kLBase + s / kNCount);
        out.push_back(kVBase + (s % kNCount) / kTCount);
        if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
        return;
    }
    if (const uint32_t* row = find_row(ud::kDecompIndex, ud::kDecompIndex_size, cp)) {
        for (uint32_t k = 0; k < row[2]; ++k) out.push_back(ud::kDecompData[row[1] + k]);
        return;
    }
    out.push_back(cp);
}

// The composite of (a, b), or 0 when they do not compose.
char32_t compose_pair(char32_t a, char32_t b) {
    if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
        return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount)
        return a + (b - kTBase);
    const uint32_t(*end)[3] = ud::kCompose + ud::kCompose_size;
    const uint32_t(*it)[3] = std::lower_bound(ud::kCompose, end, std::pair<char32_t, char32_t>(a, b),
                                              [](const uint32_t(&row)[3], const std::pair<char32_t, char32_t>& v) {
                                                  return row[0] < v.first || (row[0] == v.first && row[1] < v.second);
                                              });
    return (it != end && (*it)[0] == a && (*it)[1] == b) ? (*it)[2] : 0;
}

}  // namespace

bool is_letter(char32_t cp) {
    if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    return in_ranges(ud::kLetterRanges, ud::kLetterRanges_size, cp);
}

bool is_number(char32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(ud::kNumberRanges, ud::kNumberRanges_size, cp);
}

bool is_white_space(char32_t cp) {
    // PropList.txt White_Space (unchanged since Unicode 6.3): what Oniguruma's \s and Rust's is_whitespace test.
    switch (cp) {
        case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0: case 0x1680:
        case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return cp >= 0x2000 && cp <= 0x200A;
    }
}

void append_lower(std::u32string& out, char32_t cp) {
    if (cp < 0x80) {
        out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
        return;
    }
    if (const uint32_t* row = find_row(ud::kLowerSingle, ud::kLowerSingle_size, cp)) {
        out.push_back(row[1]);
        return;
    }
    if (const uint32_t* row = find_row(ud::kLowerMulti, ud::kLowerMulti_size, cp)) {
        for (uint32_t k = 0; k < row[1]; ++k) out.push_back(row[2 + k]);
        return;
    }
    out.push_back(cp);
}

uint8_t combining_class(char32_t cp) {
    if (cp < 0x300) return 0;
    const uint32_t(*end)[3] = ud::kCombiningClass + ud::kCombiningClass_size;
    const uint32_t(*it)[3] = std::lower_bound(ud::kCombiningClass, end, cp,
                                              [](const uint32_t(&row)[3], char32_t v) { return row[1] < v; });
    return (it != end && (*it)[0] <= cp) ? static_cast<uint8_t>((*it)[2]) : 0;
}

std::u32string nfc(std::u32string_view text) {
    if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < ud::kNfcStableBelow; }))
        return std::u32string(text);
    // 1. Full canonical decomposition.
    std::u32string d;
    d.reserve(text.size() + 8);
    for (char32_t c : text) decompose(d, c);
    // 2. Canonical ordering: a stable sort of every run of non-starters by combining class.
    for (size_t i = 0; i < d.size();) {
        if (combining_class(d[i]) == 0) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < d.size() && combining_class(d[j]) != 0) ++j;
        std::stable_sort(d.begin() + i, d.begin() + j,
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
    // 3. Canonical composition: a character joins the last starter unless a character in between blocks it
    //    (has a class of zero or at least its own).
    if (d.empty()) return d;
    std::u32string out;
    out.reserve(d.size());
    out.push_back(d[0]);
    size_t starter = 0;
    int last_class = combining_class(d[0]) == 0 ? 0 : 256;  // a leading non-starter blocks everything after it
    for (size_t i = 1; i < d.size(); ++i) {
        const char32_t c = d[i];
        const int cls = combining_class(c);
        const bool blocked = !(last_class < cls || last_class == 0);
        const char32_t composite = blocked ? 0 : compose_pair(out[starter], c);
        if (composite != 0) {
            out[starter] = composite;
            continue;
        }
        if (cls == 0) starter = out.size();
        last_class = cls;
        out.push_back(c);
    }
    return out;
}

const char* unicode_version() { return ud::kUnicodeVersion; }

}  // namespace sd3::unicode
