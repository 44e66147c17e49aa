// CLIP BPE tokenizer (see clip_tokenizer.h). Semantics: transformers 5 models/clip/tokenization_clip.py (the
// normalizer, pre-tokenizer and post-processor it builds) and the tokenizers library's BPE model
// (models/bpe/word.rs: merges applied lowest rank first, leftmost first among equal ranks).
#include "text/clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/log.h"
#include "io/json_file.h"
#include "text/added_tokens.h"
#include "text/unicode.h"

namespace sd3 {

namespace {

namespace fs = std::filesystem;
using text::AddedTokenSplitter;
using text::Segment;

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 + n in byte order.
std::array<char32_t, 256> bytes_to_unicode() {
    std::array<char32_t, 256> map{};
    int n = 0;
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        map[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
    }
    return map;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

constexpr size_t kCacheMaxWordBytes = 100;  // long words are rare; caching them buys nothing
constexpr size_t kCacheMaxEntries = 1 << 16;

// The BPE model: vocabulary and merges.
struct BpeTables {
    std::unordered_map<std::string, int32_t> vocab;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left id, right id) -> (rank, merged id)
    int64_t vocab_size = 0;                                            // largest id + 1
};

}  // namespace

struct ClipTokenizer::Impl {
    std::string dir;
    BpeTables bpe;
    std::array<int32_t, 256> byte_id{}, byte_eow_id{};                 // byte's symbol, and with "</w>"
    AddedTokenSplitter splitter;
    int32_t bos = -1, eos = -1, pad = -1, unk = -1;
    int max_length = 77;

    mutable std::mutex cache_mutex;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

