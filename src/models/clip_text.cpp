// CLIP text encoder: config, weight loading and forward (transformers CLIPTextModelWithProjection, read through
// research/sd3-architecture.md §5.1-5.3; the weight names are §3.4's HF CLIP names).
#include "models/clip_text.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/json_file.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"
#include "ops/ops.h"

namespace sd3 {

namespace {

Result<cpu::Activation> clip_activation(const std::string& name, const std::string& file) {
    if (name == "quick_gelu") return cpu::Activation::QUICK_GELU;
    if (name == "gelu") return cpu::Activation::GELU_ERF;  // transformers' "gelu" is the exact erf form
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return cpu::Activation::GELU_TANH;
    return make_error(ErrorCode::UNSUPPORTED, file, ": hidden_act \"", name,
                      "\" is not supported (expected quick_gelu or gelu, as CLIP-L and CLIP-G use)");
}

int64_t id_at(const Tensor& ids, int64_t b, int64_t t) {
    const int64_t i = b * ids.size(1) + t;
    return ids.dtype() == DType::I64 ? ids.data<int64_t>()[i] : static_cast<int64_t>(ids.data<int32_t>()[i]);
}

}  // namespace

Result<ClipTextConfig> ClipTextConfig::from_json(const nlohmann::json& j, const std::string& path) {
    ClipTextConfig c;
    SD3_ASSIGN_OR_RETURN(c.vocab_size, json_field_or<int64_t>(j, "vocab_size", 49408, path));
    SD3_ASSIGN_OR_RETURN(c.hidden_size, json_field_or<int64_t>(j, "hidden_size", 512, path));
    SD3_ASSIGN_OR_RETURN(c.intermediate_size, json_field_or<int64_t>(j, "intermediate_size", 2048, path));
    SD3_ASSIGN_OR_RETURN(c.num_layers, json_field_or<int64_t>(j, "num_hidden_layers", 12, path));
    SD3_ASSIGN_OR_RETURN(c.num_heads, json_field_or<int64_t>(j, "num_attention_heads", 8, path));
    SD3_ASSIGN_OR_RETURN(c.max_positions, json_field_or<int64_t>(j, "max_position_embeddings", 77, path));
    SD3_ASSIGN_OR_RETURN(c.projection_dim, json_field_or<int64_t>(j, "projection_dim", 512, path));
    SD3_ASSIGN_OR_RETURN(double eps, json_field_or<double>(j, "layer_norm_eps", 1e-5, path));
    c.layer_norm_eps = static_cast<float>(eps);
    SD3_ASSIGN_OR_RETURN(std::string act, json_field_or<std::string>(j, "hidden_act", "quick_gelu", path));
    SD3_ASSIGN_OR_RETURN(c.act, clip_activation(act, path));
    SD3_ASSIGN_OR_RETURN(c.eos_token_id, json_field_or<int64_t>(j, "eos_token_id", 2, path));
    if (c.hidden_size <= 0 || c.num_heads <= 0 || c.hidden_size % c.num_heads != 0 || c.num_layers < 1 ||
        c.intermediate_size <= 0 || c.vocab_size <= 0 || c.max_positions <= 0 || c.projection_dim <= 0)
        return make_error(ErrorCode::CORRUPT_FILE, path, ": inconsistent CLIP text config (hidden_size ", c.hidden_size,
                          ", num_attention_heads ", c.num_heads, ", num_hidden_layers ", c.num_layers, ")");
    return c;
}

Result<ClipTextModel> ClipTextModel::load(const ClipTextConfig& c, std::shared_ptr<const TensorSource> source) {
    WeightLoader L(std::move(source));
    ClipTextModel m;
    m.config_ = c;
    ClipTextWeights& w = m.weights_;
    const int64_t D = c.hidden_size, I = c.intermediate_size;
    const std::string e = "text_model.embeddings.";
    SD3_ASSIGN_OR_RETURN(w.token_embedding, L.take(e + "token_embedding.weight", {c.vocab_size, D}));
    SD3_ASSIGN_OR_RETURN(w.position_embedding, L.take(e + "position_embedding.weight", {c.max_positions, D}));
    // Older transformers saved the position_ids buffer (0..76); it is recomputed, never read.
    if (L.has(e + "position_ids")) L.ignore(e + "position_ids");
    for (int64_t l = 0; l < c.num_layers; ++l) {
        const std::string p = str_cat("text_model.encoder.layers.", l, ".");
        ClipLayerWeights lw;
        SD3_ASSIGN_OR_RETURN(lw.ln1_w, L.take(p + "layer_norm1.weight", {D}));
        SD3_ASSIGN_OR_RETURN(lw.ln1_b, L.take(p + "layer_norm1.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.q_w, L.take(p + "self_attn.q_proj.weight", {D, D}));
        SD3_ASSIGN_OR_RETURN(lw.q_b, L.take(p + "self_attn.q_proj.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.k_w, L.take(p + "self_attn.k_proj.weight", {D, D}));
        SD3_ASSIGN_OR_RETURN(lw.k_b, L.take(p + "self_attn.k_proj.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.v_w, L.take(p + "self_attn.v_proj.weight", {D, D}));
        SD3_ASSIGN_OR_RETURN(lw.v_b, L.take(p + "self_attn.v_proj.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.out_w, L.take(p + "self_attn.out_proj.weight", {D, D}));
        SD3_ASSIGN_OR_RETURN(lw.out_b, L.take(p + "self_attn.out_proj.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.ln2_w, L.take(p + "layer_norm2.weight", {D}));
        SD3_ASSIGN_OR_RETURN(lw.ln2_b, L.take(p + "layer_norm2.bias", {D}));
        SD3_ASSIGN_OR_RETURN(lw.fc1_w, L.take(p + "mlp.fc1.weight", {I, D}));
        SD3_ASSIGN_OR_RETURN(lw.fc1_b, L.take(p + "mlp.fc1.bias", {I}));
        SD3_ASSIGN_OR_RETURN(lw.fc2_w, L.take(p + "mlp.fc2.weight", {D, I}));
        SD3_ASSIGN_OR_RETURN(lw.fc2_b, L.take(p + "mlp.fc2.bias", {D}));
        w.layers.push_back(std::move(lw));
    }
    SD3_ASSIGN_OR_RETURN(w.final_ln_w, L.take("text_model.final_layer_norm.weight", {D}));
    SD3_ASSIGN_OR_RETURN(w.final_ln_b, L.take("text_model.final_layer_norm.bias", {D}));
    SD3_ASSIGN_OR_RETURN(w.text_projection, L.take("text_projection.weight", {c.projection_dim, D}));
    SD3_TRY(L.finish());
    return m;
}

size_t ClipTextModel::weight_bytes() const {
    size_t n = weights_.token_embedding.nbytes() + weights_.position_embedding.nbytes() +
               weights_.final_ln_w.nbytes() + weights_.final_ln_b.nbytes() + weights_.text_projection.nbytes();
    for (const ClipLayerWeights& l : weights_.layers)
        for (const Tensor* t : {&l.ln1_w, &l.ln1_b, &l.q_w, &l.k_w, &l.v_w, &l.out_w, &l.q_b, &l.k_b, &l.v_b, &l.out_b,
                                &l.ln2_w, &l.ln2_b, &l.fc1_w, &l.fc1_b, &l.fc2_w, &l.fc2_b})
            n += t->nbytes();
    return n;
}

Result<Tensor> embedding_lookup(const Tensor& table, const Tensor& ids, const std::string& what) {
    SD3_ASSERT(table.dim() == 2 && table.is_contiguous() && dtype_is_float(table.dtype()), "embedding table ",
               table.describe());
    if (ids.dim() != 2 || (ids.dtype() != DType::I32 && ids.dtype() != DType::I64) || !ids.is_contiguous())
        return make_error(ErrorCode::INVALID_ARGUMENT, what, ": token ids must be a contiguous int32/int64 [batch, tokens] tensor, got ",
                          ids.describe());
    const int64_t B = ids.size(0), T = ids.size(1), V = table.size(0), D = table.size(1);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t) {
            const int64_t id = id_at(ids, b, t);
            if (id < 0 || id >= V)
                return make_error(ErrorCode::INVALID_ARGUMENT, what, ": token id ", id, " at [", b, ", ", t,
                                  "] is outside the vocabulary of ", V, " (wrong tokenizer for this model?)");
        }
    Tensor out = Tensor::empty({B, T, D}, DType::F32);  // [B, T, D]
    const size_t row_bytes = static_cast<size_t>(D) * dtype_size(table.dtype());
    // Rows in parallel: a T5 batch of 8 x 256 tokens gathers 34 MB of float32 rows.
#pragma omp parallel for if (B * T * D > (1 << 16))
    for (int64_t r = 0; r < B * T; ++r)
        convert_elements(static_cast<const char*>(table.raw()) + id_at(ids, r / T, r % T) * row_bytes, table.dtype(),
                         out.data<float>() + r * D, DType::F32, D);
    return out;
}

std::vector<int64_t> clip_pool_positions(const Tensor& ids, int64_t eos_token_id) {
    const int64_t B = ids.size(0), T = ids.size(1);
    std::vector<int64_t> pos(static_cast<size_t>(B), 0);
    for (int64_t b = 0; b < B; ++b) {
        if (eos_token_id == 2) {  // argmax: the first position of the largest id
            int64_t best = 0;
            for (int64_t t = 1; t < T; ++t)
                if (id_at(ids, b, t) > id_at(ids, b, best)) best = t;
            pos[b] = best;
        } else {
            for (int64_t t = 0; t < T; ++t)
                if (id_at(ids, b, t) == eos_token_id) {
                    pos[b] = t;
                    break;
                }
        }
    }
    return pos;
}

Result<ClipTextOutput> ClipTextModel::forward(const Tensor& ids, int clip_skip) const {
    const ClipTextConfig& c = config_;
    const ClipTextWeights& w = weights_;
    if (ids.dim() != 2 || ids.size(1) > c.max_positions || ids.size(1) < 1)
        return make_error(ErrorCode::INVALID_ARGUMENT, "CLIP text encoder: ids must be [batch, 1..", c.max_positions,
                          "], got ", ids.describe());
    if (clip_skip < 0 || clip_skip + 2 > c.num_layers + 1)
        return make_error(ErrorCode::INVALID_ARGUMENT, "CLIP text encoder: clip_skip ", clip_skip, " with only ",
                          c.num_layers, " layers");
    const int64_t B = ids.size(0), T = ids.size(1), D = c.hidden_size;

    // Embeddings: token rows plus the first T position rows.
    SD3_ASSIGN_OR_RETURN(Tensor x, embedding_lookup(w.token_embedding, ids, "CLIP text encoder"));  // [B, T, D]
    {
        float* px = x.data<float>();
        const float* pp = w.position_embedding.data<float>();
        for (int64_t b = 0; b < B; ++b)
            for (int64_t i = 0; i < T * D; ++i) px[b * T * D + i] += pp[i];
    }

    x = nn::to_placement(x, placement_);

    // hidden_states = [embeddings, out_0, ..., out_{N-1}]; SD3 keeps hidden_states[-(clip_skip + 2)].
    const int64_t keep_index = c.num_layers + 1 - (clip_skip + 2);
    ClipTextOutput out;
    if (keep_index == 0) out.penultimate = ops::copy(x);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim()));
    for (int64_t l = 0; l < c.num_layers; ++l) {
        const ClipLayerWeights& lw = w.layers[l];
        Tensor h = ops::layer_norm(x, lw.ln1_w, lw.ln1_b, c.layer_norm_eps);  // [B, T, D]
        Tensor q = ops::linear(h, lw.q_w, lw.q_b);                            // [B, T, D]
        Tensor k = ops::linear(h, lw.k_w, lw.k_b);                            // [B, T, D]
        Tensor v = ops::linear(h, lw.v_w, lw.v_b);                            // [B, T, D]
        Tensor a = ops::attention(q, k, v, c.num_heads, scale, /*causal=*/true);  // [B, T, D]
        x = ops::add(x, ops::linear(a, lw.out_w, lw.out_b));
        h = ops::layer_norm(x, lw.ln2_w, lw.ln2_b, c.layer_norm_eps);                         // [B, T, D]
        Tensor f = ops::activation(ops::linear(h, lw.fc1_w, lw.fc1_b), c.act);                // [B, T, I]
        x = ops::add(x, ops::linear(f, lw.fc2_w, lw.fc2_b));                                  // [B, T, D]
        if (l + 1 == keep_index) out.penultimate = x;
    }
    out.last_hidden = host_f32(ops::layer_norm(x, w.final_ln_w, w.final_ln_b, c.layer_norm_eps));  // [B, T, D]
    out.penultimate = host_f32(out.penultimate);

    // Pooled: the final-normed state at the EOS position, through text_projection (no bias).
    const std::vector<int64_t> pos = clip_pool_positions(ids, c.eos_token_id);
    Tensor pooled_raw = Tensor::empty({B, D}, DType::F32);  // [B, D]
    for (int64_t b = 0; b < B; ++b) pooled_raw.select(0, b).copy_from(out.last_hidden.select(0, b).select(0, pos[b]));
    out.pooled = ops::linear(pooled_raw, w.text_projection);  // [B, proj]
    return out;
}

Status ClipTextModel::to(const nn::Placement& placement) {
    if (placement.on_cpu() && placement_.on_cpu()) return {};
    nn::WeightPlacer placer;
    for (ClipLayerWeights& l : weights_.layers)
        for (Tensor* t : {&l.ln1_w, &l.ln1_b, &l.q_w, &l.k_w, &l.v_w, &l.out_w, &l.q_b, &l.k_b, &l.v_b, &l.out_b,
                          &l.ln2_w, &l.ln2_b, &l.fc1_w, &l.fc1_b, &l.fc2_w, &l.fc2_b})
            placer.convert(*t);
    placer.convert(weights_.final_ln_w);
    placer.convert(weights_.final_ln_b);
    SD3_TRY(placer.place(placement, "CLIP text encoder").status());
    placement_ = placement;
    return {};
}

}  // namespace sd3
