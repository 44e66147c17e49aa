// MMDiT config, weight loading and LoRA management (models/mmdit.h). The forward and backward passes are in
// mmdit_forward.cpp.
#include "models/mmdit.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string_view>

#include "core/check.h"
#include "io/json_file.h"
#include "io/model_folder.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"

namespace sd3 {

bool MMDiTConfig::is_dual(int64_t layer) const {
    return std::find(dual_attention_layers.begin(), dual_attention_layers.end(), layer) != dual_attention_layers.end();
}

Result<MMDiTConfig> MMDiTConfig::from_json(const nlohmann::json& j, const std::string& path) {
    MMDiTConfig c;  // defaults: diffusers SD3Transformer2DModel.__init__
    SD3_ASSIGN_OR_RETURN(c.sample_size, json_field_or<int64_t>(j, "sample_size", c.sample_size, path));
    SD3_ASSIGN_OR_RETURN(c.patch_size, json_field_or<int64_t>(j, "patch_size", c.patch_size, path));
    SD3_ASSIGN_OR_RETURN(c.in_channels, json_field_or<int64_t>(j, "in_channels", c.in_channels, path));
    SD3_ASSIGN_OR_RETURN(c.num_layers, json_field_or<int64_t>(j, "num_layers", c.num_layers, path));
    SD3_ASSIGN_OR_RETURN(c.attention_head_dim,
                         json_field_or<int64_t>(j, "attention_head_dim", c.attention_head_dim, path));
    SD3_ASSIGN_OR_RETURN(c.num_attention_heads,
                         json_field_or<int64_t>(j, "num_attention_heads", c.num_attention_heads, path));
    SD3_ASSIGN_OR_RETURN(c.joint_attention_dim,
                         json_field_or<int64_t>(j, "joint_attention_dim", c.joint_attention_dim, path));
    SD3_ASSIGN_OR_RETURN(c.caption_projection_dim,
                         json_field_or<int64_t>(j, "caption_projection_dim", c.caption_projection_dim, path));
    SD3_ASSIGN_OR_RETURN(c.pooled_projection_dim,
                         json_field_or<int64_t>(j, "pooled_projection_dim", c.pooled_projection_dim, path));
    // out_channels null means in_channels (diffusers: `out_channels if out_channels is not None else in_channels`).
    SD3_ASSIGN_OR_RETURN(c.out_channels, json_field_or<int64_t>(j, "out_channels", c.in_channels, path));
    if (!j.contains("pos_embed_max_size") || j.at("pos_embed_max_size").is_null())
        return make_error(ErrorCode::UNSUPPORTED, path,
                          ": \"pos_embed_max_size\" is missing or null; only SD3-style transformers with a stored, "
                          "centre-cropped position table are supported");
    SD3_ASSIGN_OR_RETURN(c.pos_embed_max_size, json_field<int64_t>(j, "pos_embed_max_size", path));
    SD3_ASSIGN_OR_RETURN(c.qk_norm, json_field_or<std::string>(j, "qk_norm", "", path));
    SD3_ASSIGN_OR_RETURN(c.dual_attention_layers,
                         json_field_or<std::vector<int64_t>>(j, "dual_attention_layers", {}, path));

    auto bad = [&](const auto&... what) { return make_error(ErrorCode::CORRUPT_FILE, path, ": ", what...); };
    if (c.patch_size <= 0 || c.in_channels <= 0 || c.out_channels <= 0 || c.num_layers <= 0 ||
        c.attention_head_dim <= 0 || c.num_attention_heads <= 0 || c.joint_attention_dim <= 0 ||
        c.pooled_projection_dim <= 0 || c.pos_embed_max_size <= 0)
        return bad("sizes must be positive");
    if (c.caption_projection_dim != c.inner_dim())
        return bad("caption_projection_dim ", c.caption_projection_dim, " differs from num_attention_heads x ",
                   "attention_head_dim = ", c.inner_dim(), "; the joint blocks need them equal");
    if (!c.qk_norm.empty() && c.qk_norm != "rms_norm")
        return make_error(ErrorCode::UNSUPPORTED, path, ": qk_norm \"", c.qk_norm,
                          "\" is not supported (only none and \"rms_norm\", as in SD3 and SD3.5)");
    for (int64_t l : c.dual_attention_layers)
        if (l < 0 || l >= c.num_layers) return bad("dual_attention_layers holds ", l, " outside [0, ", c.num_layers, ")");
    return c;
}

Status MMDiTConfig::check_against(const TensorSource& src) const {
    const int64_t D = inner_dim(), p = patch_size;
    struct Expect {
        std::string name;
        Shape shape;
    };
    const std::vector<Expect> expect = {
        {"pos_embed.proj.weight", {D, in_channels, p, p}},
        {"pos_embed.pos_embed", {1, pos_embed_max_size * pos_embed_max_size, D}},
        {"context_embedder.weight", {D, joint_attention_dim}},
        {"time_text_embed.text_embedder.linear_1.weight", {D, pooled_projection_dim}},
        {"proj_out.weight", {p * p * out_channels, D}},
        {str_cat("transformer_blocks.", num_layers - 1, ".norm1_context.linear.weight"), {2 * D, D}},
    };
    for (const Expect& e : expect) {
        auto m = src.meta(e.name);
        if (!m)
            return make_error(ErrorCode::CORRUPT_FILE, src.origin(), ": no tensor \"", e.name,
                              "\"; the weights do not belong to an SD3 transformer with this config (", num_layers,
                              " layers)");
        if (m->shape != e.shape)
            return make_error(ErrorCode::CORRUPT_FILE, src.origin(), ": \"", e.name, "\" is ", shape_str(m->shape),
                              " but the config implies ", shape_str(e.shape),
                              "; the config.json does not describe these weights");
    }
    if (src.meta(str_cat("transformer_blocks.", num_layers, ".norm1.linear.weight")))
        return make_error(ErrorCode::CORRUPT_FILE, src.origin(), ": holds more than the config's ", num_layers,
                          " transformer blocks");
    return {};
}

namespace {

// Takes weights in float32 (the CPU's compute dtype) or, for a model bound for a device, as stored.
class Loader {
  public:
    Loader(std::shared_ptr<const TensorSource> src, bool as_stored) : l_(std::move(src)), as_stored_(as_stored) {}