    void encode_word(const std::string& bytes, std::vector<int32_t>& out) const;
    void encode_normalized(std::u32string_view text, std::vector<int32_t>& out) const;
};

// One pre-token (its UTF-8 bytes) through byte-level BPE.
void ClipTokenizer::Impl::encode_word(const std::string& bytes, std::vector<int32_t>& out) const {
    if (bytes.size() <= kCacheMaxWordBytes) {
        std::lock_guard<std::mutex> lock(cache_mutex);
        auto it = cache.find(bytes);
        if (it != cache.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    const int n = static_cast<int>(bytes.size());
    struct Symbol {
        int32_t id;
        int prev, next;
        bool alive;
    };
    std::vector<Symbol> sym(n);
    for (int i = 0; i < n; ++i) {
        const uint8_t b = static_cast<uint8_t>(bytes[i]);
        sym[i] = {i == n - 1 ? byte_eow_id[b] : byte_id[b], i - 1, i + 1 < n ? i + 1 : -1, true};
    }
    // Candidate merges ordered by (rank, position); stale ones are skipped when popped (tokenizers' Word::merge_all).
    struct Candidate {
        int32_t rank;
        int pos;
        int32_t new_id;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto push_pair = [&](int left) {
        if (left < 0 || sym[left].next < 0) return;
        auto it = bpe.merges.find(pair_key(sym[left].id, sym[sym[left].next].id));
        if (it != bpe.merges.end()) queue.push({it->second.first, left, it->second.second});
    };
    for (int i = 0; i + 1 < n; ++i) push_pair(i);
    while (!queue.empty()) {
        const Candidate top = queue.top();
        queue.pop();
        Symbol& left = sym[top.pos];
        if (!left.alive || left.next < 0) continue;
        auto it = bpe.merges.find(pair_key(left.id, sym[left.next].id));
        if (it == bpe.merges.end() || it->second.second != top.new_id) continue;  // the pair changed since
        Symbol& right = sym[left.next];
        left.id = top.new_id;
        right.alive = false;
        left.next = right.next;
        if (right.next >= 0) sym[right.next].prev = top.pos;
        push_pair(left.prev);
        push_pair(top.pos);
    }
    std::vector<int32_t> ids;
    for (int i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
    out.insert(out.end(), ids.begin(), ids.end());
    if (bytes.size() <= kCacheMaxWordBytes) {
        std::lock_guard<std::mutex> lock(cache_mutex);
        if (cache.size() >= kCacheMaxEntries) cache.clear();
        cache.emplace(bytes, std::move(ids));
    }
}

// The ByteLevel pre-tokenizer (use_regex: true) splits each CLIP piece again with GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// CLIP pieces hold no whitespace, so this only matters for mixed pieces: "<|endoftext|>" typed in another case
// reaches the BPE as "<|", "endoftext", "|>".
template <typename Fn>
void split_byte_level(std::u32string_view t, Fn&& emit) {
    static const std::u32string kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    auto kind = [](char32_t c) { return unicode::is_letter(c) ? 0 : unicode::is_number(c) ? 1 : 2; };
    size_t i = 0;
    while (i < t.size()) {
        size_t len = 0;
        if (t[i] == U'\'')
            for (const auto& s : kContractions)
                if (t.compare(i, s.size(), s) == 0) { len = s.size(); break; }
        if (len == 0) {
            const int k = kind(t[i]);
            len = 1;
            while (i + len < t.size() && kind(t[i + len]) == k) ++len;
        }
        emit(t.substr(i, len));
        i += len;
    }
}

// CLIP's pre-tokenizing regex, applied to normalized text (research doc 7.1.3; tokenization_clip.py):
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// Alternatives are tried in order at each position; whitespace matches none and is dropped.
void ClipTokenizer::Impl::encode_normalized(std::u32string_view t, std::vector<int32_t>& out) const {
    static const std::u32string kSpecials[] = {U"<|startoftext|>", U"<|endoftext|>"};
    static const std::u32string kContractions[] = {U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
    std::string piece;
    size_t i = 0;
    while (i < t.size()) {
        const char32_t c = t[i];
        size_t len = 0;
        if (c == U'<') {
            for (const auto& s : kSpecials)
                if (t.compare(i, s.size(), s) == 0) { len = s.size(); break; }
        } else if (c == U'\'') {
            for (const auto& s : kContractions)
                if (t.compare(i, s.size(), s) == 0) { len = s.size(); break; }
        }
        if (len == 0) {
            if (unicode::is_letter(c)) {
                len = 1;
                while (i + len < t.size() && unicode::is_letter(t[i + len])) ++len;
            } else if (unicode::is_number(c)) {
                len = 1;
            } else if (!unicode::is_white_space(c)) {
                len = 1;
                while (i + len < t.size()) {
                    const char32_t d = t[i + len];
                    if (unicode::is_white_space(d) || unicode::is_letter(d) || unicode::is_number(d)) break;
                    ++len;
                }
            }
        }
        if (len == 0) {  // whitespace
            ++i;
            continue;
        }
        split_byte_level(t.substr(i, len), [&](std::u32string_view sub) {
            piece.clear();
            for (char32_t ch : sub) unicode::append_utf8(piece, ch);
            encode_word(piece, out);
        });
        i += len;
    }
}

ClipTokenizer::ClipTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClipTokenizer::ClipTokenizer(ClipTokenizer&&) noexcept = default;
ClipTokenizer& ClipTokenizer::operator=(ClipTokenizer&&) noexcept = default;
ClipTokenizer::~ClipTokenizer() = default;

namespace {

Status read_vocab(const nlohmann::json& v, const std::string& file, BpeTables& impl) {
    if (!v.is_object() || v.empty())
        return make_error(ErrorCode::CORRUPT_FILE, file, ": the vocabulary must be a non-empty JSON object {token: id}");
    impl.vocab.reserve(v.size());
    for (const auto& [token, id] : v.items()) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
            return make_error(ErrorCode::CORRUPT_FILE, file, ": token \"", token, "\" has id ", id.dump(),
                              " (expected a non-negative integer)");
        impl.vocab[token] = static_cast<int32_t>(id.get<int64_t>());
        impl.vocab_size = std::max<int64_t>(impl.vocab_size, id.get<int64_t>() + 1);
    }
    return {};
}

Status add_merge(const std::string& a, const std::string& b, int32_t rank, const std::string& where,
                 BpeTables& impl) {
    auto ia = impl.vocab.find(a), ib = impl.vocab.find(b), im = impl.vocab.find(a + b);
    if (ia == impl.vocab.end() || ib == impl.vocab.end() || im == impl.vocab.end())
        return make_error(ErrorCode::CORRUPT_FILE, where, ": merge \"", a, " ", b, "\" uses or makes a token that is not in the vocabulary");
    impl.merges[pair_key(ia->second, ib->second)] = {rank, im->second};  // a repeated pair keeps its last rank, as tokenizers does
    return {};
}

Status read_merges_txt(const std::string& file, BpeTables& impl) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return make_error(ErrorCode::IO_ERROR, file, ": cannot open");
    std::string line;
    int64_t line_no = 0;
    int32_t rank = 0;
    std::vector<std::string> lines;
    while (std::getline(in, line)) {
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("#version", 0) == 0) continue;
        if (line.empty()) {
            if (in.peek() == std::char_traits<char>::eof()) break;  // a trailing empty line
            return make_error(ErrorCode::CORRUPT_FILE, file, ":", line_no, ": empty line (expected \"left right\")");
        }
        const size_t sp = line.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string::npos)
            return make_error(ErrorCode::CORRUPT_FILE, file, ":", line_no, ": \"", line,
                              "\" is not a merge (expected two tokens separated by one space)");
        SD3_TRY(add_merge(line.substr(0, sp), line.substr(sp + 1), rank++, str_cat(file, ":", line_no), impl));
    }
    if (rank == 0) return make_error(ErrorCode::CORRUPT_FILE, file, ": no merges");
    return {};
}

Status read_tokenizer_json_model(const nlohmann::json& tj, const std::string& file, BpeTables& impl) {
    if (!tj.contains("model") || !tj["model"].is_object())
        return make_error(ErrorCode::CORRUPT_FILE, file, ": no \"model\"");
    const nlohmann::json& m = tj["model"];
    if (m.value("type", std::string("BPE")) != "BPE")
        return make_error(ErrorCode::UNSUPPORTED, file, ": model type \"", m.value("type", std::string()),
                          "\" is not BPE; a CLIP tokenizer folder needs a BPE model");
    if (m.contains("end_of_word_suffix") && m["end_of_word_suffix"].is_string() && m["end_of_word_suffix"] != "</w>")
        return make_error(ErrorCode::UNSUPPORTED, file, ": end_of_word_suffix ", m["end_of_word_suffix"].dump(),
                          " (CLIP uses \"</w>\")");
    if (!m.contains("vocab")) return make_error(ErrorCode::CORRUPT_FILE, file, ": model has no \"vocab\"");
    SD3_TRY(read_vocab(m["vocab"], file, impl));
    if (!m.contains("merges") || !m["merges"].is_array() || m["merges"].empty())
        return make_error(ErrorCode::CORRUPT_FILE, file, ": model has no \"merges\"");
    int32_t rank = 0;
    for (const auto& v : m["merges"]) {
        std::string a, b;
        if (v.is_string()) {  // "left right" (older files)
            const std::string s = v.get<std::string>();
            const size_t sp = s.find(' ');
            if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
                return make_error(ErrorCode::CORRUPT_FILE, file, ": merge ", v.dump(), " is not \"left right\"");
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
        } else if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string()) {  // ["left", "right"]
            a = v[0].get<std::string>();
            b = v[1].get<std::string>();
        } else {
            return make_error(ErrorCode::CORRUPT_FILE, file, ": merge ", v.dump(), " is not a pair of tokens");
        }
        SD3_TRY(add_merge(a, b, rank++, file, impl));
    }
    return {};
}

}  // namespace

Result<ClipTokenizer> ClipTokenizer::load(const std::string& dir) {
    auto impl = std::make_unique<Impl>();
    impl->dir = dir;
    const std::string vocab_path = (fs::path(dir) / "vocab.json").string();
    const std::string merges_path = (fs::path(dir) / "merges.txt").string();
    const std::string json_path = (fs::path(dir) / "tokenizer.json").string();
    const bool have_files = fs::exists(vocab_path) && fs::exists(merges_path);
    if (!fs::is_directory(dir)) return make_error(ErrorCode::NOT_FOUND, dir, ": no such tokenizer folder");
    if (!have_files && !fs::exists(json_path)) {
        const std::string missing = fs::exists(vocab_path) ? merges_path : vocab_path;
        return make_error(ErrorCode::NOT_FOUND, missing,
                          ": missing (a CLIP tokenizer folder needs vocab.json and merges.txt, or tokenizer.json)");
    }
    nlohmann::json tj;
    SD3_ASSIGN_OR_RETURN(text::TokenizerFolderConfig cfg, text::read_tokenizer_folder(dir, have_files ? nullptr : &tj));
    if (have_files) {
        SD3_ASSIGN_OR_RETURN(nlohmann::json v, read_json_file(vocab_path));
        SD3_TRY(read_vocab(v, vocab_path, impl->bpe));
        SD3_TRY(read_merges_txt(merges_path, impl->bpe));
    } else {
        SD3_TRY(read_tokenizer_json_model(tj, json_path, impl->bpe));
    }

    // Special tokens: the folder's configs, else CLIPTokenizer's constructor defaults.
    std::unordered_map<std::string, int32_t> added_ids;
    for (const auto& t : cfg.added) added_ids.emplace(t.content, t.id);
    auto resolve = [&](const std::string& token, const char* what) -> Result<int32_t> {
        if (auto it = added_ids.find(token); it != added_ids.end()) return it->second;
        if (auto it = impl->bpe.vocab.find(token); it != impl->bpe.vocab.end()) return it->second;
        return make_error(ErrorCode::CORRUPT_FILE, dir, ": the ", what, " \"", token,
                          "\" named in tokenizer_config.json is not in the vocabulary");
    };
    const std::string bos = cfg.token_or("bos_token", "<|startoftext|>");
    const std::string eos = cfg.token_or("eos_token", "<|endoftext|>");
    const std::string unk = cfg.token_or("unk_token", "<|endoftext|>");
    const std::string pad = cfg.token_or("pad_token", "<|endoftext|>");
    SD3_ASSIGN_OR_RETURN(impl->bos, resolve(bos, "bos token"));
    SD3_ASSIGN_OR_RETURN(impl->eos, resolve(eos, "eos token"));
    SD3_ASSIGN_OR_RETURN(impl->unk, resolve(unk, "unk token"));
    SD3_ASSIGN_OR_RETURN(impl->pad, resolve(pad, "pad token"));

    // Added tokens split the text before normalization; every special token is one (so SD3's tokenizer_2,
    // whose pad token is "!", turns every "!" of a prompt into id 0: research doc 7.1.1).
    for (const auto& t : cfg.added) impl->splitter.add(t);
    std::vector<std::string> specials = {bos, eos, unk, pad};
    specials.insert(specials.end(), cfg.extra_special.begin(), cfg.extra_special.end());
    for (const std::string& s : specials) {
        SD3_ASSIGN_OR_RETURN(int32_t id, resolve(s, "special token"));
        impl->splitter.add({s, id, false, false, false});
    }
    for (const auto& t : cfg.added) impl->bpe.vocab_size = std::max<int64_t>(impl->bpe.vocab_size, t.id + 1);

    // Byte symbols (a missing one makes the unknown token, as in tokenizers' BPE).
    const auto b2u = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) {
        std::string s;
        unicode::append_utf8(s, b2u[b]);
        auto it = impl->bpe.vocab.find(s);
        impl->byte_id[b] = it == impl->bpe.vocab.end() ? impl->unk : it->second;
        it = impl->bpe.vocab.find(s + "</w>");
        impl->byte_eow_id[b] = it == impl->bpe.vocab.end() ? impl->unk : it->second;
    }

