// AutoencoderKL: config, weight loading and the encoder/decoder forward (diffusers models/autoencoders/vae.py
// Encoder/Decoder, resnet.py ResnetBlock2D, downsampling.py Downsample2D, upsampling.py Upsample2D,
// unet_2d_blocks.py UNetMidBlock2D, attention_processor.py AttnProcessor2_0; research/sd3-architecture.md §4).
#include "models/vae.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/json_file.h"
#include "ops/cpu/vae_ops.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"
#include "ops/ops.h"

namespace sd3 {

namespace {

// Every GroupNorm of the SD3 VAE (resnets, mid attention, conv_norm_out) uses eps 1e-6 (vae.py, §4.1).
constexpr float kNormEps = 1e-6f;
// The mid attention's queries are processed in chunks of this many pixels so that the CPU attention's score
// block stays small (4096 x 16384 floats = 256 MiB at 1024x1024); results are the same as one call.
constexpr int64_t kAttentionQueryChunk = 4096;

}  // namespace

Result<VaeConfig> VaeConfig::from_json(const nlohmann::json& j, const std::string& path) {
    VaeConfig c;
    SD3_ASSIGN_OR_RETURN(c.in_channels, json_field_or<int64_t>(j, "in_channels", c.in_channels, path));
    SD3_ASSIGN_OR_RETURN(c.out_channels, json_field_or<int64_t>(j, "out_channels", c.out_channels, path));
    SD3_ASSIGN_OR_RETURN(c.latent_channels, json_field_or<int64_t>(j, "latent_channels", c.latent_channels, path));
    SD3_ASSIGN_OR_RETURN(c.block_out_channels,
                         json_field_or<std::vector<int64_t>>(j, "block_out_channels", c.block_out_channels, path));
    SD3_ASSIGN_OR_RETURN(c.layers_per_block, json_field_or<int64_t>(j, "layers_per_block", c.layers_per_block, path));
    SD3_ASSIGN_OR_RETURN(c.norm_num_groups, json_field_or<int64_t>(j, "norm_num_groups", c.norm_num_groups, path));
    SD3_ASSIGN_OR_RETURN(c.mid_block_add_attention,
                         json_field_or<bool>(j, "mid_block_add_attention", c.mid_block_add_attention, path));
    SD3_ASSIGN_OR_RETURN(c.use_quant_conv, json_field_or<bool>(j, "use_quant_conv", c.use_quant_conv, path));
    SD3_ASSIGN_OR_RETURN(c.use_post_quant_conv,
                         json_field_or<bool>(j, "use_post_quant_conv", c.use_post_quant_conv, path));
    // sample_size may be a number or [h, w] (diffusers takes the first).
    if (j.contains("sample_size") && j.at("sample_size").is_array() && !j.at("sample_size").empty()) {
        SD3_ASSIGN_OR_RETURN(std::vector<int64_t> ss, json_field<std::vector<int64_t>>(j, "sample_size", path));
        c.sample_size = ss[0];
    } else {
        SD3_ASSIGN_OR_RETURN(c.sample_size, json_field_or<int64_t>(j, "sample_size", c.sample_size, path));
    }
    SD3_ASSIGN_OR_RETURN(double scaling, json_field_or<double>(j, "scaling_factor", c.scaling_factor, path));
    SD3_ASSIGN_OR_RETURN(double shift, json_field_or<double>(j, "shift_factor", 0.0, path));
    // Python floats are doubles; torch multiplies a float32 tensor by them in float32.
    c.scaling_factor = static_cast<float>(scaling);
    c.shift_factor = static_cast<float>(shift);

    SD3_ASSIGN_OR_RETURN(std::string act, json_field_or<std::string>(j, "act_fn", "silu", path));
    if (act != "silu")
        return make_error(ErrorCode::UNSUPPORTED, path, ": act_fn \"", act, "\" is not supported (SD3's VAE uses silu)");
    const size_t n = c.block_out_channels.size();
    for (const char* key : {"down_block_types", "up_block_types"}) {
        const std::string want = std::string(key) == "down_block_types" ? "DownEncoderBlock2D" : "UpDecoderBlock2D";
        SD3_ASSIGN_OR_RETURN(std::vector<std::string> types,
                             json_field_or<std::vector<std::string>>(j, key, std::vector<std::string>(n, want), path));
        if (types.size() != n)
            return make_error(ErrorCode::CORRUPT_FILE, path, ": ", key, " has ", types.size(),
                              " entries but block_out_channels has ", n);
        for (const auto& t : types)
            if (t != want)
                return make_error(ErrorCode::UNSUPPORTED, path, ": ", key, " entry \"", t, "\" is not supported (only ",
                                  want, ")");
    }
    for (const char* key : {"latents_mean", "latents_std"})
        if (j.contains(key) && !j.at(key).is_null())
            return make_error(ErrorCode::UNSUPPORTED, path, ": \"", key,
                              "\" is set; per-channel latent statistics are not supported (SD3 uses none)");
    bool ok = n >= 1 && c.in_channels > 0 && c.out_channels > 0 && c.latent_channels > 0 && c.layers_per_block > 0 &&
              c.norm_num_groups > 0 && c.scaling_factor != 0.0f;
    for (int64_t ch : c.block_out_channels) ok = ok && ch > 0 && ch % c.norm_num_groups == 0;
    if (!ok)
        return make_error(ErrorCode::CORRUPT_FILE, path,
                          ": inconsistent VAE config (block_out_channels must be positive multiples of norm_num_groups "
                          "and the channel counts and scaling_factor non-zero)");
    return c;
}

// ---- loading --------------------------------------------------------------------------------------------------

namespace {

Status take_conv(WeightLoader& L, const std::string& name, int64_t out, int64_t in, int64_t k, Tensor* w, Tensor* b) {
    SD3_ASSIGN_OR_RETURN(*w, L.take(name + ".weight", {out, in, k, k}));
    SD3_ASSIGN_OR_RETURN(*b, L.take(name + ".bias", {out}));
    return {};
}

Status take_norm(WeightLoader& L, const std::string& name, int64_t c, Tensor* w, Tensor* b) {
    SD3_ASSIGN_OR_RETURN(*w, L.take(name + ".weight", {c}));
    SD3_ASSIGN_OR_RETURN(*b, L.take(name + ".bias", {c}));
    return {};
}

Status take_linear(WeightLoader& L, const std::string& name, int64_t c, Tensor* w, Tensor* b) {
    SD3_ASSIGN_OR_RETURN(*w, L.take(name + ".weight", {c, c}));
    SD3_ASSIGN_OR_RETURN(*b, L.take(name + ".bias", {c}));
    return {};
}

Status take_resnet(WeightLoader& L, const std::string& p, int64_t cin, int64_t cout, VaeResnetWeights* r) {
    SD3_TRY(take_norm(L, p + "norm1", cin, &r->norm1_w, &r->norm1_b));
    SD3_TRY(take_conv(L, p + "conv1", cout, cin, 3, &r->conv1_w, &r->conv1_b));
    SD3_TRY(take_norm(L, p + "norm2", cout, &r->norm2_w, &r->norm2_b));
    SD3_TRY(take_conv(L, p + "conv2", cout, cout, 3, &r->conv2_w, &r->conv2_b));
    if (cin != cout) SD3_TRY(take_conv(L, p + "conv_shortcut", cout, cin, 1, &r->shortcut_w, &r->shortcut_b));
    return {};
}

Status take_mid(WeightLoader& L, const std::string& p, int64_t c, bool attention, VaeMidWeights* m) {
    SD3_TRY(take_resnet(L, p + "resnets.0.", c, c, &m->resnet0));
    m->has_attention = attention;
    if (attention) {
        const std::string a = p + "attentions.0.";
        VaeAttentionWeights& w = m->attention;
        SD3_TRY(take_norm(L, a + "group_norm", c, &w.norm_w, &w.norm_b));
        SD3_TRY(take_linear(L, a + "to_q", c, &w.q_w, &w.q_b));
        SD3_TRY(take_linear(L, a + "to_k", c, &w.k_w, &w.k_b));
        SD3_TRY(take_linear(L, a + "to_v", c, &w.v_w, &w.v_b));
        SD3_TRY(take_linear(L, a + "to_out.0", c, &w.out_w, &w.out_b));
    }
    SD3_TRY(take_resnet(L, p + "resnets.1.", c, c, &m->resnet1));
    return {};
}

Status load_encoder(WeightLoader& L, const VaeConfig& c, VaeEncoderWeights* e) {
    const auto& ch = c.block_out_channels;
    const int64_t L2 = 2 * c.latent_channels;
    SD3_TRY(take_conv(L, "encoder.conv_in", ch[0], c.in_channels, 3, &e->conv_in_w, &e->conv_in_b));
    int64_t out = ch[0];
    for (size_t i = 0; i < ch.size(); ++i) {
        const int64_t in = out;
        out = ch[i];
        VaeBlockWeights blk;
        for (int64_t j = 0; j < c.layers_per_block; ++j) {
            VaeResnetWeights r;
            SD3_TRY(take_resnet(L, str_cat("encoder.down_blocks.", i, ".resnets.", j, "."), j == 0 ? in : out, out, &r));
            blk.resnets.push_back(std::move(r));
        }
        if (i + 1 < ch.size())
            SD3_TRY(take_conv(L, str_cat("encoder.down_blocks.", i, ".downsamplers.0.conv"), out, out, 3, &blk.sample_w,
                              &blk.sample_b));
        e->down.push_back(std::move(blk));
    }
    SD3_TRY(take_mid(L, "encoder.mid_block.", ch.back(), c.mid_block_add_attention, &e->mid));
    SD3_TRY(take_norm(L, "encoder.conv_norm_out", ch.back(), &e->norm_out_w, &e->norm_out_b));
    SD3_TRY(take_conv(L, "encoder.conv_out", L2, ch.back(), 3, &e->conv_out_w, &e->conv_out_b));
    if (c.use_quant_conv) SD3_TRY(take_conv(L, "quant_conv", L2, L2, 1, &e->quant_w, &e->quant_b));
    return {};
}

Status load_decoder(WeightLoader& L, const VaeConfig& c, VaeDecoderWeights* d) {
    const auto& ch = c.block_out_channels;
    const int64_t Lc = c.latent_channels;
    if (c.use_post_quant_conv) SD3_TRY(take_conv(L, "post_quant_conv", Lc, Lc, 1, &d->post_quant_w, &d->post_quant_b));
    SD3_TRY(take_conv(L, "decoder.conv_in", ch.back(), Lc, 3, &d->conv_in_w, &d->conv_in_b));
    SD3_TRY(take_mid(L, "decoder.mid_block.", ch.back(), c.mid_block_add_attention, &d->mid));
    const std::vector<int64_t> rev(ch.rbegin(), ch.rend());
    int64_t out = rev[0];
    for (size_t i = 0; i < rev.size(); ++i) {
        const int64_t prev = out;
        out = rev[i];
        VaeBlockWeights blk;
        for (int64_t j = 0; j < c.layers_per_block + 1; ++j) {  // the decoder has one resnet more per block
            VaeResnetWeights r;
            SD3_TRY(take_resnet(L, str_cat("decoder.up_blocks.", i, ".resnets.", j, "."), j == 0 ? prev : out, out, &r));
            blk.resnets.push_back(std::move(r));
        }
        if (i + 1 < rev.size())
            SD3_TRY(take_conv(L, str_cat("decoder.up_blocks.", i, ".upsamplers.0.conv"), out, out, 3, &blk.sample_w,
                              &blk.sample_b));
        d->up.push_back(std::move(blk));
    }
    SD3_TRY(take_norm(L, "decoder.conv_norm_out", ch[0], &d->norm_out_w, &d->norm_out_b));
    SD3_TRY(take_conv(L, "decoder.conv_out", c.out_channels, ch[0], 3, &d->conv_out_w, &d->conv_out_b));
    return {};
}

bool belongs_to_decoder(const std::string& name) {
    return name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0;
}

}  // namespace

Result<Vae> Vae::load(const VaeConfig& config, std::shared_ptr<const TensorSource> source, Part part) {
    WeightLoader L(std::move(source));
    Vae v;
    v.config_ = config;
    v.has_encoder_ = part != Part::DECODER;
    v.has_decoder_ = part != Part::ENCODER;
    if (v.has_encoder_) SD3_TRY(load_encoder(L, config, &v.enc_).with_context("loading the VAE encoder"));
    if (v.has_decoder_) SD3_TRY(load_decoder(L, config, &v.dec_).with_context("loading the VAE decoder"));
    for (const std::string& name : L.source().names()) {
        const bool dec = belongs_to_decoder(name);
        if ((dec && !v.has_decoder_) || (!dec && !v.has_encoder_ && (name.rfind("encoder.", 0) == 0 ||
                                                                     name.rfind("quant_conv.", 0) == 0)))
            L.ignore(name);
    }
    SD3_TRY(L.finish());
    return v;
}

Result<Vae> Vae::load_folder(const std::string& dir, Part part) {
    const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
    SD3_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(config_path));
    SD3_ASSIGN_OR_RETURN(VaeConfig config, VaeConfig::from_json(j, config_path));
    SD3_ASSIGN_OR_RETURN(std::shared_ptr<TensorSource> source,
                         SafetensorsSource::open(dir, {"diffusion_pytorch_model"}));
    return load(config, std::move(source), part);
}

