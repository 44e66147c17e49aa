// TrainComponents for a Stable Diffusion 3 model folder: the tokenizers and text encoders of
// infer/prompt_encoding.h (one encoder in memory at a time), the VAE encoder of models/vae.h, the MMDiT with
// trainable LoRA of models/mmdit.h. Text-to-image (validation, class images) is added when infer/pipeline.h exists.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/status.h"
#include "io/single_file.h"
#include "infer/prompt_encoding.h"
#include "models/mmdit.h"
#include "nn/placement.h"

#include <functional>
#include "train/components.h"

namespace sd3::train {

struct Sd3ComponentOptions {
    int max_sequence_length = 77;     // T5 tokens in training (the reference's --max_sequence_length)
    bool gradient_checkpointing = false;
    // Where the models run: the encoders in the cache phase, then the transformer (with its float32 LoRA master
    // weights and gradients, where the loss and the optimizer run too; the adapters use a copy of the LoRA in the
    // compute dtype).
    nn::Placement placement;
    std::optional<QuantFormat> base_format;  // the transformer's block weights quantized (int8, fp8, nf4)
    size_t transformer_max_resident_bytes = SIZE_MAX;  // blocks beyond it stream from host memory (MMDiT::to)
    TextEncoderOptions text;  // T5's weight format and memory budget (its placement comes from `placement`)
    // Applied to the transformer after loading (tests patch the stored fp16 pos_embed table with the float32 one
    // the golden reference ran with).
    std::function<void(MMDiT&)> patch_transformer;
};

// `spec`: a diffusers folder, a single-file checkpoint, plus separate encoder/VAE files (io/single_file.h).
Result<TrainComponents> make_sd3_components(const ModelSpec& spec, const Sd3ComponentOptions& options);

}  // namespace sd3::train
