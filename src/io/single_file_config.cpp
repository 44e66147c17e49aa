// Config derivation from weight shapes (for single files and standalone encoder files, which carry no config),
// and the completeness check that goes with it: the derived config implies every tensor name and shape of the
// diffusers/transformers state dict (sd3-architecture.md §3.1, §3.3, §3.4), and the weights must match it exactly.
// Values the weights cannot show are conventions, each said in a note (docs/model-formats.md lists them).
#include <algorithm>
#include <cmath>
#include <map>

#include "io/single_file.h"

namespace sd3 {

namespace {

using Expected = std::map<std::string, Shape>;

std::string list_lines(const std::vector<std::string>& lines, size_t max = 20) {
    std::string out;
    for (size_t i = 0; i < lines.size() && i < max; ++i) out += "\n  " + lines[i];
    if (lines.size() > max) out += str_cat("\n  ... and ", lines.size() - max, " more");
    return out;
}

// Head width when the weights do not store it (no qk-norm): 64, the width of every released SD3/SD3.5 MMDiT
// (1536 = 24x64, 2432 = 38x64) and of CLIP-L (768 = 12x64) and CLIP-G (1280 = 20x64). Widths that are not a
// multiple of 64 (the project's tiny test models) take the largest power of two that leaves at least 4 heads.
int64_t conventional_head_dim(int64_t width) {
    if (width % 64 == 0) return 64;
    for (int64_t d = 32; d >= 1; d /= 2)
        if (width % d == 0 && width / d >= 4) return d;
    return width;
}

class ShapeReader {
  public:
    ShapeReader(const TensorSource& w, std::string what) : w_(w), what_(std::move(what)) {}
    Result<Shape> shape(const std::string& name, size_t rank) const {
        auto m = w_.meta(name);
        if (!m)
            return make_error(ErrorCode::CORRUPT_FILE, w_.origin(), ": cannot derive the ", what_, " config: tensor \"",
                              name, "\" is missing (an incomplete or different model)");
        if (m->shape.size() != rank)
            return make_error(ErrorCode::CORRUPT_FILE, w_.origin(), ": tensor \"", name, "\" has shape ",
                              shape_str(m->shape), " but a ", what_, " stores it with ", rank, " dimensions");
        return m->shape;
    }