Result<Vae> Vae::load_component(const Component& c, Part part) {
    if (!c.weights) return make_error(ErrorCode::NOT_FOUND, "the VAE component has no weights (", c.config_path, ")");
    SD3_ASSIGN_OR_RETURN(VaeConfig config, VaeConfig::from_json(c.config, c.config_path));
    return load(config, c.weights, part);
}

// ---- forward --------------------------------------------------------------------------------------------------

namespace {

// GroupNorm followed by SiLU, the pre-activation of every resnet half and of conv_out.
// The decoder's full-resolution tensors are 256-512 MiB each in bf16 at 1024²: every step below frees what it no
// longer reads before the next allocation (the pool reuses it in stream order), and SiLU and the residual add run
// in place, so a resnet holds at most its input, one intermediate and its output.
Tensor norm_silu(const Tensor& x, const Tensor& w, const Tensor& b, int64_t groups) {
    Tensor y = ops::group_norm(x, w, b, groups, kNormEps);
    ops::activation_(y, ops::Activation::SILU);
    return y;
}

Tensor conv3(const Tensor& x, const Tensor& w, const Tensor& b) { return ops::conv2d_banded(x, w, b, 1, 1); }

// ResnetBlock2D (resnet.py): conv2(silu(gn2(conv1(silu(gn1(x)))))) + shortcut(x); output_scale_factor 1.
Tensor resnet(const Tensor& x, const VaeResnetWeights& r, int64_t groups) {
    Tensor h = conv3(norm_silu(x, r.norm1_w, r.norm1_b, groups), r.conv1_w, r.conv1_b);  // [B, Cout, H, W]
    Tensor a = norm_silu(h, r.norm2_w, r.norm2_b, groups);
    h = Tensor();
    h = conv3(a, r.conv2_w, r.conv2_b);  // [B, Cout, H, W]
    a = Tensor();
    if (r.shortcut_w.defined()) ops::add_(h, ops::conv2d(x, r.shortcut_w, r.shortcut_b, 1, 0));
    else ops::add_(h, x);
    return h;
}

// Mid-block attention (AttnProcessor2_0 with residual_connection): pixels as tokens, one head of width C,
// GroupNorm over channels first, scale 1/sqrt(C), output projection, plus the input.
Tensor mid_attention(const Tensor& x, const VaeAttentionWeights& a, int64_t groups) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), T = H * W;
    const Tensor normed = ops::group_norm(x, a.norm_w, a.norm_b, groups, kNormEps);     // [B, C, H, W]
    const Tensor tokens = ops::copy(normed.view({B, C, T}).transpose(1, 2));             // [B, T, C]
    const Tensor q = ops::linear(tokens, a.q_w, a.q_b);                                  // [B, T, C]
    const Tensor k = ops::linear(tokens, a.k_w, a.k_b);                                  // [B, T, C]
    const Tensor v = ops::linear(tokens, a.v_w, a.v_b);                                  // [B, T, C]
    const float scale = 1.0f / std::sqrt(static_cast<float>(C));
    Tensor attn;                                                                         // [B, T, C]
    if (!x.device().is_cpu()) {
        attn = ops::attention(q, k, v, 1, scale);  // the CUDA backend chunks queries itself
    } else {
        attn = Tensor::empty({B, T, C}, DType::F32);
        for (int64_t t0 = 0; t0 < T; t0 += kAttentionQueryChunk) {
            const int64_t t1 = std::min(T, t0 + kAttentionQueryChunk);
            attn.slice(1, t0, t1).copy_from(ops::attention(q.slice(1, t0, t1), k, v, 1, scale));
        }
    }
    const Tensor out = ops::linear(attn, a.out_w, a.out_b);                              // [B, T, C]
    return ops::add(ops::copy(out.transpose(1, 2)).view({B, C, H, W}), x);
}

