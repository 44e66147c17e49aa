// T5 v1.1 encoder: config, loading with weight quantization, and the block-by-block forward
// (transformers T5EncoderModel / T5Stack, read through research/sd3-architecture.md §6; names from §3.4).
#include "models/t5_encoder.h"

#include <cmath>
#include <map>
#include <vector>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/log.h"
#include "io/json_file.h"
#include "models/clip_text.h"  // embedding_lookup
#include "ops/ops.h"
#include "ops/device.h"
#include "ops/quant_linear.h"

namespace sd3 {

Result<T5Config> T5Config::from_json(const nlohmann::json& j, const std::string& path) {
    T5Config c;
    SD3_ASSIGN_OR_RETURN(c.vocab_size, json_field_or<int64_t>(j, "vocab_size", 32128, path));
    SD3_ASSIGN_OR_RETURN(c.d_model, json_field_or<int64_t>(j, "d_model", 512, path));
    SD3_ASSIGN_OR_RETURN(c.d_kv, json_field_or<int64_t>(j, "d_kv", 64, path));
    SD3_ASSIGN_OR_RETURN(c.num_heads, json_field_or<int64_t>(j, "num_heads", 8, path));
    SD3_ASSIGN_OR_RETURN(c.d_ff, json_field_or<int64_t>(j, "d_ff", 2048, path));
    SD3_ASSIGN_OR_RETURN(c.num_layers, json_field_or<int64_t>(j, "num_layers", 6, path));
    SD3_ASSIGN_OR_RETURN(c.num_buckets, json_field_or<int64_t>(j, "relative_attention_num_buckets", 32, path));
    SD3_ASSIGN_OR_RETURN(c.max_distance, json_field_or<int64_t>(j, "relative_attention_max_distance", 128, path));
    SD3_ASSIGN_OR_RETURN(double eps, json_field_or<double>(j, "layer_norm_epsilon", 1e-6, path));
    c.layer_norm_eps = static_cast<float>(eps);
    // T5Config: feed_forward_proj "gated-gelu" means a gated FF with dense_act_fn gelu_new (tanh form).
    SD3_ASSIGN_OR_RETURN(std::string ff, json_field_or<std::string>(j, "feed_forward_proj", "relu", path));
    SD3_ASSIGN_OR_RETURN(std::string act, json_field_or<std::string>(j, "dense_act_fn", "gelu_new", path));
    if (ff != "gated-gelu" || (act != "gelu_new" && act != "gelu_pytorch_tanh"))
        return make_error(ErrorCode::UNSUPPORTED, path, ": feed_forward_proj \"", ff, "\" with dense_act_fn \"", act,
                          "\" is not supported (SD3's T5 v1.1 encoder uses \"gated-gelu\" / \"gelu_new\")");
    if (c.d_model <= 0 || c.d_kv <= 0 || c.num_heads <= 0 || c.d_ff <= 0 || c.num_layers < 1 || c.vocab_size <= 0 ||
        c.num_buckets < 4 || c.num_buckets % 2 != 0 || c.max_distance <= c.num_buckets / 4)
        return make_error(ErrorCode::CORRUPT_FILE, path, ": inconsistent T5 config (d_model ", c.d_model, ", num_heads ",
                          c.num_heads, ", num_layers ", c.num_layers, ", relative_attention_num_buckets ",
                          c.num_buckets, ")");
    return c;
}

size_t T5BlockWeights::bytes() const {
    return attn_norm.nbytes() + ff_norm.nbytes() + q.bytes() + k.bytes() + v.bytes() + o.bytes() + wi_0.bytes() +
           wi_1.bytes() + wo.bytes();
}

size_t T5Encoder::weight_bytes() const {
    size_t n = weights_.shared.nbytes() + weights_.relative_attention_bias.nbytes() + weights_.final_norm.nbytes();
    for (const T5BlockWeights& b : weights_.blocks) n += b.bytes();
    return n;
}

namespace {

// The QuantFormat that keeps a tensor of this dtype exactly as stored.
QuantFormat stored_format(DType dt) {
    switch (dt) {
        case DType::F16: return QuantFormat::F16;
        case DType::BF16: return QuantFormat::BF16;
        case DType::F8_E4M3: return QuantFormat::FP8_E4M3;
        default: return QuantFormat::F32;
    }
}

// Takes a Linear weight as stored and converts it to `format` (one tensor at a time, so the float32 copy of only
// one weight exists at once).
Result<QuantizedMatrix> take_linear(WeightLoader& L, const std::string& name, const Shape& shape, QuantFormat format,
                                    int64_t nf4_block) {
    auto meta = L.source().meta(name);
    const DType stored = meta ? meta->dtype : DType::F32;
    if (!dtype_is_float(stored))
        return make_error(ErrorCode::UNSUPPORTED, L.source().origin(), ": tensor \"", name, "\" is stored as ",
                          dtype_name(stored), ", which cannot be loaded as ", cpu::quant_format_name(format));
    SD3_ASSIGN_OR_RETURN(Tensor w, L.take(name, shape, stored));
    return quantize_matrix(w, format, nf4_block);
}

}  // namespace

Result<T5Encoder> T5Encoder::load(const T5Config& c, std::shared_ptr<const TensorSource> source,
                                  const T5LoadOptions& opt) {
    WeightLoader L(std::move(source));
    T5Encoder m;
    m.config_ = c;
    m.options_ = opt;
    T5Weights& w = m.weights_;
    const int64_t D = c.d_model, I = c.inner_dim(), F = c.d_ff;
    // The embedding stays as stored; rows are converted when gathered.
    auto shared_meta = L.source().meta("shared.weight");
    SD3_ASSIGN_OR_RETURN(w.shared,
                         L.take("shared.weight", {c.vocab_size, D}, shared_meta ? shared_meta->dtype : DType::F32));
    w.shared = w.shared.contiguous();
    // Tied to shared.weight (tie_word_embeddings); some exports save the alias too.
    if (L.has("encoder.embed_tokens.weight")) L.ignore("encoder.embed_tokens.weight");
    SD3_ASSIGN_OR_RETURN(w.relative_attention_bias,
                         L.take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                {c.num_buckets, c.num_heads}));
    for (int64_t l = 0; l < c.num_layers; ++l) {
        const std::string a = str_cat("encoder.block.", l, ".layer.0.");
        const std::string f = str_cat("encoder.block.", l, ".layer.1.");
        T5BlockWeights b;
        const QuantFormat fmt = opt.format;
        const int64_t nb = opt.nf4_block_size;
        SD3_ASSIGN_OR_RETURN(b.attn_norm, L.take(a + "layer_norm.weight", {D}));
        SD3_ASSIGN_OR_RETURN(b.q, take_linear(L, a + "SelfAttention.q.weight", {I, D}, fmt, nb));
        SD3_ASSIGN_OR_RETURN(b.k, take_linear(L, a + "SelfAttention.k.weight", {I, D}, fmt, nb));
        SD3_ASSIGN_OR_RETURN(b.v, take_linear(L, a + "SelfAttention.v.weight", {I, D}, fmt, nb));
        SD3_ASSIGN_OR_RETURN(b.o, take_linear(L, a + "SelfAttention.o.weight", {D, I}, fmt, nb));
        SD3_ASSIGN_OR_RETURN(b.ff_norm, L.take(f + "layer_norm.weight", {D}));
        SD3_ASSIGN_OR_RETURN(b.wi_0, take_linear(L, f + "DenseReluDense.wi_0.weight", {F, D}, fmt, nb));
        SD3_ASSIGN_OR_RETURN(b.wi_1, take_linear(L, f + "DenseReluDense.wi_1.weight", {F, D}, fmt, nb));
        const std::string wo_name = f + "DenseReluDense.wo.weight";
        QuantFormat wo_fmt = fmt;
        if (opt.keep_wo_unquantized && fmt != QuantFormat::F32) {
            auto meta = L.source().meta(wo_name);
            wo_fmt = stored_format(meta ? meta->dtype : DType::F32);
        }
        SD3_ASSIGN_OR_RETURN(b.wo, take_linear(L, wo_name, {D, F}, wo_fmt, nb));
        w.blocks.push_back(std::move(b));
    }
    SD3_ASSIGN_OR_RETURN(w.final_norm, L.take("encoder.final_layer_norm.weight", {D}));
    SD3_TRY(L.finish());
    log_debug("T5 encoder: ", c.num_layers, " blocks, linear weights as ", cpu::quant_format_name(opt.format),
              ", wo as ", w.blocks.empty() ? "-" : cpu::quant_format_name(w.blocks[0].wo.format), ", ",
              m.weight_bytes() >> 20, " MiB");
    m.resident_blocks_ = static_cast<int>(w.blocks.size());
    return m;
}