    Status linear(nn::Linear& lin, const std::string& name, int64_t out, int64_t in, bool bias = true) {
        lin.name = name;
        lin.id = nn::layer_id(name);
        SD3_ASSIGN_OR_RETURN(lin.weight, take(name + ".weight", {out, in}));
        if (bias) {
            SD3_ASSIGN_OR_RETURN(lin.bias, take(name + ".bias", {out}));
        }
        return {};
    }
    Status tensor(Tensor& t, const std::string& name, const Shape& shape) {
        SD3_ASSIGN_OR_RETURN(t, take(name, shape));
        return {};
    }
    bool has(const std::string& name) const { return l_.has(name); }
    Status finish() const { return l_.finish(); }

  private:
    Result<Tensor> take(const std::string& name, const Shape& shape) {
        if (as_stored_) {  // the 16/32-bit floats a device converts; anything else (fp8 files) becomes float32
            const auto meta = l_.source().meta(name);
            if (meta && (meta->dtype == DType::F32 || meta->dtype == DType::F16 || meta->dtype == DType::BF16))
                return l_.take_as_stored(name, shape);
        }
        return l_.take(name, shape);
    }

    WeightLoader l_;
    bool as_stored_;
};

Status load_attention(Loader& ld, nn::JointAttention& a, const std::string& prefix, const MMDiTConfig& c,
                      bool has_context, bool pre_only) {
    const int64_t D = c.inner_dim();
    a.heads = c.num_attention_heads;
    a.head_dim = c.attention_head_dim;
    a.has_context = has_context;
    a.context_pre_only = pre_only;
    SD3_TRY(ld.linear(a.to_q, prefix + ".to_q", D, D));
    SD3_TRY(ld.linear(a.to_k, prefix + ".to_k", D, D));
    SD3_TRY(ld.linear(a.to_v, prefix + ".to_v", D, D));
    SD3_TRY(ld.linear(a.to_out, prefix + ".to_out.0", D, D));
    const bool qk = !c.qk_norm.empty();
    if (qk) {
        SD3_TRY(ld.tensor(a.norm_q, prefix + ".norm_q.weight", {c.attention_head_dim}));
        SD3_TRY(ld.tensor(a.norm_k, prefix + ".norm_k.weight", {c.attention_head_dim}));
    }
    if (!has_context) return {};
    SD3_TRY(ld.linear(a.add_q_proj, prefix + ".add_q_proj", D, D));
    SD3_TRY(ld.linear(a.add_k_proj, prefix + ".add_k_proj", D, D));
    SD3_TRY(ld.linear(a.add_v_proj, prefix + ".add_v_proj", D, D));
    if (!pre_only) SD3_TRY(ld.linear(a.to_add_out, prefix + ".to_add_out", D, D));
    if (qk) {
        // The pre-only block never uses its context queries; take their norm when the file has it.
        if (!pre_only || ld.has(prefix + ".norm_added_q.weight"))
            SD3_TRY(ld.tensor(a.norm_added_q, prefix + ".norm_added_q.weight", {c.attention_head_dim}));
        SD3_TRY(ld.tensor(a.norm_added_k, prefix + ".norm_added_k.weight", {c.attention_head_dim}));
    }
    return {};
}

Status load_ff(Loader& ld, nn::FeedForward& ff, const std::string& prefix, int64_t D) {
    SD3_TRY(ld.linear(ff.fc1, prefix + ".net.0.proj", 4 * D, D));
    return ld.linear(ff.fc2, prefix + ".net.2", D, 4 * D);
}

}  // namespace

Result<MMDiT> MMDiT::create(const MMDiTConfig& config, std::shared_ptr<const TensorSource> weights,
                            bool weights_as_stored) {
    SD3_TRY(config.check_against(*weights));
    MMDiT m;
    m.config_ = config;
    MMDiTWeights& w = m.w_;
    const MMDiTConfig& c = config;
    const int64_t D = c.inner_dim(), p = c.patch_size, C = c.in_channels;
    Loader ld(weights, weights_as_stored);
    // The patch-embedding Conv2d (kernel = stride = p) is a Linear over (c, py, px) patch vectors (§2.1).
    Tensor conv_w;  // [D, C, p, p]
    SD3_TRY(ld.tensor(conv_w, "pos_embed.proj.weight", {D, C, p, p}));
    w.patch_embed.name = "pos_embed.proj";
    w.patch_embed.id = nn::layer_id(w.patch_embed.name);
    w.patch_embed.weight = conv_w.contiguous().view({D, C * p * p});
    SD3_TRY(ld.tensor(w.patch_embed.bias, "pos_embed.proj.bias", {D}));
    const int64_t grid = c.pos_embed_max_size;
    SD3_TRY(ld.tensor(w.pos_embed, "pos_embed.pos_embed", {1, grid * grid, D}));
    SD3_TRY(ld.linear(w.time_linear_1, "time_text_embed.timestep_embedder.linear_1", D, 256));
    SD3_TRY(ld.linear(w.time_linear_2, "time_text_embed.timestep_embedder.linear_2", D, D));
    SD3_TRY(ld.linear(w.text_linear_1, "time_text_embed.text_embedder.linear_1", D, c.pooled_projection_dim));
    SD3_TRY(ld.linear(w.text_linear_2, "time_text_embed.text_embedder.linear_2", D, D));
    SD3_TRY(ld.linear(w.context_embedder, "context_embedder", D, c.joint_attention_dim));
    w.blocks.resize(static_cast<size_t>(c.num_layers));
    for (int64_t i = 0; i < c.num_layers; ++i) {
        JointBlock& b = w.blocks[i];
        const std::string pre = str_cat("transformer_blocks.", i);
        b.context_pre_only = i == c.num_layers - 1;  // diffusers: context_pre_only = (i == num_layers - 1)
        b.dual = c.is_dual(i);
        SD3_TRY(ld.linear(b.norm1, pre + ".norm1.linear", (b.dual ? 9 : 6) * D, D));
        SD3_TRY(ld.linear(b.norm1_context, pre + ".norm1_context.linear", (b.context_pre_only ? 2 : 6) * D, D));
        SD3_TRY(load_attention(ld, b.attn, pre + ".attn", c, true, b.context_pre_only));
        if (b.dual) SD3_TRY(load_attention(ld, b.attn2, pre + ".attn2", c, false, false));
        SD3_TRY(load_ff(ld, b.ff, pre + ".ff", D));
        if (!b.context_pre_only) SD3_TRY(load_ff(ld, b.ff_context, pre + ".ff_context", D));
    }
    SD3_TRY(ld.linear(w.norm_out, "norm_out.linear", 2 * D, D));
    SD3_TRY(ld.linear(w.proj_out, "proj_out", p * p * c.out_channels, D));
    SD3_TRY(ld.finish());
    m.resident_blocks_ = static_cast<int>(w.blocks.size());
    return m;
}

Result<MMDiT> MMDiT::load(const Component& comp, bool weights_as_stored) {
    if (!comp.weights)
        return make_error(ErrorCode::NOT_FOUND, "the transformer component has no weights (", comp.config_path, ")");
    SD3_ASSIGN_OR_RETURN(MMDiTConfig cfg, MMDiTConfig::from_json(comp.config, comp.config_path));
    return create(cfg, comp.weights, weights_as_stored);
}

Tensor crop_pos_embed(const Tensor& table, int64_t grid, int64_t hp, int64_t wp) {
    SD3_ASSERT(table.device().is_cpu() && table.numel() % (grid * grid) == 0 && hp <= grid && wp <= grid,
               "crop_pos_embed: table ", table.describe(), ", grid ", grid, ", crop ", hp, "x", wp);
    const int64_t dim = table.numel() / (grid * grid), top = (grid - hp) / 2, left = (grid - wp) / 2;
    return table.view({grid, grid, dim}).slice(0, top, top + hp).slice(1, left, left + wp).clone().view({1, hp * wp, dim});
}

Tensor sincos_pos_embed(int64_t grid, int64_t base_size, int64_t dim) {
    SD3_ASSERT(dim % 4 == 0, "sin-cos position table needs a width divisible by 4, got ", dim);
    Tensor out = Tensor::empty({1, grid * grid, dim}, DType::F32);
    float* o = out.data<float>();
    const int64_t quarter = dim / 4;
    // positions are float32 (arange(f32) / (grid / base_size)); omega and the products are float64.
    const float step = static_cast<float>(grid) / static_cast<float>(base_size);
    for (int64_t i = 0; i < grid; ++i)
        for (int64_t j = 0; j < grid; ++j) {
            float* row = o + (i * grid + j) * dim;
            const double pos[2] = {static_cast<double>(static_cast<float>(j) / step),   // column
                                   static_cast<double>(static_cast<float>(i) / step)};  // row
            for (int half = 0; half < 2; ++half)
                for (int64_t k = 0; k < quarter; ++k) {
                    const double omega = 1.0 / std::pow(10000.0, static_cast<double>(k) / (dim / 4.0));
                    row[half * 2 * quarter + k] = static_cast<float>(std::sin(pos[half] * omega));
                    row[half * 2 * quarter + quarter + k] = static_cast<float>(std::cos(pos[half] * omega));
                }
        }
    return out;
}

Result<MMDiT> MMDiT::load_dir(const std::string& dir) {
    const std::string config_path = dir + "/config.json";
    SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(config_path));
    SD3_ASSIGN_OR_RETURN(MMDiTConfig cfg, MMDiTConfig::from_json(j, config_path));
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<TensorSource> src,
                         SafetensorsSource::open(dir, {"diffusion_pytorch_model", "model"}));
    return create(cfg, src);
}

