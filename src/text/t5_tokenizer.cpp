// T5 tokenizer over libsentencepiece (see t5_tokenizer.h). Semantics: transformers 5 models/t5/tokenization_t5.py
// (Precompiled normalizer, WhitespaceSplit + Metaspace(prepend always), Unigram, TemplateProcessing "$A </s>").
// SentencePiece's own pipeline (charsmap normalization, whitespace collapsing, dummy "▁" prefix, Viterbi) gives
// the same ids per text segment once the added tokens are split out and White_Space characters are spaces.
#include "text/t5_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <unordered_map>

#include "core/check.h"
#include "core/log.h"
#include "text/added_tokens.h"
#include "text/unicode.h"

namespace sd3 {

struct T5Tokenizer::Impl {
    std::string dir;
    sentencepiece::SentencePieceProcessor sp;
    text::AddedTokenSplitter splitter;
    int32_t eos = -1, pad = -1, unk = -1;
    int64_t vocab_size = 0;
    std::vector<char32_t> spaces;  // White_Space characters the charsmap does not delete: each acts as a space
};

T5Tokenizer::T5Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
T5Tokenizer::T5Tokenizer(T5Tokenizer&&) noexcept = default;
T5Tokenizer& T5Tokenizer::operator=(T5Tokenizer&&) noexcept = default;
T5Tokenizer::~T5Tokenizer() = default;

Result<T5Tokenizer> T5Tokenizer::load(const std::string& dir) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) return make_error(ErrorCode::NOT_FOUND, dir, ": no such tokenizer folder");
    const std::string model_path = (fs::path(dir) / "spiece.model").string();
    if (!fs::exists(model_path))
        return make_error(ErrorCode::NOT_FOUND, model_path, ": missing (a T5 tokenizer folder needs spiece.model)");
    auto impl = std::make_unique<Impl>();
    impl->dir = dir;
    const auto st = impl->sp.Load(model_path);
    if (!st.ok() || impl->sp.GetPieceSize() <= 0)
        return make_error(ErrorCode::CORRUPT_FILE, model_path, ": not a valid SentencePiece model (", st.ToString(), ")");
    SD3_ASSIGN_OR_RETURN(text::TokenizerFolderConfig cfg, text::read_tokenizer_folder(dir));
    const int32_t pieces = impl->sp.GetPieceSize();

    // Token ids: tokenizer.json / added_tokens_decoder first, then spiece.model's pieces.
    std::unordered_map<std::string, int32_t> added_ids;
    for (const auto& t : cfg.added) added_ids.emplace(t.content, t.id);
    auto resolve = [&](const std::string& token) -> Result<int32_t> {
        if (auto it = added_ids.find(token); it != added_ids.end()) return it->second;
        const int id = impl->sp.PieceToId(token);
        if (id >= 0 && id < pieces && impl->sp.IdToPiece(id) == token) return static_cast<int32_t>(id);
        return make_error(ErrorCode::CORRUPT_FILE, dir, ": the special token \"", token,
                          "\" is neither in spiece.model nor an added token of tokenizer.json/tokenizer_config.json");
    };
    const std::string eos = cfg.token_or("eos_token", "</s>");
    const std::string pad = cfg.token_or("pad_token", "<pad>");
    const std::string unk = cfg.token_or("unk_token", "<unk>");
    SD3_ASSIGN_OR_RETURN(impl->eos, resolve(eos));
    SD3_ASSIGN_OR_RETURN(impl->pad, resolve(pad));
    SD3_ASSIGN_OR_RETURN(impl->unk, resolve(unk));

    // The sentinels <extra_id_0..N-1> follow the pieces in reverse order (<extra_id_0> is the last id), as
    // T5Tokenizer appends them when no file lists them (tokenization_t5.py; SD3: 32099..32000).
    const int64_t extra = cfg.extra_ids.value_or(100);
    if (extra < 0 || extra > 100000)
        return make_error(ErrorCode::CORRUPT_FILE, dir, "/tokenizer_config.json: extra_ids ", extra, " is out of range");
    for (int64_t n = 0; n < extra; ++n) {
        const std::string name = str_cat("<extra_id_", n, ">");
        if (!added_ids.count(name)) {
            added_ids.emplace(name, static_cast<int32_t>(pieces + extra - 1 - n));
            cfg.added.push_back({name, static_cast<int32_t>(pieces + extra - 1 - n), false, false, false});
        }
    }
    // Every added token splits the raw text (SentencePiece normalizes inside, so all are matched unnormalized).
    for (auto t : cfg.added) {
        t.normalized = false;
        impl->splitter.add(t);
    }
    std::vector<std::string> specials = {eos, pad, unk};
    specials.insert(specials.end(), cfg.extra_special.begin(), cfg.extra_special.end());
    for (const std::string& s : specials) {
        SD3_ASSIGN_OR_RETURN(int32_t id, resolve(s));
        impl->splitter.add({s, id, false, false, false});
    }
    // The reference splits words on White_Space *after* the charsmap, which maps most of them to " " but deletes
    // some (U+000B in nmt_nfkc) and keeps others (U+0085, then a word break). Ask the model which it deletes.
    for (char32_t w : {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
                       0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}) {
        SD3_ASSERT(unicode::is_white_space(w), "not White_Space: ", static_cast<uint32_t>(w));
        std::string probe = "x";
        unicode::append_utf8(probe, w);
        probe += "y";
        if (impl->sp.EncodeAsIds(probe) != impl->sp.EncodeAsIds("xy")) impl->spaces.push_back(w);
    }
    impl->vocab_size = pieces;
    for (const auto& t : cfg.added) impl->vocab_size = std::max<int64_t>(impl->vocab_size, t.id + 1);
    return T5Tokenizer(std::move(impl));
}

