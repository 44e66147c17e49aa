// SD3 prompt encoding (diffusers pipeline_stable_diffusion_3.py encode_prompt, research/sd3-architecture.md §8.1)
// and TextEncoders, which loads and releases the three encoders one at a time.
#include "infer/prompt_encoding.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/check.h"
#include "core/log.h"
#include "ops/device.h"
#include "ops/ops.h"

namespace sd3 {

const char* text_encoder_name(TextEncoderId id) {
    switch (id) {
        case TextEncoderId::CLIP_L: return "CLIP-L (text_encoder)";
        case TextEncoderId::CLIP_G: return "CLIP-G (text_encoder_2)";
        case TextEncoderId::T5: return "T5 (text_encoder_3)";
    }
    return "?";
}

Result<PromptEmbeds> combine_prompt_embeds(const ClipEmbeds& l, const ClipEmbeds& g, const Tensor& t5,
                                           int64_t t5_width, int64_t t5_length) {
    SD3_ASSERT(l.hidden.dim() == 3 && g.hidden.dim() == 3 && l.hidden.size(0) == g.hidden.size(0) &&
                   l.hidden.size(1) == g.hidden.size(1),
               "CLIP-L ", l.hidden.describe(), " and CLIP-G ", g.hidden.describe(), " do not pair up");
    const int64_t B = l.hidden.size(0), T = l.hidden.size(1);
    const int64_t width = t5.defined() ? t5.size(2) : t5_width;
    const int64_t length = t5.defined() ? t5.size(1) : t5_length;
    if (t5.defined() && t5.size(0) != B)
        return make_error(ErrorCode::INVALID_ARGUMENT, "T5 output ", t5.describe(), " has another batch than CLIP's ", B);
    const int64_t dl = l.hidden.size(2), dg = g.hidden.size(2);
    if (dl + dg > width)
        return make_error(ErrorCode::INVALID_ARGUMENT, "CLIP widths ", dl, " + ", dg, " exceed T5's width ", width,
                          ": these text encoders do not belong to one SD3 model");
    PromptEmbeds out;
    // clip = pad(cat([l, g], -1), (0, width - dl - dg)); prompt_embeds = cat([clip, t5], -2)
    out.prompt_embeds = Tensor::zeros({B, T + length, width});  // [B, 77 + L, D_t5]
    out.prompt_embeds.slice(1, 0, T).slice(2, 0, dl).copy_from(l.hidden);
    out.prompt_embeds.slice(1, 0, T).slice(2, dl, dl + dg).copy_from(g.hidden);
    if (t5.defined()) out.prompt_embeds.slice(1, T, T + length).copy_from(t5);
    out.pooled = ops::cat({l.pooled, g.pooled}, 1);  // [B, P_l + P_g]
    return out;
}

Result<TextEncoders> TextEncoders::create(const Component& clip_l, const Component& clip_g, const Component& t5,
                                          const TextEncoderOptions& options) {
    TextEncoders te;
    te.comp_[0] = clip_l;
    te.comp_[1] = clip_g;
    te.comp_[2] = t5;
    te.options_ = options;
    for (const Component* c : {&clip_l, &clip_g, &t5})
        if (c->weights == nullptr)
            return make_error(ErrorCode::NOT_FOUND, "the model has no weights for ", c->name,
                              " (SD3 needs all three text encoders; point --model at a complete SD3 folder)");
    SD3_ASSIGN_OR_RETURN(te.cfg_l_, ClipTextConfig::from_json(clip_l.config, clip_l.config_path));
    SD3_ASSIGN_OR_RETURN(te.cfg_g_, ClipTextConfig::from_json(clip_g.config, clip_g.config_path));
    SD3_ASSIGN_OR_RETURN(te.cfg_t5_, T5Config::from_json(t5.config, t5.config_path));
    if (options.max_sequence_length < 1 || options.max_sequence_length > 512)
        return make_error(ErrorCode::INVALID_ARGUMENT, "max_sequence_length ", options.max_sequence_length,
                          " is outside 1..512 (SD3 uses 256 for generation, 77 in training)");
    return te;
}

Result<TextEncoders> TextEncoders::open(const ModelFolder& model, const TextEncoderOptions& options) {
    SD3_ASSIGN_OR_RETURN(const Component* l, model.require("text_encoder"));
    SD3_ASSIGN_OR_RETURN(const Component* g, model.require("text_encoder_2"));
    SD3_ASSIGN_OR_RETURN(const Component* t5, model.require("text_encoder_3"));
    return create(*l, *g, *t5, options);
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Status TextEncoders::load(TextEncoderId id) {
    if (is_loaded(id)) return {};
    const auto t0 = std::chrono::steady_clock::now();
    SD3_TRY(load_now(id));
    synchronize(options_.placement.device);
    const double seconds = seconds_since(t0);
    timings_.load_seconds += seconds;
    timings_.load_seconds_by_encoder[static_cast<int>(id)] += seconds;
    return {};
}

Status TextEncoders::load_now(TextEncoderId id) {
    const Component& c = comp_[static_cast<int>(id)];
    switch (id) {
        case TextEncoderId::CLIP_L: {
            auto m = ClipTextModel::load(cfg_l_, c.weights);
            if (!m.ok()) return m.status().with_context(str_cat("loading ", text_encoder_name(id)));
            clip_l_.emplace(std::move(m).value());
            SD3_TRY(clip_l_->to(options_.placement));
            log_info("loaded ", text_encoder_name(id), ": ", clip_l_->weight_bytes() >> 20, " MiB");
            break;
        }
        case TextEncoderId::CLIP_G: {
            auto m = ClipTextModel::load(cfg_g_, c.weights);
            if (!m.ok()) return m.status().with_context(str_cat("loading ", text_encoder_name(id)));
            clip_g_.emplace(std::move(m).value());
            SD3_TRY(clip_g_->to(options_.placement));
            log_info("loaded ", text_encoder_name(id), ": ", clip_g_->weight_bytes() >> 20, " MiB");
            break;
        }
        case TextEncoderId::T5: {
            auto m = T5Encoder::load(cfg_t5_, c.weights, options_.t5);
            if (!m.ok()) return m.status().with_context(str_cat("loading ", text_encoder_name(id)));
            t5_.emplace(std::move(m).value());
            const nn::Placement& p = options_.placement;
            // On the CPU nothing streams; on a GPU the budget is what is available, less 1 GiB for activations,
            // unless the user gave one.
            size_t budget = SIZE_MAX;
            if (!p.on_cpu()) {  // never more than is free, less 1 GiB for the activations
                const size_t available = memory_stats(p.device).available(), reserve = size_t{1} << 30;
                const size_t fits = available > reserve ? available - reserve : 0;
                budget = options_.t5_max_resident_bytes == 0 ? fits : std::min(options_.t5_max_resident_bytes, fits);
            }
            SD3_TRY(t5_->to(nn::overflow_safe(p), budget));  // T5-XXL's feed-forward overflows fp16
            log_info("loaded ", text_encoder_name(id), " with ", cpu::quant_format_name(options_.t5.format),
                     " weights: ", t5_->weight_bytes() >> 20, " MiB",
                     p.on_cpu() ? std::string()
                                : str_cat(", ", t5_->resident_blocks(), " of ", cfg_t5_.num_layers,
                                          " blocks resident on ", p.device.str()));
            break;
        }
    }
    return {};
}

void TextEncoders::release(TextEncoderId id) {
    switch (id) {
        case TextEncoderId::CLIP_L: clip_l_.reset(); break;
        case TextEncoderId::CLIP_G: clip_g_.reset(); break;
        case TextEncoderId::T5: t5_.reset(); break;
    }
}

bool TextEncoders::is_loaded(TextEncoderId id) const {
    switch (id) {
        case TextEncoderId::CLIP_L: return clip_l_.has_value();
        case TextEncoderId::CLIP_G: return clip_g_.has_value();
        case TextEncoderId::T5: return t5_.has_value();
    }
    return false;
}

Result<ClipEmbeds> TextEncoders::encode_clip(TextEncoderId id, const Tensor& ids, int clip_skip) const {
    SD3_ASSERT(id != TextEncoderId::T5, "encode_clip is for the CLIP encoders");
    const std::optional<ClipTextModel>& m = id == TextEncoderId::CLIP_L ? clip_l_ : clip_g_;
    if (!m) return make_error(ErrorCode::INVALID_ARGUMENT, text_encoder_name(id), " is not loaded (call load first)");
    SD3_ASSIGN_OR_RETURN(ClipTextOutput out, m->forward(ids, clip_skip));
    return ClipEmbeds{out.penultimate, out.pooled};
}

Result<Tensor> TextEncoders::encode_t5(const Tensor& ids) const {
    if (!t5_) return make_error(ErrorCode::INVALID_ARGUMENT, text_encoder_name(TextEncoderId::T5), " is not loaded (call load first)");
    return t5_->forward(ids);
}

namespace {

// Ids of `which` encoder for prompts [i0, i1) stacked on the batch axis, when they have one length; else undefined.
Tensor stack_ids(const std::vector<PromptTokens>& prompts, size_t i0, size_t i1, Tensor PromptTokens::*which) {
    std::vector<Tensor> parts;
    for (size_t i = i0; i < i1; ++i) {
        const Tensor& t = prompts[i].*which;
        if (t.dim() != 2 || (!parts.empty() && t.size(1) != parts[0].size(1)) || t.dtype() != (prompts[i0].*which).dtype())
            return Tensor();
        parts.push_back(t);
    }
    return parts.size() == 1 ? parts[0] : ops::cat(parts, 0);
}

}  // namespace

Status TextEncoders::run_t5_all(const std::vector<PromptTokens>& prompts, size_t chunk, std::vector<Tensor>& out) const {
    if (!t5_) return make_error(ErrorCode::INVALID_ARGUMENT, text_encoder_name(TextEncoderId::T5), " is not loaded (call load first)");
    // Batches of `chunk` prompts (one prompt per batch where lengths differ), all through one pass over the blocks.
    std::vector<Tensor> batches;
    std::vector<std::pair<size_t, size_t>> spans;
    for (size_t i0 = 0; i0 < prompts.size(); i0 += chunk) {
        const size_t i1 = std::min(prompts.size(), i0 + chunk);
        const Tensor ids = stack_ids(prompts, i0, i1, &PromptTokens::t5);
        if (ids.defined() && ids.size(0) == static_cast<int64_t>(i1 - i0)) {
            batches.push_back(ids);
            spans.emplace_back(i0, i1);
        } else {
            for (size_t i = i0; i < i1; ++i) {
                batches.push_back(prompts[i].t5);
                spans.emplace_back(i, i + 1);
            }
        }
    }
    SD3_ASSIGN_OR_RETURN(std::vector<Tensor> hs, t5_->forward_batches(batches));  // each [b, L, D_t5]
    for (size_t k = 0; k < batches.size(); ++k)
        for (size_t i = spans[k].first; i < spans[k].second; ++i)
            out[i] = hs[k].slice(0, static_cast<int64_t>(i - spans[k].first), static_cast<int64_t>(i - spans[k].first + 1));
    return {};
}

Result<std::vector<PromptEmbeds>> TextEncoders::encode_tokens(const std::vector<PromptTokens>& prompts,
                                                              bool with_clip_skip) {
    const size_t n = prompts.size();
    std::vector<ClipEmbeds> l(n), g(n);
    std::vector<Tensor> t(n);
    const int skip = with_clip_skip ? options_.clip_skip : 0;
    const size_t chunk = static_cast<size_t>(std::max(1, options_.batch_size));
    // Runs CLIP encoder `id` (its ids in `which`) on prompts [i0, i1) as one batch and stores each prompt's rows.
    auto run = [&](TextEncoderId id, Tensor PromptTokens::*which, size_t i0, size_t i1, const Tensor& ids) -> Status {
        std::vector<int64_t> rows;  // first batch row of each prompt
        int64_t at = 0;
        for (size_t i = i0; i < i1; ++i) {
            rows.push_back(at);
            at += (prompts[i].*which).size(0);
        }
        rows.push_back(at);
        SD3_ASSIGN_OR_RETURN(ClipEmbeds e, encode_clip(id, ids, skip));
        for (size_t i = i0; i < i1; ++i) {
            ClipEmbeds& dst = id == TextEncoderId::CLIP_L ? l[i] : g[i];
            dst.hidden = e.hidden.slice(0, rows[i - i0], rows[i - i0 + 1]);
            dst.pooled = e.pooled.slice(0, rows[i - i0], rows[i - i0 + 1]);
        }
        return {};
    };
    // One encoder at a time; an encoder this call loads is released once every prompt has gone through it.
    for (TextEncoderId id : {TextEncoderId::CLIP_L, TextEncoderId::CLIP_G, TextEncoderId::T5}) {
        const bool was_loaded = is_loaded(id);
        SD3_TRY(load(id));
        const auto t0 = std::chrono::steady_clock::now();
        if (id == TextEncoderId::T5) {
            SD3_TRY(run_t5_all(prompts, chunk, t));
        } else {
            Tensor PromptTokens::*which = id == TextEncoderId::CLIP_L ? &PromptTokens::clip_l : &PromptTokens::clip_g;
            for (size_t i0 = 0; i0 < n; i0 += chunk) {
                const size_t i1 = std::min(n, i0 + chunk);
                const Tensor ids = stack_ids(prompts, i0, i1, which);
                if (ids.defined()) {
                    SD3_TRY(run(id, which, i0, i1, ids));
                } else {  // lengths differ: one prompt at a time
                    for (size_t i = i0; i < i1; ++i) SD3_TRY(run(id, which, i, i + 1, prompts[i].*which));
                }
            }
        }
        const double seconds = seconds_since(t0);  // outputs are on the CPU: the device is done
        timings_.run_seconds += seconds;
        timings_.run_seconds_by_encoder[static_cast<int>(id)] += seconds;
        if (!was_loaded) release(id);
    }
    std::vector<PromptEmbeds> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        SD3_ASSIGN_OR_RETURN(PromptEmbeds e, combine_prompt_embeds(l[i], g[i], t[i]));
        out.push_back(std::move(e));
    }
    return out;
}

Result<PromptTokenizer> PromptTokenizer::load(const std::string& clip_l_dir, const std::string& clip_g_dir,
                                              const std::string& t5_dir) {
    PromptTokenizer t;
    SD3_ASSIGN_OR_RETURN(ClipTokenizer l, ClipTokenizer::load(clip_l_dir));
    SD3_ASSIGN_OR_RETURN(ClipTokenizer g, ClipTokenizer::load(clip_g_dir));
    SD3_ASSIGN_OR_RETURN(T5Tokenizer t5, T5Tokenizer::load(t5_dir));
    t.clip_l_ = std::make_shared<const ClipTokenizer>(std::move(l));
    t.clip_g_ = std::make_shared<const ClipTokenizer>(std::move(g));
    t.t5_ = std::make_shared<const T5Tokenizer>(std::move(t5));
    return t;
}

Result<PromptTokenizer> PromptTokenizer::open(const ModelFolder& model) {
    auto dir_of = [&](const char* name) -> Result<std::string> {
        SD3_ASSIGN_OR_RETURN(const Component* c, model.require(name));
        if (c->dir.empty()) return make_error(ErrorCode::NOT_FOUND, "the model's ", name, " has no folder");
        return c->dir;
    };
    SD3_ASSIGN_OR_RETURN(std::string dl, dir_of("tokenizer"));
    SD3_ASSIGN_OR_RETURN(std::string dg, dir_of("tokenizer_2"));
    SD3_ASSIGN_OR_RETURN(std::string dt, dir_of("tokenizer_3"));
    return load(dl, dg, dt);
}

namespace {
Tensor ids_tensor(const std::vector<int32_t>& ids) {
    Tensor t = Tensor::empty({1, static_cast<int64_t>(ids.size())}, DType::I32);  // [1, T]
    std::memcpy(t.raw(), ids.data(), ids.size() * sizeof(int32_t));
    return t;
}
}  // namespace

PromptTokens PromptTokenizer::tokenize(std::string_view prompt, int max_sequence_length) const {
    // Truncation is reported by the tokenizers themselves (log_warn), as diffusers warns about it.
    return {ids_tensor(clip_l_->encode(prompt, /*pad=*/true).ids), ids_tensor(clip_g_->encode(prompt, true).ids),
            ids_tensor(t5_->encode(prompt, max_sequence_length, true).ids)};
}

Result<std::vector<PromptEmbeds>> TextEncoders::encode_prompts(const PromptTokenizer& tokenizer,
                                                               const std::vector<std::string>& prompts,
                                                               bool with_clip_skip) {
    std::vector<PromptTokens> tokens;
    tokens.reserve(prompts.size());
    for (const std::string& p : prompts) tokens.push_back(tokenizer.tokenize(p, options_.max_sequence_length));
    return encode_tokens(tokens, with_clip_skip);
}

}  // namespace sd3