Tensor mid_block(const Tensor& x, const VaeMidWeights& m, int64_t groups) {
    Tensor h = resnet(x, m.resnet0, groups);
    if (m.has_attention) h = mid_attention(h, m.attention, groups);
    return resnet(h, m.resnet1, groups);
}

}  // namespace

Tensor VaeLatentDist::sample(TorchGenerator& generator) const {
    const Tensor noise = generator.randn(mean.shape());
    Tensor out = Tensor::empty(mean.shape(), DType::F32);
    const Tensor m = mean.contiguous(), lv = logvar.contiguous();
    for (int64_t i = 0; i < out.numel(); ++i)
        out.data<float>()[i] = m.data<float>()[i] + std::exp(0.5f * lv.data<float>()[i]) * noise.data<float>()[i];
    return out;
}

Result<VaeLatentDist> Vae::encode(const Tensor& image) const {
    if (!has_encoder_) return make_error(ErrorCode::INVALID_ARGUMENT, "the VAE was loaded without its encoder");
    if (image.dim() != 4 || image.size(1) != config_.in_channels || image.size(2) < 1 || image.size(3) < 1)
        return make_error(ErrorCode::INVALID_ARGUMENT, "VAE encode wants images [B, ", config_.in_channels,
                          ", H, W], got ", image.describe());
    const int64_t G = config_.norm_num_groups;
    Tensor h = conv3(nn::to_placement(image, placement_), enc_.conv_in_w, enc_.conv_in_b);  // [B, C0, H, W]
    for (const VaeBlockWeights& blk : enc_.down) {
        for (const VaeResnetWeights& r : blk.resnets) h = resnet(h, r, G);
        if (blk.sample_w.defined())  // Downsample2D with padding 0: pad right and bottom by one, stride-2 conv
            h = ops::conv2d_banded(ops::pad_right_bottom(h, 1, 1), blk.sample_w, blk.sample_b, 2, 0);
    }
    h = mid_block(h, enc_.mid, G);
    h = conv3(norm_silu(h, enc_.norm_out_w, enc_.norm_out_b, G), enc_.conv_out_w, enc_.conv_out_b);  // [B, 2L, h, w]
    if (enc_.quant_w.defined()) h = ops::conv2d(h, enc_.quant_w, enc_.quant_b, 1, 0);
    const int64_t Lc = config_.latent_channels;
    VaeLatentDist d;
    h = host_f32(h);
    d.mean = h.slice(1, 0, Lc).contiguous();          // [B, L, h, w]
    d.logvar = h.slice(1, Lc, 2 * Lc).contiguous();   // [B, L, h, w]
    float* lv = d.logvar.data<float>();
    for (int64_t i = 0; i < d.logvar.numel(); ++i) lv[i] = std::clamp(lv[i], -30.0f, 20.0f);
    return d;
}