// ---- LoRA ----

namespace {
template <typename W, typename F>
void visit_linears(W& w, F&& f) {
    // diffusers named_modules order (module construction order); pos_embed.proj is a Conv2d there, so not listed.
    f(w.time_linear_1);
    f(w.time_linear_2);
    f(w.text_linear_1);
    f(w.text_linear_2);
    f(w.context_embedder);
    for (auto& b : w.blocks) {
        f(b.norm1);
        f(b.norm1_context);
        auto attn = [&](auto& a) {
            f(a.to_q);
            f(a.to_k);
            f(a.to_v);
            if (a.has_context) {
                f(a.add_k_proj);
                f(a.add_v_proj);
                f(a.add_q_proj);
            }
            f(a.to_out);
            if (a.has_context && !a.context_pre_only) f(a.to_add_out);
        };
        attn(b.attn);
        if (b.dual) attn(b.attn2);
        f(b.ff.fc1);
        f(b.ff.fc2);
        if (!b.context_pre_only) {
            f(b.ff_context.fc1);
            f(b.ff_context.fc2);
        }
    }
    f(w.norm_out);
    f(w.proj_out);
}
}  // namespace

std::vector<nn::Linear*> MMDiT::linears() {
    std::vector<nn::Linear*> out;
    visit_linears(w_, [&](nn::Linear& l) { out.push_back(&l); });
    return out;
}

