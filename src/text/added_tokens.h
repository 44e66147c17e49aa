// What the CLIP and T5 tokenizers share: reading a tokenizer folder's configs (tokenizer_config.json,
// special_tokens_map.json, the added_tokens of tokenizer.json) and splitting text on added/special tokens
// before the model sees it, as the tokenizers library's AddedVocabulary does (leftmost-longest match; tokens
// with "normalized": false match the raw text, the others the normalized text; lstrip/rstrip eat whitespace).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace sd3::text {

struct AddedToken {
    std::string content;
    int32_t id = -1;
    bool normalized = false;  // matched after normalization (true) or on the raw text (false)
    bool lstrip = false;      // the match also takes the whitespace on its left
    bool rstrip = false;      // ... and on its right
};

// tokenizer_config.json with special_tokens_map.json and tokenizer.json's "added_tokens" (each optional).
struct TokenizerFolderConfig {
    std::string dir;
    std::map<std::string, std::string> special;   // "bos_token" -> "<|startoftext|>", also eos/unk/pad
    std::vector<std::string> extra_special;       // additional_special_tokens / extra_special_tokens
    std::vector<AddedToken> added;                // with ids: tokenizer.json added_tokens, added_tokens_decoder
    std::optional<int64_t> model_max_length;
    std::optional<int64_t> extra_ids;             // T5: the number of <extra_id_N> sentinels
    bool has_tokenizer_json = false;

    // The configured token for `key` ("pad_token"), or `fallback` (the reference constructor's default).
    std::string token_or(const std::string& key, const std::string& fallback) const;
};

// Reads the optional config files of `dir`; a file that exists but is malformed is an error naming it.
// `tokenizer_json` receives the parsed tokenizer.json when asked for and present (it can be large).
Result<TokenizerFolderConfig> read_tokenizer_folder(const std::string& dir, nlohmann::json* tokenizer_json = nullptr);

// A piece of the input: either text (id < 0) or one added token, as [begin, end) into the split string.
struct Segment {
    size_t begin = 0, end = 0;
    int32_t id = -1;
};

class AddedTokenSplitter {
  public:
    void add(const AddedToken& token);  // later duplicates of a content are ignored
    bool empty() const { return tokens_.empty(); }
    // Splits `text` on the tokens whose `normalized` flag equals `normalized_pass`.
    std::vector<Segment> split(std::u32string_view text, bool normalized_pass) const;

  private:
    struct Entry {
        std::u32string content;
        int32_t id;
        bool normalized, lstrip, rstrip;
    };
    std::vector<Entry> tokens_;
};

}  // namespace sd3::text