Result<Tensor> Vae::decode(const Tensor& latents) const {
    if (!has_decoder_) return make_error(ErrorCode::INVALID_ARGUMENT, "the VAE was loaded without its decoder");
    if (latents.dim() != 4 || latents.size(1) != config_.latent_channels)
        return make_error(ErrorCode::INVALID_ARGUMENT, "VAE decode wants latents [B, ", config_.latent_channels,
                          ", h, w], got ", latents.describe());
    const int64_t G = config_.norm_num_groups;
    Tensor h = nn::to_placement(latents, placement_);
    if (dec_.post_quant_w.defined()) h = ops::conv2d(h, dec_.post_quant_w, dec_.post_quant_b, 1, 0);
    h = conv3(h, dec_.conv_in_w, dec_.conv_in_b);  // [B, Clast, h, w]
    h = mid_block(h, dec_.mid, G);
    for (const VaeBlockWeights& blk : dec_.up) {
        for (const VaeResnetWeights& r : blk.resnets) h = resnet(h, r, G);
        if (blk.sample_w.defined()) {
            const Tensor up = ops::upsample_nearest2x(h);
            h = Tensor();
            h = conv3(up, blk.sample_w, blk.sample_b);
        }
    }
    return host_f32(conv3(norm_silu(h, dec_.norm_out_w, dec_.norm_out_b, G), dec_.conv_out_w, dec_.conv_out_b));
}