int64_t t5_relative_position_bucket(int64_t rel, int64_t num_buckets, int64_t max_distance) {
    // Bidirectional: half the buckets for keys after the query; of each half, the first half is exact distances
    // and the rest grow logarithmically up to max_distance (transformers T5Attention._relative_position_bucket).
    const int64_t half = num_buckets / 2;
    int64_t bucket = rel > 0 ? half : 0;
    const int64_t n = rel < 0 ? -rel : rel;
    const int64_t max_exact = half / 2;
    if (n < max_exact) return bucket + n;
    // float32 as the reference: log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact), truncated.
    const float ratio = static_cast<float>(n) / static_cast<float>(max_exact);
    const float denom = static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
    const float scaled = std::log(ratio) / denom * static_cast<float>(half - max_exact);
    const int64_t large = std::min<int64_t>(max_exact + static_cast<int64_t>(scaled), half - 1);
    return bucket + large;
}

Result<Tensor> T5Encoder::embed(const Tensor& ids) const {
    return embedding_lookup(weights_.shared, ids, "T5 encoder");
}

Tensor T5Encoder::position_bias(int64_t length) const {
    const int64_t H = config_.num_heads, L = length;
    // The bucket depends on j - i alone: one per offset, then each head's rows are written in order.
    std::vector<int64_t> bucket(static_cast<size_t>(2 * L - 1));  // [offset + L - 1]
    for (int64_t d = -(L - 1); d < L; ++d)
        bucket[d + L - 1] = t5_relative_position_bucket(d, config_.num_buckets, config_.max_distance);
    Tensor bias = Tensor::empty({H, L, L}, DType::F32);  // [H, Lq, Lk]
    const float* table = weights_.relative_attention_bias.data<float>();  // [buckets, H]
    float* out = bias.data<float>();
    for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < L; ++i)
            for (int64_t j = 0; j < L; ++j) out[(h * L + i) * L + j] = table[bucket[j - i + L - 1] * H + h];
    return bias;
}