Tokenized T5Tokenizer::encode(std::string_view text, int max_length, bool pad) const {
    Tokenized out;
    std::vector<int32_t> ids;
    const std::u32string cps = unicode::decode_utf8(text);  // invalid UTF-8 -> U+FFFD
    std::string segment;
    std::vector<int> piece_ids;
    for (const text::Segment& seg : impl_->splitter.split(cps, /*normalized_pass=*/false)) {
        if (seg.id >= 0) {
            ids.push_back(seg.id);
            continue;
        }
        // The reference splits words on White_Space after normalization; SentencePiece only knows ' '.
        segment.clear();
        for (size_t i = seg.begin; i < seg.end; ++i) {
            const char32_t c = cps[i];
            const bool space = unicode::is_white_space(c) &&
                               std::find(impl_->spaces.begin(), impl_->spaces.end(), c) != impl_->spaces.end();
            unicode::append_utf8(segment, space ? U' ' : c);
        }
        piece_ids.clear();
        const auto st = impl_->sp.Encode(segment, &piece_ids);
        SD3_ASSERT(st.ok(), "SentencePiece failed to encode valid UTF-8: ", st.ToString());
        ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    if (max_length > 0 && ids.size() + 1 > static_cast<size_t>(max_length)) {
        const size_t limit = static_cast<size_t>(max_length - 1);  // room for eos
        out.dropped = static_cast<int64_t>(ids.size() - limit);
        log_warn("T5 tokenizer ", impl_->dir, ": the prompt has ", ids.size(), " tokens; ", out.dropped,
                 " past the first ", limit, " were dropped (max_sequence_length ", max_length, " includes eos)");
        ids.resize(limit);
    }
    out.ids = std::move(ids);
    out.ids.push_back(impl_->eos);
    if (pad && max_length > 0) out.ids.resize(max_length, impl_->pad);
    return out;
}

int32_t T5Tokenizer::eos_id() const { return impl_->eos; }
int32_t T5Tokenizer::pad_id() const { return impl_->pad; }
int32_t T5Tokenizer::unk_id() const { return impl_->unk; }
int64_t T5Tokenizer::vocab_size() const { return impl_->vocab_size; }

}  // namespace sd3