  private:
    const TensorSource& w_;
    std::string what_;
};

// Compares the weights with the tensors a config implies; lists every missing, misshapen and extra tensor.
Status check_expected(const TensorSource& w, const Expected& expected, const std::string& what,
                      const std::string& config_line) {
    std::vector<std::string> missing, wrong, extra;
    for (const auto& [name, shape] : expected) {
        auto m = w.meta(name);
        if (!m)
            missing.push_back(name);
        else if (m->shape != shape)
            wrong.push_back(str_cat(name, " has shape ", shape_str(m->shape), ", expected ", shape_str(shape)));
    }
    for (const std::string& n : w.names())
        if (!expected.count(n)) extra.push_back(n);
    if (missing.empty() && wrong.empty() && extra.empty()) return {};
    std::string msg = str_cat(w.origin(), ": the ", what, " weights do not fit the config derived from them (",
                              config_line, ")");
    if (!missing.empty()) msg += str_cat("\n", missing.size(), " tensor(s) missing:", list_lines(missing));
    if (!wrong.empty()) msg += str_cat("\n", wrong.size(), " tensor(s) of the wrong shape:", list_lines(wrong));
    if (!extra.empty()) msg += str_cat("\n", extra.size(), " tensor(s) this model does not have:", list_lines(extra));
    return Status(ErrorCode::CORRUPT_FILE, msg);
}

void linear(Expected& e, const std::string& name, int64_t out, int64_t in, bool bias = true) {
    e[name + ".weight"] = {out, in};
    if (bias) e[name + ".bias"] = {out};
}
void norm(Expected& e, const std::string& name, int64_t c, bool bias = true) {
    e[name + ".weight"] = {c};
    if (bias) e[name + ".bias"] = {c};
}
void conv(Expected& e, const std::string& name, int64_t out, int64_t in, int64_t k) {
    e[name + ".weight"] = {out, in, k, k};
    e[name + ".bias"] = {out};
}

std::vector<int> indices_with(const std::vector<std::string>& names, const std::string& before, const std::string& after) {
    std::vector<int> out;
    for (const std::string& n : names) {
        if (!n.starts_with(before)) continue;
        const size_t dot = n.find('.', before.size());
        if (dot == std::string::npos || n.compare(dot, after.size(), after) != 0) continue;
        out.push_back(std::stoi(n.substr(before.size(), dot - before.size())));
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

// --- MMDiT (SD3Transformer2DModel, §1.2, §3.1) ---
Result<DerivedConfig> derive_mmdit(const TensorSource& w) {
    ShapeReader r(w, "MMDiT");
    DerivedConfig d;
    const auto names = w.names();
    SD3_ASSIGN_OR_RETURN(Shape proj, r.shape("pos_embed.proj.weight", 4));   // [D, C_in, p, p]
    SD3_ASSIGN_OR_RETURN(Shape pos, r.shape("pos_embed.pos_embed", 3));      // [1, grid^2, D]
    SD3_ASSIGN_OR_RETURN(Shape ctx, r.shape("context_embedder.weight", 2));  // [D, joint_attention_dim]
    SD3_ASSIGN_OR_RETURN(Shape pooled, r.shape("time_text_embed.text_embedder.linear_1.weight", 2));  // [D, pooled]
    SD3_ASSIGN_OR_RETURN(Shape out, r.shape("proj_out.weight", 2));  // [p*p*C_out, D]
    const int64_t D = proj[0], p = proj[2];
    const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(pos[1]))));
    if (grid * grid != pos[1])
        return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": pos_embed.pos_embed has ", pos[1],
                          " positions, not a square grid");
    const int num_layers = count_indexed(names, "transformer_blocks.");
    if (num_layers == 0)
        return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": no transformer blocks (transformer_blocks.N.*)");
    const bool qk_norm = w.meta("transformer_blocks.0.attn.norm_q.weight").has_value();
    int64_t head_dim = 0;
    if (qk_norm) {
        SD3_ASSIGN_OR_RETURN(Shape nq, r.shape("transformer_blocks.0.attn.norm_q.weight", 1));
        head_dim = nq[0];
        d.notes.push_back(str_cat("attention_head_dim=", head_dim, " from the qk-norm weight"));
    } else {
        head_dim = conventional_head_dim(D);
        d.notes.push_back(str_cat("attention_head_dim=", head_dim, " by convention (width ", D,
                                  "; heads are not visible in the weights without qk-norm)"));
    }
    if (D % head_dim != 0)
        return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": width ", D, " is not a multiple of the head width ",
                          head_dim);
    const std::vector<int> dual = indices_with(names, "transformer_blocks.", ".attn2.to_q.weight");
    const int64_t sample_size = std::min<int64_t>(128, grid);
    nlohmann::json& c = d.config;
    c["_class_name"] = "SD3Transformer2DModel";
    c["attention_head_dim"] = head_dim;
    c["caption_projection_dim"] = ctx[0];
    c["dual_attention_layers"] = dual;
    c["in_channels"] = proj[1];
    c["joint_attention_dim"] = ctx[1];
    c["num_attention_heads"] = D / head_dim;
    c["num_layers"] = num_layers;
    c["out_channels"] = out[0] / (p * p);
    c["patch_size"] = p;
    c["pooled_projection_dim"] = pooled[1];
    c["pos_embed_max_size"] = grid;
    c["qk_norm"] = qk_norm ? nlohmann::json("rms_norm") : nlohmann::json(nullptr);
    c["sample_size"] = sample_size;
    d.notes.push_back(str_cat("num_layers=", num_layers, " from the blocks, width ", D, " and patch_size=", p,
                              " from pos_embed.proj, pos_embed_max_size=", grid, " from pos_embed (", pos[1],
                              " positions)"));
    d.notes.push_back(str_cat("sample_size=", sample_size,
                              " by convention (the released configs' 128, i.e. 1024 px, limited by the position grid)"));
    if (qk_norm) d.notes.push_back("qk_norm=rms_norm (SD3.5) because attn.norm_q weights exist");

    Expected e;
    e["pos_embed.pos_embed"] = {1, grid * grid, D};
    e["pos_embed.proj.weight"] = {D, proj[1], p, p};
    e["pos_embed.proj.bias"] = {D};
    linear(e, "time_text_embed.timestep_embedder.linear_1", D, 256);  // 256 = sinusoid width (§2.2)
    linear(e, "time_text_embed.timestep_embedder.linear_2", D, D);
    linear(e, "time_text_embed.text_embedder.linear_1", D, pooled[1]);
    linear(e, "time_text_embed.text_embedder.linear_2", D, D);
    linear(e, "context_embedder", D, ctx[1]);  // caption_projection_dim must equal the width
    for (int i = 0; i < num_layers; ++i) {
        const std::string b = str_cat("transformer_blocks.", i, ".");
        const bool last = i == num_layers - 1;  // context_pre_only (§2, §3.1)
        const bool is_dual = std::find(dual.begin(), dual.end(), i) != dual.end();
        linear(e, b + "norm1.linear", (is_dual ? 9 : 6) * D, D);
        linear(e, b + "norm1_context.linear", (last ? 2 : 6) * D, D);
        for (const char* n : {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"})
            linear(e, b + "attn." + n, D, D);
        if (!last) linear(e, b + "attn.to_add_out", D, D);
        if (qk_norm)
            for (const char* n : {"norm_q", "norm_k", "norm_added_q", "norm_added_k"})
                e[b + "attn." + n + ".weight"] = {head_dim};
        if (is_dual) {
            for (const char* n : {"to_q", "to_k", "to_v", "to_out.0"}) linear(e, b + "attn2." + n, D, D);
            if (qk_norm)
                for (const char* n : {"norm_q", "norm_k"}) e[b + "attn2." + n + ".weight"] = {head_dim};
        }
        linear(e, b + "ff.net.0.proj", 4 * D, D);  // FeedForward mult 4 (§1.2)
        linear(e, b + "ff.net.2", D, 4 * D);
        if (!last) {
            linear(e, b + "ff_context.net.0.proj", 4 * D, D);
            linear(e, b + "ff_context.net.2", D, 4 * D);
        }
    }
    linear(e, "norm_out.linear", 2 * D, D);
    linear(e, "proj_out", out[0], D);
    SD3_TRY(check_expected(w, e, "MMDiT",
                           str_cat("num_layers=", num_layers, ", width ", D, ", ", D / head_dim, " heads of ", head_dim)));
    return d;
}

// --- VAE (AutoencoderKL, §1.3, §3.3) ---
Result<DerivedConfig> derive_vae(const TensorSource& w) {
    ShapeReader r(w, "VAE");
    DerivedConfig d;
    const auto names = w.names();
    const int n = count_indexed(names, "encoder.down_blocks.");
    const int lpb = count_indexed(names, "encoder.down_blocks.0.resnets.");
    if (n == 0 || lpb == 0)
        return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": no encoder down blocks (encoder.down_blocks.N.resnets.M.*)");
    std::vector<int64_t> ch;
    for (int i = 0; i < n; ++i) {
        SD3_ASSIGN_OR_RETURN(Shape s, r.shape(str_cat("encoder.down_blocks.", i, ".resnets.0.conv2.weight"), 4));
        ch.push_back(s[0]);
    }
    SD3_ASSIGN_OR_RETURN(Shape enc_in, r.shape("encoder.conv_in.weight", 4));    // [ch0, in, 3, 3]
    SD3_ASSIGN_OR_RETURN(Shape dec_in, r.shape("decoder.conv_in.weight", 4));    // [C, latent, 3, 3]
    SD3_ASSIGN_OR_RETURN(Shape dec_out, r.shape("decoder.conv_out.weight", 4));  // [out, ch0, 3, 3]
    const int64_t latent = dec_in[1];
    const bool quant = w.meta("quant_conv.weight").has_value();
    const bool post_quant = w.meta("post_quant_conv.weight").has_value();
    const bool mid_attn = w.meta("encoder.mid_block.attentions.0.to_q.weight").has_value();
    const int64_t narrowest = *std::min_element(ch.begin(), ch.end());
    bool all32 = std::all_of(ch.begin(), ch.end(), [](int64_t c) { return c % 32 == 0; });
    const int64_t groups = all32 ? 32 : std::max<int64_t>(1, narrowest / 2);
    for (int64_t c : ch)
        if (c % groups != 0)
            return make_error(ErrorCode::UNSUPPORTED, w.origin(), ": cannot pick GroupNorm groups for widths ",
                              nlohmann::json(ch).dump(), " (the weights do not store them)");
    nlohmann::json& c = d.config;
    c["_class_name"] = "AutoencoderKL";
    c["act_fn"] = "silu";
    c["block_out_channels"] = ch;
    c["down_block_types"] = std::vector<std::string>(n, "DownEncoderBlock2D");
    c["force_upcast"] = true;
    c["in_channels"] = enc_in[1];
    c["latent_channels"] = latent;
    c["latents_mean"] = nullptr;
    c["latents_std"] = nullptr;
    c["layers_per_block"] = lpb;
    c["mid_block_add_attention"] = mid_attn;
    c["norm_num_groups"] = groups;
    c["out_channels"] = dec_out[0];
    c["sample_size"] = 1024;
    c["scaling_factor"] = 1.5305;
    c["shift_factor"] = 0.0609;
    c["up_block_types"] = std::vector<std::string>(n, "UpDecoderBlock2D");
    c["use_post_quant_conv"] = post_quant;
    c["use_quant_conv"] = quant;
    d.notes.push_back(str_cat("block_out_channels=", nlohmann::json(ch).dump(), ", layers_per_block=", lpb,
                              ", latent_channels=", latent, " from the weights"));
    d.notes.push_back(str_cat("norm_num_groups=", groups,
                              all32 ? " (diffusers' default, every released SD VAE; not stored in the weights)"
                                    : " (not stored; widths not multiples of 32, so half the narrowest width)"));
    d.notes.push_back("scaling_factor=1.5305, shift_factor=0.0609: SD3's constants (§1.3), not stored in the weights");

    Expected e;
    const int64_t C = ch.back();
    auto resnet = [&](const std::string& name, int64_t cin, int64_t cout) {
        norm(e, name + ".norm1", cin);
        conv(e, name + ".conv1", cout, cin, 3);
        norm(e, name + ".norm2", cout);
        conv(e, name + ".conv2", cout, cout, 3);
        if (cin != cout) conv(e, name + ".conv_shortcut", cout, cin, 1);
    };
    auto mid = [&](const std::string& pre) {
        resnet(pre + ".mid_block.resnets.0", C, C);
        resnet(pre + ".mid_block.resnets.1", C, C);
        if (!mid_attn) return;
        norm(e, pre + ".mid_block.attentions.0.group_norm", C);
        for (const char* p : {"to_q", "to_k", "to_v", "to_out.0"}) linear(e, pre + ".mid_block.attentions.0." + p, C, C);
    };
    conv(e, "encoder.conv_in", ch[0], enc_in[1], 3);
    for (int i = 0; i < n; ++i) {
        const int64_t cin = i == 0 ? ch[0] : ch[i - 1];
        for (int j = 0; j < lpb; ++j)
            resnet(str_cat("encoder.down_blocks.", i, ".resnets.", j), j == 0 ? cin : ch[i], ch[i]);
        if (i != n - 1) conv(e, str_cat("encoder.down_blocks.", i, ".downsamplers.0.conv"), ch[i], ch[i], 3);
    }
    mid("encoder");
    norm(e, "encoder.conv_norm_out", C);
    conv(e, "encoder.conv_out", 2 * latent, C, 3);
    if (quant) conv(e, "quant_conv", 2 * latent, 2 * latent, 1);
    if (post_quant) conv(e, "post_quant_conv", latent, latent, 1);
    conv(e, "decoder.conv_in", C, latent, 3);
    mid("decoder");
    int64_t prev = C;
    for (int i = 0; i < n; ++i) {
        const int64_t cout = ch[n - 1 - i];  // up blocks run the widths backwards
        for (int j = 0; j <= lpb; ++j)       // one more resnet per decoder block than per encoder block
            resnet(str_cat("decoder.up_blocks.", i, ".resnets.", j), j == 0 ? prev : cout, cout);
        if (i != n - 1) conv(e, str_cat("decoder.up_blocks.", i, ".upsamplers.0.conv"), cout, cout, 3);
        prev = cout;
    }
    norm(e, "decoder.conv_norm_out", ch[0]);
    conv(e, "decoder.conv_out", dec_out[0], ch[0], 3);
    SD3_TRY(check_expected(w, e, "VAE",
                           str_cat("block_out_channels=", nlohmann::json(ch).dump(), ", layers_per_block=", lpb)));
    return d;
}