Status Vae::to(const nn::Placement& placement) {
    if (placement.on_cpu() && placement_.on_cpu()) return {};
    nn::WeightPlacer placer;
    auto resnet_w = [&](VaeResnetWeights& r) {
        for (Tensor* t : {&r.norm1_w, &r.norm1_b, &r.conv1_w, &r.conv1_b, &r.norm2_w, &r.norm2_b, &r.conv2_w,
                          &r.conv2_b, &r.shortcut_w, &r.shortcut_b})
            placer.convert(*t);
    };
    auto mid_w = [&](VaeMidWeights& m) {
        resnet_w(m.resnet0);
        resnet_w(m.resnet1);
        VaeAttentionWeights& a = m.attention;
        for (Tensor* t : {&a.norm_w, &a.norm_b, &a.q_w, &a.k_w, &a.v_w, &a.out_w, &a.q_b, &a.k_b, &a.v_b, &a.out_b})
            placer.convert(*t);
    };
    auto blocks_w = [&](std::vector<VaeBlockWeights>& blocks) {
        for (VaeBlockWeights& b : blocks) {
            for (VaeResnetWeights& r : b.resnets) resnet_w(r);
            placer.convert(b.sample_w);
            placer.convert(b.sample_b);
        }
    };
    for (Tensor* t : {&enc_.conv_in_w, &enc_.conv_in_b, &enc_.norm_out_w, &enc_.norm_out_b, &enc_.conv_out_w,
                      &enc_.conv_out_b, &enc_.quant_w, &enc_.quant_b, &dec_.post_quant_w, &dec_.post_quant_b,
                      &dec_.conv_in_w, &dec_.conv_in_b, &dec_.norm_out_w, &dec_.norm_out_b, &dec_.conv_out_w,
                      &dec_.conv_out_b})
        placer.convert(*t);
    blocks_w(enc_.down);
    blocks_w(dec_.up);
    mid_w(enc_.mid);
    mid_w(dec_.mid);
    SD3_TRY(placer.place(placement, "VAE").status());
    placement_ = placement;
    return {};
}

