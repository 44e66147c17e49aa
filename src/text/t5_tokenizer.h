// T5's SentencePiece unigram tokenizer (SD3's tokenizer_3 folder) through the SentencePiece library, arranged to
// give the ids of the reference (transformers 5 T5Tokenizer over the tokenizers library; research doc 7.2):
// added tokens (<pad>, </s>, <unk>, <extra_id_N>) split out of the raw text first, every White_Space character
// treated as a space, spiece.model's normalization and Viterbi for the rest, then </s> (no bos), truncation and
// right padding with <pad>. See docs/tokenizers.md for the one known divergence (grapheme clusters).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "text/tokenized.h"

namespace sd3 {

class T5Tokenizer {
  public:
    // `dir` is a tokenizer_3/ folder: spiece.model, with tokenizer_config.json / special_tokens_map.json /
    // tokenizer.json for the special and sentinel tokens when present.
    static Result<T5Tokenizer> load(const std::string& dir);

    // tokens + eos. With max_length > 0 the tokens are cut so that they and eos fit in max_length (log_warn says
    // how many were dropped) and, when `pad`, right-padded with pad_id() to max_length. max_length <= 0: no limit,
    // no padding. Any bytes are accepted: invalid UTF-8 becomes U+FFFD.
    Tokenized encode(std::string_view text, int max_length, bool pad = true) const;

    int32_t eos_id() const;
    int32_t pad_id() const;
    int32_t unk_id() const;
    int64_t vocab_size() const;  // SentencePiece pieces plus added tokens (largest id + 1)

    T5Tokenizer(T5Tokenizer&&) noexcept;
    T5Tokenizer& operator=(T5Tokenizer&&) noexcept;
    ~T5Tokenizer();

  private:
    struct Impl;
    explicit T5Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace sd3
