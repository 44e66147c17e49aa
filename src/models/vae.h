// The SD3 VAE: diffusers' AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks (16 latent channels for
// SD3, no quant convs, research/sd3-architecture.md §1.3, §4). Encoder to the latent distribution (mean and
// logvar), decoder from latents, and the latent normalization of §4.4 as separate helpers. float32 on the CPU.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "core/tensor.h"
#include "nn/placement.h"
#include "io/model_folder.h"
#include "io/tensor_source.h"

namespace sd3 {

struct VaeConfig {
    // diffusers AutoencoderKL's constructor defaults; SD3's config.json overrides most of them.
    int64_t in_channels = 3;
    int64_t out_channels = 3;
    int64_t latent_channels = 4;
    std::vector<int64_t> block_out_channels = {64};
    int64_t layers_per_block = 1;
    int64_t norm_num_groups = 32;
    bool mid_block_add_attention = true;
    bool use_quant_conv = true;
    bool use_post_quant_conv = true;
    float scaling_factor = 0.18215f;
    float shift_factor = 0.0f;  // null in the config means no shift
    int64_t sample_size = 32;    // image side the VAE was built for; sets the default tile of tiled decoding

    // Pixels per latent along each side: 2^(number of blocks - 1) (diffusers' vae_scale_factor).
    int64_t scale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
    // From vae/config.json; `config_path` names the file in errors. Only silu and the 2D encoder/decoder block
    // types are supported.
    static Result<VaeConfig> from_json(const nlohmann::json& j, const std::string& config_path);
};

struct VaeResnetWeights {  // ResnetBlock2D without time embedding
    Tensor norm1_w, norm1_b;  // [Cin]
    Tensor conv1_w, conv1_b;  // [Cout, Cin, 3, 3], [Cout]
    Tensor norm2_w, norm2_b;  // [Cout]
    Tensor conv2_w, conv2_b;  // [Cout, Cout, 3, 3], [Cout]
    Tensor shortcut_w, shortcut_b;  // [Cout, Cin, 1, 1], [Cout]; undefined when Cin == Cout
};

struct VaeAttentionWeights {  // the mid block's single-head self-attention over pixels
    Tensor norm_w, norm_b;          // [C]
    Tensor q_w, k_w, v_w, out_w;    // [C, C]
    Tensor q_b, k_b, v_b, out_b;    // [C]
};

struct VaeMidWeights {
    VaeResnetWeights resnet0, resnet1;
    bool has_attention = true;
    VaeAttentionWeights attention;
};

struct VaeBlockWeights {
    std::vector<VaeResnetWeights> resnets;
    Tensor sample_w, sample_b;  // the down/upsampler's conv [C, C, 3, 3], [C]; undefined for the last block
};

struct VaeEncoderWeights {
    Tensor conv_in_w, conv_in_b;      // [C0, in, 3, 3]
    std::vector<VaeBlockWeights> down;
    VaeMidWeights mid;
    Tensor norm_out_w, norm_out_b;    // [Clast]
    Tensor conv_out_w, conv_out_b;    // [2L, Clast, 3, 3]
    Tensor quant_w, quant_b;          // [2L, 2L, 1, 1] when use_quant_conv
};

struct VaeDecoderWeights {
    Tensor post_quant_w, post_quant_b;  // [L, L, 1, 1] when use_post_quant_conv
    Tensor conv_in_w, conv_in_b;        // [Clast, L, 3, 3]
    VaeMidWeights mid;
    std::vector<VaeBlockWeights> up;    // up_blocks in diffusers order (widest first)
    Tensor norm_out_w, norm_out_b;      // [C0]
    Tensor conv_out_w, conv_out_b;      // [out, C0, 3, 3]
};

// DiagonalGaussianDistribution of the encoder (both [B, L, H/f, W/f]): logvar is clamped to [-30, 20].
struct VaeLatentDist {
    Tensor mean;
    Tensor logvar;
    // mean + exp(0.5 * logvar) * randn(mean.shape, generator) (diffusers' sample(generator)).
    Tensor sample(TorchGenerator& generator) const;
};

// diffusers' AutoencoderKL.enable_tiling(): tiles of tile_latent latents (default sample_size / scale factor, 128
// for SD3), overlapping by `overlap` of a tile, blended linearly over the overlap in pixels.
struct VaeTiling {
    int64_t tile_latent = 0;  // 0: from the config
    double overlap = 0.25;
};

class Vae {
  public:
    enum class Part { BOTH, ENCODER, DECODER };
    // Takes the tensors of the chosen part(s) with the shapes the config implies (float32); any tensor left over is
    // an error unless it belongs to the part not loaded.
    static Result<Vae> load(const VaeConfig& config, std::shared_ptr<const TensorSource> source,
                            Part part = Part::BOTH);
    // A diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors).
    static Result<Vae> load_folder(const std::string& dir, Part part = Part::BOTH);
    // A model's `vae` component (folder or single file: its config and weights in diffusers naming).
    static Result<Vae> load_component(const Component& component, Part part = Part::BOTH);

    // image [B, in, H, W] in [-1, 1] -> the latent distribution before shift and scale.
    Result<VaeLatentDist> encode(const Tensor& image) const;
    // latents [B, L, h, w] (already unscaled: see latents_to_vae) -> image [B, out, h*f, w*f], roughly [-1, 1].
    Result<Tensor> decode(const Tensor& latents) const;

    // diffusers' tiled_decode: decodes overlapping tiles separately (bounded memory, but no attention across tiles,
    // so the result differs from decode() near and across seams) and blends them. Latents no larger than one tile
    // go through decode() unchanged, as in diffusers.
    Result<Tensor> decode_tiled(const Tensor& latents, const VaeTiling& tiling = {}) const;

    // What the transformer works on -> what the decoder takes: z / scaling_factor + shift_factor (float32 ops,
    // in this order, as the pipeline's `latents / scaling_factor + shift_factor`).
    Tensor latents_to_vae(const Tensor& z) const;
    // The encoder's latents -> what the transformer works on: (x - shift_factor) * scaling_factor.
    Tensor vae_to_latents(const Tensor& x) const;

    // Moves the weights into one allocation on the placement's device (float weights in its dtype). encode and
    // decode take inputs anywhere and return float32 on the CPU.
    Status to(const nn::Placement& placement);

    const VaeConfig& config() const { return config_; }
    bool has_encoder() const { return has_encoder_; }
    bool has_decoder() const { return has_decoder_; }

  private:
    VaeConfig config_;
    bool has_encoder_ = false, has_decoder_ = false;
    VaeEncoderWeights enc_;
    VaeDecoderWeights dec_;
    nn::Placement placement_;
};

}  // namespace sd3