namespace {
// blend_v / blend_h of diffusers' AutoencoderKL, in place on `b` ([B, C, H, W]): the first `extent` rows (or
// columns) of b become a's last ones weighted 1 - k/extent plus b's weighted k/extent (float32 weights and ops).
void blend(const Tensor& a, Tensor& b, int64_t extent, int dim) {
    extent = std::min({a.size(dim), b.size(dim), extent});
    for (int64_t k = 0; k < extent; ++k) {
        const float wa = static_cast<float>(1.0 - static_cast<double>(k) / static_cast<double>(extent));
        const float wb = static_cast<float>(static_cast<double>(k) / static_cast<double>(extent));
        const Tensor src = a.select(dim, a.size(dim) - extent + k);  // [B, C, W] or [B, C, H]
        Tensor dst = b.select(dim, k);
        const int64_t n0 = src.size(0), n1 = src.size(1), n2 = src.size(2);
        for (int64_t i0 = 0; i0 < n0; ++i0)
            for (int64_t i1 = 0; i1 < n1; ++i1)
                for (int64_t i2 = 0; i2 < n2; ++i2) {
                    const float x = src.data<float>()[i0 * src.stride(0) + i1 * src.stride(1) + i2 * src.stride(2)];
                    float& y = dst.data<float>()[i0 * dst.stride(0) + i1 * dst.stride(1) + i2 * dst.stride(2)];
                    const float pa = x * wa, pb = y * wb;
                    y = pa + pb;
                }
    }
}
}  // namespace