    if (cfg.model_max_length && *cfg.model_max_length >= 2 && *cfg.model_max_length <= 1'000'000) {
        impl->max_length = static_cast<int>(*cfg.model_max_length);
    } else {
        log_warn(dir, ": no usable model_max_length in tokenizer_config.json; using CLIP's 77");
        impl->max_length = 77;
    }
    return ClipTokenizer(std::move(impl));
}

std::vector<int32_t> ClipTokenizer::tokenize(std::string_view text) const {
    std::vector<int32_t> ids;
    const std::u32string cps = unicode::decode_utf8(text);  // invalid UTF-8 -> U+FFFD
    for (const Segment& raw : impl_->splitter.split(cps, /*normalized_pass=*/false)) {
        if (raw.id >= 0) {
            ids.push_back(raw.id);
            continue;
        }
        // Normalizer: NFC, every run of \s to one space, lowercase (char by char).
        const std::u32string composed = unicode::nfc(std::u32string_view(cps).substr(raw.begin, raw.end - raw.begin));
        std::u32string norm;
        norm.reserve(composed.size());
        for (size_t i = 0; i < composed.size(); ++i) {
            if (unicode::is_white_space(composed[i])) {
                while (i + 1 < composed.size() && unicode::is_white_space(composed[i + 1])) ++i;
                norm.push_back(U' ');
            } else {
                unicode::append_lower(norm, composed[i]);
            }
        }
        for (const Segment& seg : impl_->splitter.split(norm, /*normalized_pass=*/true)) {
            if (seg.id >= 0) ids.push_back(seg.id);
            else impl_->encode_normalized(std::u32string_view(norm).substr(seg.begin, seg.end - seg.begin), ids);
        }
    }
    return ids;
}

