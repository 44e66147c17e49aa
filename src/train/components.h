// What the trainer needs from the models, as small interfaces, so the loop is written and tested before (and
// independently of) the MMDiT, VAE, text encoders and pipeline: the integration fills TrainComponents with
// adapters over models/mmdit.h (+ LoRA), models/vae.h, infer/prompt_encoding.h and infer/pipeline.h.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "nn/lora.h"

namespace sd3::train {

// LoRA settings (reference-training.md 4.1: rank, alpha = rank unless given, target module suffixes, optional
// block restriction, dropout) and the slot table {PEFT name, offset, shape} of the flat buffers are nn/lora.h's.
using LoraSettings = sd3::LoraTrainConfig;
using LoraSlot = sd3::LoraSlot;

// The frozen MMDiT with trainable LoRA adapters. Params and grads each live in ONE contiguous float32 buffer laid
// out by slots(), on the device the model runs on, where the optimizer updates them; backward accumulates (+=)
// into grads.
class TrainableModel {
  public:
    virtual ~TrainableModel() = default;
    virtual const std::vector<LoraSlot>& slots() const = 0;
    virtual int64_t lora_numel() const = 0;
    // [P] f32 master params. The caller may write them (optimizer step, resume): the model's compute copy follows.
    virtual Tensor lora_params() = 0;
    virtual Tensor lora_grads() = 0;  // [P] f32
    // Velocity prediction for x_t [B, 16, h, w], timesteps f32 [B] (= 1000 sigma), prompt_embeds [B, T, D],
    // pooled [B, P] (each on any device, best staged by stage_input), on the model's device (in its compute dtype
    // there). Keeps what backward needs. `rng_seed` seeds LoRA dropout for this call.
    virtual Result<Tensor> forward(const Tensor& x_t, const Tensor& timesteps, const Tensor& prompt_embeds,
                                   const Tensor& pooled, uint64_t rng_seed) = 0;
    // A forward or loss input (x_t, prompt_embeds, pooled, x0, noise) brought to where the model runs, ahead of
    // its use: the trainer calls it from the thread that builds the next micro-batch, so the upload leaves the
    // critical path.
    // The input itself where there is nothing to do (the CPU) or the device cannot take it now.
    virtual Tensor stage_input(const Tensor& host) { return host; }
    // Accumulates d(loss)/d(lora params) given d(loss)/d(prediction) [B, 16, h, w] (f32, any device) of the last
    // forward.
    virtual Status backward(const Tensor& grad_pred) = 0;
    // Whether forward, the loss and backward queue the same device work on the same memory for every micro-batch
    // of one shape whose inputs sit in the same buffers, so the trainer may record them once and replay them (a
    // CUDA graph, DeviceGraph): true for a GPU model without float16 loss scaling (which reads the gradients
    // back), streamed blocks (whose slots keep host-side state) or LoRA dropout (seeded per call).
    virtual bool replayable() const { return false; }
    // The dtype forward computes prompt_embeds and pooled in: given in it, they need no conversion on the device.
    virtual DType text_input_dtype() const { return DType::F32; }
    // Plans memory for micro-batches of `batch` latents [16, h, w] with `context_len` text tokens (under a memory
    // budget, how many blocks may skip their recompute) and says what they will hold (weights, LoRA, saved
    // activations) in one line for the start-up report; empty when the model cannot say. Called before training.
    virtual std::string plan_memory(int64_t /*batch*/, int64_t /*h*/, int64_t /*w*/, int64_t /*context_len*/) {
        return {};
    }
};

// The VAE's posterior for one image: mean and logvar [16, h, w] (before shift and scale).
struct LatentDist {
    Tensor mean;
    Tensor logvar;
};

struct EncodedPrompt {
    Tensor prompt_embeds;  // [T, D]
    Tensor pooled;         // [P]
};

// Validation / class-image generation request through the text-to-image path.
struct GenerateRequest {
    std::string prompt;
    int width = 0, height = 0;  // 0: the model's default
    int steps = 28;
    double guidance_scale = 7.0;
    uint64_t seed = 0;
    std::string out_png;        // where to write the image
    bool with_lora = true;      // validation applies the current LoRA; class images use the base model
    // Encoded in the cache phase (validation): when defined, no text encoder is loaded to render the image.
    EncodedPrompt positive, negative;
};

struct TrainComponents {
    // Encodes prompts through the three text encoders, one encoder in memory at a time, and frees them.
    std::function<Result<std::vector<EncodedPrompt>>(const std::vector<std::string>& prompts)> encode_prompts;
    // Loads the VAE encoder once for the cache phase; the returned encoder maps [3, R, R] in [-1, 1] to its
    // posterior. Freed when the returned object is destroyed.
    std::function<Result<std::function<Result<LatentDist>(const Tensor& image)>>()> load_vae_encoder;
    // VAE scaling and shift factors (vae/config.json): x0 = (z - shift) * scaling (upstream fix of the seed).
    double vae_scaling_factor = 1.5305;
    double vae_shift_factor = 0.0609;
    // Scheduler shift (scheduler/scheduler_config.json) and number of training timesteps.
    double scheduler_shift = 3.0;
    int num_train_timesteps = 1000;
    // Loads the transformer and attaches LoRA (A ~ N(0, 1/r), B = 0 from `init_seed`).
    std::function<Result<std::unique_ptr<TrainableModel>>(const LoraSettings& lora, uint64_t init_seed)>
        load_transformer;
    // Renders images to their out_png (validation with the live LoRA of `model`: the training transformer
    // itself, or class images with the base model when `model` is null / with_lora is false). Optional: without it validation and class-image generation
    // are errors.
    std::function<Status(const std::vector<GenerateRequest>& requests, TrainableModel* model, const LoraSettings& lora)>
        generate;
    // A short identity of the model (path + component hashes) for cache keys.
    std::string model_identity;
};

}  // namespace sd3::train
