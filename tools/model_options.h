// The options every command that loads a model shares (--model plus the parts users mix in, issue 9), so that
// generate, train, convert and friends accept a diffusers folder, a single file or separate encoder files alike.
#pragma once

#include <CLI/CLI.hpp>

#include "io/single_file.h"

namespace sd3::tools {

// `model_required`: whether --model must be given (convert takes the input positionally instead).
inline void add_model_options(CLI::App* sub, ModelSpec& spec, bool model_required = true) {
    if (model_required)
        sub->add_option("--model", spec.model, "diffusers SD3 folder or single-file checkpoint (.safetensors)")->required();
    sub->add_option("--tokenizers", spec.tokenizers,
                    "folder with tokenizer/, tokenizer_2/, tokenizer_3/ (e.g. a diffusers SD3 folder); single files carry none");
    sub->add_option("--clip-l", spec.clip_l, "CLIP-L weights (clip_l.safetensors): adds or replaces the model's");
    sub->add_option("--clip-g", spec.clip_g, "CLIP-G weights (clip_g.safetensors): adds or replaces the model's");
    sub->add_option("--t5", spec.t5, "T5-XXL weights (t5xxl_fp16 / t5xxl_fp8_e4m3fn.safetensors): adds or replaces");
    sub->add_option("--vae", spec.vae, "VAE weights (LDM or diffusers naming): adds or replaces the model's");
}

}  // namespace sd3::tools
