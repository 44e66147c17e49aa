// Text-to-image: diffusers' StableDiffusion3Pipeline.__call__ (research/sd3-architecture.md §1.9, §8;
// reference-training.md §5) over our parts: the three tokenizers, the text encoders (one at a time, released
// after the prompt is encoded), the MMDiT with LoRAs attached at a scale, the flow-matching sampler of
// infer/sampling.h with classifier-free guidance, and the VAE decoder. The library never prints: progress goes
// through callbacks, notes through log.h.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "infer/prompt_encoding.h"
#include "infer/sampling.h"
#include "infer/scheduler.h"
#include "io/image.h"
#include "io/model_folder.h"
#include "models/mmdit.h"
#include "models/vae.h"

namespace sd3 {

// diffusers' defaults (§1.9): 28 steps, guidance 7.0, 1024x1024 (sample_size · vae_scale_factor), T5 length 256,
// negative prompt "".
struct GenerateRequest {
    std::string prompt;
    std::string negative_prompt;
    int64_t steps = 28;
    float guidance_scale = 7.0f;
    int64_t width = 0;   // 0: the model's default (transformer sample_size · VAE scale factor)
    int64_t height = 0;
    uint64_t seed = 42;
    int64_t num_images = 1;
    int max_sequence_length = 256;
    Tensor initial_latents;  // [num_images, 16, h, w] f32; when defined it replaces the seeded noise
};

struct LoraRequest {
    std::string path;   // a LoRA .safetensors (diffusers/PEFT layout, as the trainer writes it)
    float scale = 1.0f; // joint_attention_kwargs={"scale": s}: multiplies every LoRA delta
};

struct PipelineOptions {
    TextEncoderOptions text;          // T5 weight format, clip_skip...; max_sequence_length comes from the request
    std::vector<LoraRequest> loras;   // attached unfused, each at its scale (exact to the reference's unfused LoRA)
    bool fuse_loras = false;          // W += s·(alpha/r)·B·A once (pipe.fuse_lora, as the reference's run_trained.py)
                                      // instead of the unfused low-rank path: faster, equal up to rounding
    bool vae_tiling = false;          // diffusers' vae.enable_tiling(): decode large images in blended tiles
    nn::Placement placement;          // where every model runs (text.placement is set from it)
    std::optional<QuantFormat> base_format;  // the transformer's block weights quantized (int8, fp8, nf4)
    size_t transformer_max_resident_bytes = SIZE_MAX;  // blocks beyond it stream from host memory
    bool single_use = false;  // one generate call: the transformer is freed before the VAE decoder loads, so the
                              // decoder's full-resolution activations do not stack on its weights
    bool replay_steps = true;  // record a resident transformer's step once and replay it (sample_flow_match): faster,
                               // but the recording's activations come from a second memory pool while it runs
};

// What the pipeline reports as it goes: "encoding prompt", "loading transformer", "decoding", ...
using StageFn = std::function<void(const std::string& stage)>;

struct GenerateOutput {
    Tensor initial_latents;       // [K, 16, h, w] what the sampler started from
    Tensor latents;               // [K, 16, h, w] final latents, before the VAE (diffusers' output_type="latent")
    Tensor images_unit;           // [K, 3, H, W] in [0, 1] (output_type="pt")
    std::vector<Image> images;    // K 8-bit images (output_type="pil")
    int64_t width = 0, height = 0;
};

class TextToImage {
  public:
    // Checks that the model has every part generation needs (naming the option that supplies a missing one), reads
    // the configs and tokenizers and the LoRA files; loads no large weights yet.
    static Result<TextToImage> open(const ModelFolder& model, const PipelineOptions& options = {});

    // Checks the request (sizes multiple of 16, max_sequence_length <= 512, ...) against the model without running
    // anything, and fills in the default size.
    Result<GenerateRequest> resolve(const GenerateRequest& request) const;

    // Runs the whole pipeline. The text encoders are loaded and released within the call; the transformer and the
    // VAE decoder stay loaded for later calls (release_models() frees them).
    Result<GenerateOutput> generate(const GenerateRequest& request, const ProgressFn& progress = {},
                                    const StageFn& stage = {});
    // Only the sampling part, from given prompt embeddings (for validation during training and for tests).
    Result<GenerateOutput> generate_from_embeds(const GenerateRequest& request, const PromptEmbeds& positive,
                                                const PromptEmbeds& negative, const ProgressFn& progress = {},
                                                const StageFn& stage = {});
    // The encode_prompt part: positive and negative embeddings, one row each (the negative left empty when
    // `with_negative` is false: no guidance, as diffusers skips it when guidance_scale <= 1).
    Result<std::pair<PromptEmbeds, PromptEmbeds>> encode_prompts(const std::string& prompt,
                                                                 const std::string& negative_prompt,
                                                                 int max_sequence_length, const StageFn& stage = {},
                                                                 bool with_negative = true);

    // The transformer, loaded (with the LoRAs attached) if it is not yet; for tools and tests that inspect or
    // patch it.
    Result<MMDiT*> transformer(const StageFn& stage = {});
    // Samples with `model` (owned by the caller, on its own placement, with whatever LoRA it carries: the
    // trainer's live model for validation) instead of loading the transformer.
    void use_transformer(const MMDiT* model) { external_transformer_ = model; }
    void release_models();
    int64_t vae_scale_factor() const { return vae_config_.scale_factor(); }
    int64_t default_size() const { return mmdit_config_.sample_size * vae_scale_factor(); }
    const FlowMatchEulerScheduler& scheduler() const { return scheduler_; }

  private:
    TextToImage() = default;
    Status ensure_transformer(const StageFn& stage);
    Status ensure_vae(const StageFn& stage);

    ModelFolder model_;
    PipelineOptions options_;
    std::optional<PromptTokenizer> tokenizer_;
    FlowMatchEulerScheduler scheduler_;
    MMDiTConfig mmdit_config_;
    VaeConfig vae_config_;
    std::vector<std::pair<LoraSet, float>> loras_;
    std::optional<MMDiT> transformer_;
    const MMDiT* external_transformer_ = nullptr;
    std::optional<Vae> vae_;
};

// The PNG text chunks the command line writes: prompt, negative prompt, seed and the settings, plus
// "parameters" in the AUTOMATIC1111 style that image viewers and other tools read.
ImageText generation_text(const GenerateRequest& request, const std::vector<LoraRequest>& loras, int64_t image_index,
                          const std::string& model);

}  // namespace sd3