// --- CLIP text encoders (CLIPTextModelWithProjection, §1.4, §1.5) ---
Result<DerivedConfig> derive_clip(const TensorSource& w, const std::string& component) {
    ShapeReader r(w, "CLIP text encoder");
    DerivedConfig d;
    const auto names = w.names();
    SD3_ASSIGN_OR_RETURN(Shape tok, r.shape("text_model.embeddings.token_embedding.weight", 2));    // [V, H]
    SD3_ASSIGN_OR_RETURN(Shape pos, r.shape("text_model.embeddings.position_embedding.weight", 2));  // [77, H]
    SD3_ASSIGN_OR_RETURN(Shape fc1, r.shape("text_model.encoder.layers.0.mlp.fc1.weight", 2));      // [I, H]
    SD3_ASSIGN_OR_RETURN(Shape proj, r.shape("text_projection.weight", 2));                          // [P, H]
    const int64_t H = tok[1];
    const int layers = count_indexed(names, "text_model.encoder.layers.");
    const int64_t head_dim = conventional_head_dim(H);
    // Which CLIP it is decides the activation: OpenAI CLIP-L uses quick_gelu, OpenCLIP bigG exact GELU (§1.4-1.5).
    const bool is_g = component == "text_encoder_2";
    nlohmann::json& c = d.config;
    c["architectures"] = {"CLIPTextModelWithProjection"};
    c["attention_dropout"] = 0.0;
    c["bos_token_id"] = 49406;
    c["eos_token_id"] = 49407;
    c["hidden_act"] = is_g ? "gelu" : "quick_gelu";
    c["hidden_size"] = H;
    c["intermediate_size"] = fc1[0];
    c["layer_norm_eps"] = 1e-5;
    c["max_position_embeddings"] = pos[0];
    c["model_type"] = "clip_text_model";
    c["num_attention_heads"] = H / head_dim;
    c["num_hidden_layers"] = layers;
    c["pad_token_id"] = 1;
    c["projection_dim"] = proj[0];
    c["vocab_size"] = tok[0];
    d.notes.push_back(str_cat("hidden_size=", H, ", num_hidden_layers=", layers, ", intermediate_size=", fc1[0],
                              ", projection_dim=", proj[0], " from the weights; num_attention_heads=", H / head_dim,
                              " by the 64-wide-head convention"));
    d.notes.push_back(str_cat("hidden_act=", is_g ? "gelu (CLIP-G)" : "quick_gelu (CLIP-L)", " by which encoder it is"));
    Expected e;
    e["text_model.embeddings.token_embedding.weight"] = tok;
    e["text_model.embeddings.position_embedding.weight"] = {pos[0], H};
    for (int l = 0; l < layers; ++l) {
        const std::string b = str_cat("text_model.encoder.layers.", l, ".");
        norm(e, b + "layer_norm1", H);
        norm(e, b + "layer_norm2", H);
        for (const char* p : {"q_proj", "k_proj", "v_proj", "out_proj"}) linear(e, b + "self_attn." + p, H, H);
        linear(e, b + "mlp.fc1", fc1[0], H);
        linear(e, b + "mlp.fc2", H, fc1[0]);
    }
    norm(e, "text_model.final_layer_norm", H);
    e["text_projection.weight"] = {proj[0], H};
    SD3_TRY(check_expected(w, e, "CLIP text encoder", str_cat("hidden_size=", H, ", num_hidden_layers=", layers)));
    return d;
}