std::vector<const nn::Linear*> MMDiT::linears() const {
    std::vector<const nn::Linear*> out;
    visit_linears(w_, [&](const nn::Linear& l) { out.push_back(&l); });
    return out;
}

nn::Linear* MMDiT::find_linear(const std::string& module_path) {
    for (nn::Linear* l : linears())
        if (l->name == module_path) return l;
    return nullptr;
}

Result<LoraTrainable> MMDiT::make_trainable_lora(const LoraTrainConfig& cfg) const {
    std::vector<std::pair<std::string, Shape>> mods;
    for (const nn::Linear* l : linears()) mods.emplace_back(l->name, Shape{l->out_features(), l->in_features()});
    return make_lora_layout(mods, cfg);
}

Status MMDiT::attach_trainable(const LoraTrainable& lora) {
    const float scale = lora.config.effective_alpha() / static_cast<float>(lora.config.rank);
    for (size_t m = 0; m < lora.modules.size(); ++m) {
        nn::Linear* l = find_linear(lora.modules[m]);
        if (l == nullptr)
            return make_error(ErrorCode::INVALID_ARGUMENT, "trainable LoRA module \"", lora.modules[m],
                              "\" is not a Linear of this transformer");
        nn::LoraAdapter a;
        a.A = lora.param(2 * m);
        a.B = lora.param(2 * m + 1);
        if (a.A.size(1) != l->in_features() || a.B.size(0) != l->out_features())
            return make_error(ErrorCode::INVALID_ARGUMENT, "trainable LoRA module \"", lora.modules[m], "\" has A ",
                              shape_str(a.A.shape()), " B ", shape_str(a.B.shape()), " for a weight ",
                              "[", l->out_features(), ", ", l->in_features(), "]");
        a.scale = scale;
        a.dropout = lora.config.dropout;
        a.grad_offset_a = lora.slots[2 * m].offset;
        a.grad_offset_b = lora.slots[2 * m + 1].offset;
        l->loras.push_back(a);
    }
    return {};
}

