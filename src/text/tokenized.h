// The result of tokenizing one prompt, shared by the CLIP and T5 tokenizers.
#pragma once

#include <cstdint>
#include <vector>

namespace sd3 {

struct Tokenized {
    std::vector<int32_t> ids;  // [T] token ids, special tokens and padding included
    int64_t dropped = 0;       // tokens removed by truncation (0 when the prompt fit)
};

}  // namespace sd3