// --- T5 encoder (T5EncoderModel, §1.6) ---
Result<DerivedConfig> derive_t5(const TensorSource& w) {
    ShapeReader r(w, "T5 encoder");
    DerivedConfig d;
    const auto names = w.names();
    SD3_ASSIGN_OR_RETURN(Shape shared, r.shape("shared.weight", 2));  // [V, d_model]
    SD3_ASSIGN_OR_RETURN(Shape bias, r.shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2));
    SD3_ASSIGN_OR_RETURN(Shape q, r.shape("encoder.block.0.layer.0.SelfAttention.q.weight", 2));  // [heads*d_kv, d_model]
    const bool gated = w.meta("encoder.block.0.layer.1.DenseReluDense.wi_0.weight").has_value();
    SD3_ASSIGN_OR_RETURN(Shape wi, r.shape(gated ? "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
                                                 : "encoder.block.0.layer.1.DenseReluDense.wi.weight", 2));
    const int64_t dm = shared[1], heads = bias[1], buckets = bias[0];
    if (q[0] % heads != 0)
        return make_error(ErrorCode::CORRUPT_FILE, w.origin(), ": q has ", q[0], " rows, not a multiple of ", heads,
                          " heads");
    const int64_t d_kv = q[0] / heads, inner = q[0];
    const int layers = count_indexed(names, "encoder.block.");
    nlohmann::json& c = d.config;
    c["architectures"] = {"T5EncoderModel"};
    c["d_ff"] = wi[0];
    c["d_kv"] = d_kv;
    c["d_model"] = dm;
    c["dense_act_fn"] = gated ? "gelu_new" : "relu";
    c["dropout_rate"] = 0.0;
    c["eos_token_id"] = 1;
    c["feed_forward_proj"] = gated ? "gated-gelu" : "relu";
    c["is_encoder_decoder"] = false;
    c["is_gated_act"] = gated;
    c["layer_norm_epsilon"] = 1e-6;
    c["model_type"] = "t5";
    c["num_heads"] = heads;
    c["num_layers"] = layers;
    c["pad_token_id"] = 0;
    c["relative_attention_max_distance"] = 128;
    c["relative_attention_num_buckets"] = buckets;
    c["vocab_size"] = shared[0];
    d.notes.push_back(str_cat("d_model=", dm, ", num_heads=", heads, " and relative_attention_num_buckets=", buckets,
                              " (from the relative attention bias), d_kv=", d_kv, ", d_ff=", wi[0], ", num_layers=",
                              layers, " from the weights"));
    d.notes.push_back("relative_attention_max_distance=128, layer_norm_epsilon=1e-6: T5 v1.1 defaults (§1.6)");
    Expected e;
    e["shared.weight"] = shared;
    for (int l = 0; l < layers; ++l) {
        const std::string b = str_cat("encoder.block.", l, ".layer.");
        for (const char* p : {"q", "k", "v"}) e[b + "0.SelfAttention." + p + ".weight"] = {inner, dm};
        e[b + "0.SelfAttention.o.weight"] = {dm, inner};
        if (l == 0) e[b + "0.SelfAttention.relative_attention_bias.weight"] = {buckets, heads};
        e[b + "0.layer_norm.weight"] = {dm};
        if (gated) {
            e[b + "1.DenseReluDense.wi_0.weight"] = {wi[0], dm};
            e[b + "1.DenseReluDense.wi_1.weight"] = {wi[0], dm};
        } else {
            e[b + "1.DenseReluDense.wi.weight"] = {wi[0], dm};
        }
        e[b + "1.DenseReluDense.wo.weight"] = {dm, wi[0]};
        e[b + "1.layer_norm.weight"] = {dm};
    }
    e["encoder.final_layer_norm.weight"] = {dm};
    SD3_TRY(check_expected(w, e, "T5 encoder", str_cat("d_model=", dm, ", num_layers=", layers)));
    return d;
}

}  // namespace

std::pair<std::string, std::string> component_class(ComponentKind kind) {
    switch (kind) {
        case ComponentKind::MMDIT: return {"SD3Transformer2DModel", "diffusers"};
        case ComponentKind::VAE: return {"AutoencoderKL", "diffusers"};
        case ComponentKind::CLIP: return {"CLIPTextModelWithProjection", "transformers"};
        case ComponentKind::T5: return {"T5EncoderModel", "transformers"};
    }
    return {"", ""};
}

Result<DerivedConfig> derive_config(ComponentKind kind, const std::string& component, const TensorSource& weights) {
    switch (kind) {
        case ComponentKind::MMDIT: return derive_mmdit(weights);
        case ComponentKind::VAE: return derive_vae(weights);
        case ComponentKind::CLIP: return derive_clip(weights, component);
        case ComponentKind::T5: return derive_t5(weights);
    }
    return make_error(ErrorCode::INTERNAL, "unknown component kind");
}

}  // namespace sd3