Tokenized ClipTokenizer::encode_all(std::string_view text) const {
    Tokenized out;
    std::vector<int32_t> content = tokenize(text);
    out.ids.reserve(content.size() + 2);
    out.ids.push_back(impl_->bos);
    out.ids.insert(out.ids.end(), content.begin(), content.end());
    out.ids.push_back(impl_->eos);
    return out;
}

Tokenized ClipTokenizer::encode(std::string_view text, bool pad) const {
    Tokenized out;
    std::vector<int32_t> content = tokenize(text);
    const size_t limit = static_cast<size_t>(impl_->max_length - 2);  // room for bos and eos
    if (content.size() > limit) {
        out.dropped = static_cast<int64_t>(content.size() - limit);
        log_warn("CLIP tokenizer ", impl_->dir, ": the prompt has ", content.size(), " tokens; ", out.dropped,
                 " past the first ", limit, " were dropped (CLIP reads at most ", impl_->max_length,
                 " tokens including bos and eos)");
        content.resize(limit);
    }
    out.ids.reserve(impl_->max_length);
    out.ids.push_back(impl_->bos);
    out.ids.insert(out.ids.end(), content.begin(), content.end());
    out.ids.push_back(impl_->eos);
    if (pad) out.ids.resize(impl_->max_length, impl_->pad);
    return out;
}

int ClipTokenizer::max_length() const { return impl_->max_length; }
int32_t ClipTokenizer::bos_id() const { return impl_->bos; }
int32_t ClipTokenizer::eos_id() const { return impl_->eos; }
int32_t ClipTokenizer::pad_id() const { return impl_->pad; }
int32_t ClipTokenizer::unk_id() const { return impl_->unk; }
int64_t ClipTokenizer::vocab_size() const { return impl_->bpe.vocab_size; }

}  // namespace sd3