Status MMDiT::check_lora_set(const LoraSet& set) const {
    std::vector<std::string> unknown, bad_shape;
    for (const auto& [name, mod] : set.modules) {
        const nn::Linear* hit = nullptr;
        for (const nn::Linear* l : linears())
            if (l->name == name) hit = l;
        if (hit == nullptr) {
            unknown.push_back(name);
        } else if (mod.A.dim() != 2 || mod.B.dim() != 2 || mod.A.size(1) != hit->in_features() ||
                   mod.B.size(0) != hit->out_features() || mod.B.size(1) != mod.A.size(0)) {
            bad_shape.push_back(str_cat(name, " (A ", shape_str(mod.A.shape()), ", B ", shape_str(mod.B.shape()),
                                        ", weight [", hit->out_features(), ", ", hit->in_features(), "])"));
        }
    }
    auto list = [](const std::vector<std::string>& v) {
        std::string s;
        for (size_t i = 0; i < v.size() && i < 20; ++i) s += "\n  " + v[i];
        if (v.size() > 20) s += str_cat("\n  ... and ", v.size() - 20, " more");
        return s;
    };
    if (!unknown.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "the LoRA has ", unknown.size(),
                          " module(s) that match no Linear of this transformer (a LoRA for another model?):",
                          list(unknown));
    if (!bad_shape.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "the LoRA has ", bad_shape.size(),
                          " module(s) whose shapes do not fit this transformer:", list(bad_shape));
    return {};
}