Tensor T5Encoder::block_forward(const T5Config& c, const T5BlockWeights& w, const Tensor& x_in, const Tensor& bias) {
    // Self-attention sub-layer: pre-RMSNorm, no biases, no 1/sqrt(d) scaling, the shared position bias, no mask.
    Tensor h = ops::rms_norm(x_in, w.attn_norm, c.layer_norm_eps);      // [B, L, D]
    Tensor q = ops::linear_quantized(h, w.q.view());                    // [B, L, H*dkv]
    Tensor k = ops::linear_quantized(h, w.k.view());                    // [B, L, H*dkv]
    Tensor v = ops::linear_quantized(h, w.v.view());                    // [B, L, H*dkv]
    Tensor a = ops::attention(q, k, v, c.num_heads, 1.0f, /*causal=*/false, bias);  // [B, L, H*dkv]
    Tensor x = ops::add(x_in, ops::linear_quantized(a, w.o.view()));  // [B, L, D]
    // Gated-GELU feed-forward: wo(gelu_new(h·wi_0ᵀ) * (h·wi_1ᵀ)).
    h = ops::rms_norm(x, w.ff_norm, c.layer_norm_eps);                                       // [B, L, D]
    Tensor g = ops::activation(ops::linear_quantized(h, w.wi_0.view()), cpu::Activation::GELU_TANH);  // [B, L, F]
    Tensor u = ops::linear_quantized(h, w.wi_1.view());                                      // [B, L, F]
    return ops::add(x, ops::linear_quantized(ops::mul(g, u), w.wo.view()));                  // [B, L, D]
}

