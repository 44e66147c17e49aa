// Tokenizer folder configs and added-token splitting (see added_tokens.h).
#include "text/added_tokens.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/json_file.h"
#include "text/unicode.h"

namespace sd3::text {

namespace {

// A token in a config is either "text" or {"content": "text", ...} (transformers' AddedToken serialization).
std::optional<std::string> token_content(const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return std::nullopt;
}

Result<AddedToken> parse_added_token(const nlohmann::json& v, int64_t id, const std::string& file) {
    auto content = token_content(v);
    if (!content || content->empty())
        return make_error(ErrorCode::CORRUPT_FILE, file, ": added token ", v.dump(), " has no \"content\"");
    if (id < 0 || id > INT32_MAX)
        return make_error(ErrorCode::CORRUPT_FILE, file, ": added token \"", *content, "\" has an invalid id ", id);
    AddedToken t;
    t.content = *content;
    t.id = static_cast<int32_t>(id);
    if (v.is_object()) {
        t.normalized = v.value("normalized", false);
        t.lstrip = v.value("lstrip", false);
        t.rstrip = v.value("rstrip", false);
    }
    return t;
}

Status read_special_tokens(const nlohmann::json& j, TokenizerFolderConfig& cfg) {
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
        if (!j.contains(key) || j[key].is_null()) continue;
        if (auto c = token_content(j[key])) cfg.special[key] = *c;
    }
    for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
        if (!j.contains(key) || !j[key].is_array()) continue;
        for (const auto& v : j[key])
            if (auto c = token_content(v)) cfg.extra_special.push_back(*c);
    }
    return {};
}

}  // namespace

std::string TokenizerFolderConfig::token_or(const std::string& key, const std::string& fallback) const {
    auto it = special.find(key);
    return it == special.end() ? fallback : it->second;
}

Result<TokenizerFolderConfig> read_tokenizer_folder(const std::string& dir, nlohmann::json* tokenizer_json) {
    namespace fs = std::filesystem;
    TokenizerFolderConfig cfg;
    cfg.dir = dir;
    if (!fs::is_directory(dir))
        return make_error(ErrorCode::NOT_FOUND, dir, ": no such tokenizer folder");

    // special_tokens_map.json first: tokenizer_config.json overrides it, as in transformers.
    const std::string map_path = (fs::path(dir) / "special_tokens_map.json").string();
    if (fs::exists(map_path)) {
        SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(map_path));
        if (!j.is_object()) return make_error(ErrorCode::CORRUPT_FILE, map_path, ": expected a JSON object");
        SD3_TRY(read_special_tokens(j, cfg));
    }
    const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
    if (fs::exists(config_path)) {
        SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(config_path));
        if (!j.is_object()) return make_error(ErrorCode::CORRUPT_FILE, config_path, ": expected a JSON object");
        SD3_TRY(read_special_tokens(j, cfg));
        // transformers writes 1e30 for "no limit"; only a representable positive length counts.
        if (j.contains("model_max_length") && j["model_max_length"].is_number()) {
            const double v = j["model_max_length"].get<double>();
            if (v >= 1 && v < 1e15) cfg.model_max_length = static_cast<int64_t>(v);
        }
        if (j.contains("extra_ids") && j["extra_ids"].is_number_integer()) cfg.extra_ids = j["extra_ids"].get<int64_t>();
        if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
            for (const auto& [key, v] : j["added_tokens_decoder"].items()) {
                int64_t id = -1;
                try {
                    id = std::stoll(key);
                } catch (...) {
                    return make_error(ErrorCode::CORRUPT_FILE, config_path, ": added_tokens_decoder key \"", key,
                                      "\" is not a token id");
                }
                SD3_ASSIGN_OR_RETURN(AddedToken t, parse_added_token(v, id, config_path));
                cfg.added.push_back(std::move(t));
            }
        }
    }
    const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
    if (fs::exists(json_path)) {
        cfg.has_tokenizer_json = true;
        nlohmann::json j;
        if (tokenizer_json) {
            SD3_ASSIGN_OR_RETURN(j, read_json_file(json_path));
        } else {  // only the added tokens are wanted: skip building the (large) model's vocabulary and merges
            std::ifstream in(json_path);
            if (!in) return make_error(ErrorCode::IO_ERROR, json_path, ": cannot open");
            const nlohmann::json::parser_callback_t skip_model = [](int depth, nlohmann::json::parse_event_t event,
                                                                    nlohmann::json& parsed) {
                return !(depth == 1 && event == nlohmann::json::parse_event_t::key && parsed == "model");
            };
            j = nlohmann::json::parse(in, skip_model, /*allow_exceptions=*/false);
            if (j.is_discarded()) return make_error(ErrorCode::CORRUPT_FILE, json_path, ": not valid JSON");
        }
        if (!j.is_object()) return make_error(ErrorCode::CORRUPT_FILE, json_path, ": expected a JSON object");
        if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
            // tokenizer.json is what the reference loads when present: its ids come first.
            std::vector<AddedToken> from_json;
            for (const auto& v : j["added_tokens"]) {
                if (!v.is_object() || !v.contains("id") || !v["id"].is_number_integer())
                    return make_error(ErrorCode::CORRUPT_FILE, json_path, ": added token ", v.dump(), " has no id");
                SD3_ASSIGN_OR_RETURN(AddedToken t, parse_added_token(v, v["id"].get<int64_t>(), json_path));
                from_json.push_back(std::move(t));
            }
            cfg.added.insert(cfg.added.begin(), from_json.begin(), from_json.end());
        }
        if (tokenizer_json) *tokenizer_json = std::move(j);
    }
    return cfg;
}

void AddedTokenSplitter::add(const AddedToken& token) {
    std::u32string content = unicode::decode_utf8(token.content);
    if (content.empty()) return;  // an empty token would match everywhere
    for (const Entry& e : tokens_)
        if (e.content == content) return;
    tokens_.push_back({std::move(content), token.id, token.normalized, token.lstrip, token.rstrip});
}

std::vector<Segment> AddedTokenSplitter::split(std::u32string_view text, bool normalized_pass) const {
    std::vector<Segment> out;
    size_t text_start = 0;
    size_t i = 0;
    while (i < text.size()) {
        // Leftmost-longest: the longest token that starts at the first position where any starts.
        const Entry* best = nullptr;
        for (const Entry& e : tokens_) {
            if (e.content[0] != text[i] || e.normalized != normalized_pass || e.content.size() > text.size() - i) continue;
            if (best && e.content.size() <= best->content.size()) continue;
            if (text.compare(i, e.content.size(), e.content) == 0) best = &e;
        }
        if (!best) {
            ++i;
            continue;
        }
        size_t begin = i, end = i + best->content.size();
        if (best->lstrip)
            while (begin > text_start && unicode::is_white_space(text[begin - 1])) --begin;
        if (best->rstrip)
            while (end < text.size() && unicode::is_white_space(text[end])) ++end;
        if (begin > text_start) out.push_back({text_start, begin, -1});
        out.push_back({begin, end, best->id});
        text_start = i = end;
    }
    if (text_start < text.size()) out.push_back({text_start, text.size(), -1});
    return out;
}

}  // namespace sd3::text