namespace {
// A block's frozen weights for a placer: float weights in the compute dtype, quantized ones as stored.
void place_block(nn::WeightPlacer& placer, JointBlock& b) {
    for (nn::Linear* l : {&b.norm1, &b.norm1_context, &b.attn.to_q, &b.attn.to_k, &b.attn.to_v, &b.attn.to_out,
                          &b.attn.add_q_proj, &b.attn.add_k_proj, &b.attn.add_v_proj, &b.attn.to_add_out,
                          &b.attn2.to_q, &b.attn2.to_k, &b.attn2.to_v, &b.attn2.to_out, &b.attn2.add_q_proj,
                          &b.attn2.add_k_proj, &b.attn2.add_v_proj, &b.attn2.to_add_out, &b.ff.fc1, &b.ff.fc2,
                          &b.ff_context.fc1, &b.ff_context.fc2}) {
        placer.keep(l->qweight.data);
        placer.keep(l->qweight.scale);
        placer.convert(l->weight);
        placer.convert(l->bias);
    }
    for (nn::JointAttention* a : {&b.attn, &b.attn2})
        for (Tensor* t : {&a->norm_q, &a->norm_k, &a->norm_added_q, &a->norm_added_k}) placer.convert(*t);
}

// The Linears a quantized base stores quantized: the joint blocks' (by module path or weight name).
bool in_joint_block(std::string_view name) { return name.starts_with("transformer_blocks."); }

// A block's bytes as placed in the compute dtype (aligned), or with `as_held` as its tensors are now.
size_t block_bytes(const JointBlock& b, DType compute, bool as_held = false) {
    JointBlock copy = b;
    nn::WeightPlacer placer;
    place_block(placer, copy);
    return as_held ? placer.tensor_bytes() : placer.bytes(compute);
}
}  // namespace

Status MMDiT::to(const nn::Placement& placement, std::optional<QuantFormat> base_format, size_t max_resident_bytes) {
    if (placement.on_cpu() && placement_.on_cpu() && !base_format && max_resident_bytes == SIZE_MAX) return {};
    if (base_format) {
        if (!placement_.on_cpu())
            return make_error(ErrorCode::INVALID_ARGUMENT, "quantize the transformer before moving it to the device");
        std::vector<nn::Linear*> block_linears;
        for (nn::Linear* l : linears())
            if (in_joint_block(l->name) && l->weight.defined()) block_linears.push_back(l);
        // Layers are independent: quantized in parallel (SD3-Medium holds ~2 G block weights).
#pragma omp parallel for schedule(dynamic)
        for (size_t i = 0; i < block_linears.size(); ++i) {
            nn::Linear* l = block_linears[i];
            l->qweight = quantize_matrix(l->weight, *base_format);
            l->weight = Tensor();
        }
    }
    nn::WeightPlacer placer;
    for (nn::Linear* l : {&w_.patch_embed, &w_.time_linear_1, &w_.time_linear_2, &w_.text_linear_1, &w_.text_linear_2,
                          &w_.context_embedder, &w_.norm_out, &w_.proj_out}) {
        placer.convert(l->weight);
        placer.convert(l->bias);
    }
    // Blocks in order while they fit the budget with the streaming slots (float weights in the compute dtype,
    // quantized ones as stored); the rest are packed for streaming.
    std::vector<size_t> bytes;
    for (const JointBlock& b : w_.blocks) bytes.push_back(block_bytes(b, placement.dtype));
    const size_t resident = nn::StreamedBlocks::resident_count(bytes, max_resident_bytes);
    for (size_t i = 0; i < resident; ++i) place_block(placer, w_.blocks[i]);
    for (nn::Linear* l : linears())  // LoRA adapters attached before the move follow the model
        for (nn::LoraAdapter& a : l->loras) {
            placer.convert(a.A);
            placer.convert(a.B);
        }
    SD3_TRY(placer.place(placement, "transformer").status());
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<nn::StreamedBlocks> streamed,
                         nn::StreamedBlocks::pack(w_.blocks, resident, placement, place_block, "transformer"));
    placement_ = placement;
    pos_crops_.clear();
    resident_blocks_ = static_cast<int>(resident);
    streamed_ = std::move(streamed);
    return {};
}