Result<Tensor> Vae::decode_tiled(const Tensor& latents_in, const VaeTiling& tiling) const {
    const int64_t f = config_.scale_factor();
    const int64_t tile = tiling.tile_latent > 0 ? tiling.tile_latent : config_.sample_size / f;
    if (tile < 1 || !(tiling.overlap >= 0.0 && tiling.overlap < 1.0))
        return make_error(ErrorCode::INVALID_ARGUMENT, "VAE tiling needs a tile of at least one latent and an overlap in "
                          "[0, 1) (got ", tile, ", ", tiling.overlap, ")");
    if (latents_in.dim() != 4 || (latents_in.size(2) <= tile && latents_in.size(3) <= tile)) return decode(latents_in);
    const Tensor latents = latents_in.to(DType::F32).contiguous();
    const int64_t H = latents.size(2), W = latents.size(3);
    const int64_t tile_px = tile * f;
    const int64_t step = static_cast<int64_t>(static_cast<double>(tile) * (1.0 - tiling.overlap));  // overlap_size
    const int64_t extent = static_cast<int64_t>(static_cast<double>(tile_px) * tiling.overlap);     // blend_extent
    const int64_t limit = tile_px - extent;                                                         // row_limit
    if (step < 1) return make_error(ErrorCode::INVALID_ARGUMENT, "VAE tiling: the overlap leaves no step between tiles");
    std::vector<std::vector<Tensor>> rows;
    for (int64_t i = 0; i < H; i += step) {
        std::vector<Tensor> row;
        for (int64_t j = 0; j < W; j += step) {
            const Tensor t = latents.slice(2, i, std::min(H, i + tile)).slice(3, j, std::min(W, j + tile)).contiguous();
            SD3_ASSIGN_OR_RETURN(Tensor d, decode(t));  // [B, 3, th*f, tw*f]
            row.push_back(d.contiguous());
        }
        rows.push_back(std::move(row));
    }
    std::vector<Tensor> out_rows;
    for (size_t i = 0; i < rows.size(); ++i) {
        std::vector<Tensor> parts;
        for (size_t j = 0; j < rows[i].size(); ++j) {
            Tensor& t = rows[i][j];  // blended in place, as diffusers does: later tiles see the blended values
            if (i > 0) blend(rows[i - 1][j], t, extent, 2);
            if (j > 0) blend(rows[i][j - 1], t, extent, 3);
            parts.push_back(t.slice(2, 0, std::min(limit, t.size(2))).slice(3, 0, std::min(limit, t.size(3))));
        }
        out_rows.push_back(ops::cat(parts, 3));
    }
    return ops::cat(out_rows, 2);
}

Tensor Vae::latents_to_vae(const Tensor& z_in) const {
    Tensor x = z_in.to(DType::F32).clone();
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] = p[i] / config_.scaling_factor + config_.shift_factor;
    return x;
}

Tensor Vae::vae_to_latents(const Tensor& x_in) const {
    Tensor z = x_in.to(DType::F32).clone();
    float* p = z.data<float>();
    for (int64_t i = 0; i < z.numel(); ++i) p[i] = (p[i] - config_.shift_factor) * config_.scaling_factor;
    return z;
}

}  // namespace sd3
