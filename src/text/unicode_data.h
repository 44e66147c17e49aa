// Declarations of the generated Unicode tables (src/text/unicode_data.cpp, made by scripts/gen_unicode_tables.py).
// Every table is sorted by its first column. Only text/unicode.cpp reads them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sd3::unicode_data {

extern const char* const kUnicodeVersion;
extern const uint32_t kNfcStableBelow;      // every code point below it is NFC-stable and never composes
extern const uint32_t kLetterRanges[][2];   // {first, last}: general category L*
extern const size_t kLetterRanges_size;
extern const uint32_t kNumberRanges[][2];   // {first, last}: general category N*
extern const size_t kNumberRanges_size;
extern const uint32_t kLowerSingle[][2];    // {cp, lowercase cp}
extern const size_t kLowerSingle_size;
extern const uint32_t kLowerMulti[][5];     // {cp, count, lc0, lc1, lc2}: full lowercase of more than one cp
extern const size_t kLowerMulti_size;
extern const uint32_t kCombiningClass[][3]; // {first, last, class}: non-zero canonical combining classes
extern const size_t kCombiningClass_size;
extern const uint32_t kDecompIndex[][3];    // {cp, offset, length} into kDecompData: full canonical decomposition
extern const size_t kDecompIndex_size;
extern const uint32_t kDecompData[];
extern const size_t kDecompData_size;
extern const uint32_t kCompose[][3];        // {first, second, composite}: primary composites for NFC
extern const size_t kCompose_size;

}  // namespace sd3::unicode_data