Tensor T5Encoder::final_norm(const Tensor& x) const {
    return ops::rms_norm(x, weights_.final_norm, config_.layer_norm_eps);
}

Result<Tensor> T5Encoder::forward(const Tensor& ids) const {
    SD3_ASSIGN_OR_RETURN(std::vector<Tensor> out, forward_batches({ids}));
    return out[0];
}

namespace {
void place_block(nn::WeightPlacer& placer, T5BlockWeights& b) {
    placer.convert(b.attn_norm);
    placer.convert(b.ff_norm);
    for (QuantizedMatrix* m : {&b.q, &b.k, &b.v, &b.o, &b.wi_0, &b.wi_1, &b.wo}) {
        placer.keep(m->data);
        placer.keep(m->scale);
    }
}
}  // namespace

Result<std::vector<Tensor>> T5Encoder::forward_batches(const std::vector<Tensor>& ids) const {
    const nn::Placement& p = placement_;
    std::vector<Tensor> xs, biases;
    std::map<int64_t, Tensor> bias_of_length;  // batches of one length share their bias
    for (const Tensor& batch : ids) {
        SD3_ASSIGN_OR_RETURN(Tensor x, embed(batch));  // [B, L, D]
        xs.push_back(nn::to_placement(x, p));
        // [H, L, L], once (T5Stack passes block 0's on)
        Tensor& bias = bias_of_length[batch.size(1)];
        if (!bias.defined()) bias = nn::to_placement(position_bias(batch.size(1)), p);
        biases.push_back(bias);
    }
    for (size_t i = 0; i < weights_.blocks.size(); ++i) {
        const T5BlockWeights* w = &weights_.blocks[i];
        T5BlockWeights streamed;  // a non-resident block, bound to its copy in a streaming slot
        if (static_cast<int>(i) >= resident_blocks_) {
            streamed = *w;
            nn::WeightPlacer placer;
            place_block(placer, streamed);
            const size_t k = i - resident_blocks_;
            streamed_->bind(k, placer, k + 1 < streamed_->size() ? static_cast<int64_t>(k) + 1 : -1);
            w = &streamed;
        }
        for (size_t b = 0; b < xs.size(); ++b) xs[b] = block_forward(config_, *w, xs[b], biases[b]);
    }
    std::vector<Tensor> out;
    for (const Tensor& x : xs) out.push_back(host_f32(final_norm(x)));
    return out;
}

Status T5Encoder::to(const nn::Placement& placement, size_t max_resident_bytes) {
    if (placement.on_cpu() && placement_.on_cpu() && max_resident_bytes == SIZE_MAX) return {};
    nn::WeightPlacer placer;
    placer.convert(weights_.final_norm);
    std::vector<size_t> bytes;
    for (const T5BlockWeights& b : weights_.blocks) bytes.push_back(b.bytes());
    const size_t resident = nn::StreamedBlocks::resident_count(bytes, max_resident_bytes);
    for (size_t i = 0; i < resident; ++i) place_block(placer, weights_.blocks[i]);
    SD3_TRY(placer.place(placement, "T5 encoder").status());
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<nn::StreamedBlocks> streamed,
                         nn::StreamedBlocks::pack(weights_.blocks, resident, placement, place_block, "T5 encoder"));
    placement_ = placement;
    resident_blocks_ = static_cast<int>(resident);
    streamed_ = std::move(streamed);
    return {};
}

}  // namespace sd3
