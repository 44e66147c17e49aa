// CLIP's byte-level BPE tokenizer (SD3's tokenizer/ and tokenizer_2/ folders), exact to the reference:
// transformers 5 CLIPTokenizer over the tokenizers library (research doc sections 1.7 and 7.1; docs/tokenizers.md).
// Pipeline: split on added/special tokens -> NFC, whitespace runs to " ", lowercase -> CLIP's pre-tokenizing
// regex -> UTF-8 bytes through bytes_to_unicode -> BPE with "</w>" word ends -> bos + ids + eos, truncated and
// padded to model_max_length with the folder's pad token.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "text/tokenized.h"

namespace sd3 {

class ClipTokenizer {
  public:
    // `dir` is a tokenizer/ or tokenizer_2/ folder: vocab.json + merges.txt, or tokenizer.json alone, with
    // tokenizer_config.json / special_tokens_map.json for special tokens, padding and the maximum length.
    static Result<ClipTokenizer> load(const std::string& dir);

    // bos + tokens + eos, truncated to max_length() (log_warn says how many tokens were dropped) and, when
    // `pad`, right-padded with pad_id() to max_length(). Any bytes are accepted: invalid UTF-8 becomes U+FFFD.
    Tokenized encode(std::string_view text, bool pad = true) const;
    // bos + all tokens + eos: neither truncated nor padded (what the reference returns without options).
    Tokenized encode_all(std::string_view text) const;
    // The content tokens only (no bos/eos), no truncation.
    std::vector<int32_t> tokenize(std::string_view text) const;

    int max_length() const;
    int32_t bos_id() const;
    int32_t eos_id() const;
    int32_t pad_id() const;
    int32_t unk_id() const;
    int64_t vocab_size() const;  // largest id + 1

    ClipTokenizer(ClipTokenizer&&) noexcept;
    ClipTokenizer& operator=(ClipTokenizer&&) noexcept;
    ~ClipTokenizer();

  private:
    struct Impl;
    explicit ClipTokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sd3