size_t MMDiT::placed_bytes(const TensorSource& weights, const nn::Placement& placement,
                           std::optional<QuantFormat> base_format) {
    double bytes = 0;
    for (const std::string& name : weights.names()) {
        if (name == "pos_embed.pos_embed") continue;  // stays on the host (position_rows)
        const Shape shape = weights.meta(name)->shape;
        const bool quantized = base_format && shape.size() == 2 && in_joint_block(name) && name.ends_with(".weight");
        const double per = !quantized                         ? static_cast<double>(dtype_size(placement.dtype))
                           : *base_format == QuantFormat::NF4 ? 0.5
                                                              : 1.0;
        bytes += per * static_cast<double>(shape_numel(shape));
    }
    return static_cast<size_t>(bytes);
}

size_t MMDiT::weight_bytes() const {
    size_t n = streamed_ ? streamed_->device_bytes() : 0;
    for (const auto& [size, rows] : pos_crops_) n += rows.nbytes();
    for (const nn::Linear* l : {&w_.patch_embed, &w_.time_linear_1, &w_.time_linear_2, &w_.text_linear_1,
                                &w_.text_linear_2, &w_.context_embedder, &w_.norm_out, &w_.proj_out})
        n += l->weight.nbytes() + (l->bias.defined() ? l->bias.nbytes() : 0);
    for (int i = 0; i < resident_blocks_; ++i) n += block_bytes(w_.blocks[i], placement_.dtype, true);
    return n;
}

const Tensor& MMDiT::position_rows(int64_t hp, int64_t wp) const {
    Tensor& rows = pos_crops_[{hp, wp}];
    if (!rows.defined())
        rows = nn::to_placement(crop_pos_embed(w_.pos_embed, config_.pos_embed_max_size, hp, wp), placement_);
    return rows;
}

const JointBlock& MMDiT::block_weights(size_t i, JointBlock& staged, int64_t next) const {
    if (static_cast<int>(i) < resident_blocks_) return w_.blocks[i];
    staged = w_.blocks[i];  // shares the LoRA adapters; the frozen weights are rebound to the slot's copy
    nn::WeightPlacer placer;
    place_block(placer, staged);
    streamed_->bind(i - resident_blocks_, placer, next < resident_blocks_ ? -1 : next - resident_blocks_);
    return staged;
}

Status MMDiT::attach_lora(const LoraSet& set, float multiplier) {
    SD3_TRY(check_lora_set(set));
    for (const auto& [name, mod] : set.modules) {
        nn::LoraAdapter a;
        a.A = nn::to_placement(mod.A, placement_);
        a.B = nn::to_placement(mod.B, placement_);
        a.scale = multiplier * mod.alpha / static_cast<float>(mod.rank());
        find_linear(name)->loras.push_back(a);
    }
    return {};
}

Status MMDiT::fuse_lora(const LoraSet& set, float multiplier) {
    SD3_TRY(check_lora_set(set));
    for (const auto& [name, mod] : set.modules) {
        nn::Linear* l = find_linear(name);
        if (l->qweight.defined())
            return make_error(ErrorCode::INVALID_ARGUMENT, "cannot fuse a LoRA into the quantized weight of ", name,
                              "; attach it unfused instead");
        // B·A in float32 on the CPU, added to a private copy of the weight (the loaded one may be a read-only view
        // of the file mapping, or a slot of the model's one allocation shared by nothing else but kept intact).
        const Tensor at = mod.A.to(DType::F32).transpose(0, 1).contiguous();  // [in, r]
        const Tensor delta = ops::linear(mod.B.to(DType::F32), at);    // [out, in] = B·A
        const float s = multiplier * mod.alpha / static_cast<float>(mod.rank());
        if (placement_.on_cpu()) {
            Tensor w = l->weight.clone();  // [out, in]
            ops::add_(w, delta, s);
            l->weight = w;
        } else {
            // Fused in float32 and rounded once, back into the weight's own slot of the model's allocation.
            Tensor w = ops::copy(convert(l->weight, DType::F32));
            SD3_ASSIGN_OR_RETURN(const Tensor delta_dev, to_device(delta, placement_.device));
            ops::add_(w, delta_dev, s);
            copy_into(l->weight, w);
        }
    }
    return {};
}

void MMDiT::detach_loras() {
    for (nn::Linear* l : linears()) l->loras.clear();
}

}  // namespace sd3
