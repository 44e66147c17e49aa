// SD3 prompt encoding as diffusers' StableDiffusion3Pipeline.encode_prompt does it (research/sd3-architecture.md
// §8.1, reference-training.md §3.4): CLIP-L and CLIP-G penultimate states concatenated on channels, zero-padded to
// T5's width, followed on the token axis by T5's output; pooled = both projected pooled outputs concatenated.
// TextEncoders holds the three encoders and lets each be loaded, used on a list of prompts and released before
// the next one is loaded (the training cache phase keeps only one encoder in memory at a time).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/model_folder.h"
#include "models/clip_text.h"
#include "models/t5_encoder.h"
#include "nn/placement.h"
#include "text/clip_tokenizer.h"
#include "text/t5_tokenizer.h"

namespace sd3 {

enum class TextEncoderId { CLIP_L = 0, CLIP_G = 1, T5 = 2 };
const char* text_encoder_name(TextEncoderId id);  // "CLIP-L (text_encoder)", ...

struct TextEncoderOptions {
    T5LoadOptions t5;                 // T5's weight format (default int8, as the reference trains)
    int max_sequence_length = 256;    // T5 tokens: 256 for generation (diffusers' default), 77 in the reference training
    int clip_skip = 0;                // 0 = hidden_states[-2], SD3's default; applied to the prompt, not the negative
    int batch_size = 8;               // prompts per encoder forward in encode_tokens (rows are independent)
    nn::Placement placement;          // where the encoders run (T5 runs fp16 in float32: nn::overflow_safe)
    // Device memory T5's blocks may hold; the blocks beyond it stream from host memory (0, and at most: what is
    // free now, less 1 GiB for activations).
    size_t t5_max_resident_bytes = 0;
};

// One encoder's output for a batch of B prompts.
struct ClipEmbeds {
    Tensor hidden;  // [B, 77, D]  penultimate hidden states
    Tensor pooled;  // [B, P]      projected pooled output
};

struct PromptEmbeds {
    Tensor prompt_embeds;  // [B, 77 + L, D_t5]  (CLIP tokens first, then T5 tokens)
    Tensor pooled;         // [B, P_l + P_g]
};

// The concatenation of §8.1. t5_hidden [B, L, D_t5]; if undefined (a model without T5) zeros of
// [B, t5_length, t5_width] take its place, as diffusers does when text_encoder_3 is None.
Result<PromptEmbeds> combine_prompt_embeds(const ClipEmbeds& clip_l, const ClipEmbeds& clip_g, const Tensor& t5_hidden,
                                           int64_t t5_width = 0, int64_t t5_length = 0);

// Token ids of one prompt for the three encoders, each [1, T] int32 (CLIP: 77, T5: max_sequence_length).
struct PromptTokens {
    Tensor clip_l, clip_g, t5;
};

// The three tokenizers of an SD3 model (tokenizer, tokenizer_2, tokenizer_3), tokenizing a prompt as
// encode_prompt does: CLIP padded/truncated to 77 (CLIP-L pads with 49407, CLIP-G with "!" = 0, from each folder's
// config), T5 padded/truncated to max_sequence_length with </s> kept.
class PromptTokenizer {
  public:
    static Result<PromptTokenizer> open(const ModelFolder& model);
    static Result<PromptTokenizer> load(const std::string& clip_l_dir, const std::string& clip_g_dir,
                                        const std::string& t5_dir);
    PromptTokens tokenize(std::string_view prompt, int max_sequence_length) const;

  private:
    std::shared_ptr<const ClipTokenizer> clip_l_, clip_g_;
    std::shared_ptr<const T5Tokenizer> t5_;
};

class TextEncoders {
  public:
    // Keeps the three components (configs and weight sources) and parses their configs; loads no weights.
    static Result<TextEncoders> create(const Component& clip_l, const Component& clip_g, const Component& t5,
                                       const TextEncoderOptions& options = {});
    // The same from a model's text_encoder, text_encoder_2 and text_encoder_3 components.
    static Result<TextEncoders> open(const ModelFolder& model, const TextEncoderOptions& options = {});

    Status load(TextEncoderId id);  // no-op when already loaded
    void release(TextEncoderId id);  // frees the encoder's weights; load() brings them back
    bool is_loaded(TextEncoderId id) const;

    // Run one loaded encoder on ids [B, T] (an error if it is not loaded).
    Result<ClipEmbeds> encode_clip(TextEncoderId id, const Tensor& ids, int clip_skip = 0) const;
    Result<Tensor> encode_t5(const Tensor& ids) const;  // [B, L, D_t5]

    // The whole encoding for a list of prompts, one encoder at a time: CLIP-L is loaded (if needed), run on every
    // prompt and released (if this call loaded it), then CLIP-G, then T5; then the parts are combined.
    // Output i is prompt i's. Negative prompts go through the same call with with_clip_skip = false (diffusers
    // does not apply clip_skip to them, §8.1).
    Result<std::vector<PromptEmbeds>> encode_tokens(const std::vector<PromptTokens>& prompts, bool with_clip_skip = true);

    // Text-level: tokenizes every prompt (T5 to options().max_sequence_length) and runs encode_tokens.
    Result<std::vector<PromptEmbeds>> encode_prompts(const PromptTokenizer& tokenizer,
                                                     const std::vector<std::string>& prompts,
                                                     bool with_clip_skip = true);

    // Seconds spent loading encoders (reading, quantizing, moving to the device) and running them, since creation,
    // in all and per encoder (indexed by TextEncoderId).
    struct Timings {
        double load_seconds = 0, run_seconds = 0;
        double load_seconds_by_encoder[3] = {}, run_seconds_by_encoder[3] = {};
    };
    const Timings& timings() const { return timings_; }

    const TextEncoderOptions& options() const { return options_; }
    const ClipTextConfig& clip_config(TextEncoderId id) const { return id == TextEncoderId::CLIP_L ? cfg_l_ : cfg_g_; }
    const T5Config& t5_config() const { return cfg_t5_; }

  private:
    Status load_now(TextEncoderId id);
    // T5 on every prompt in batches of `chunk`, one pass over its blocks; out[i] = prompt i's rows [1, L, D_t5].
    Status run_t5_all(const std::vector<PromptTokens>& prompts, size_t chunk, std::vector<Tensor>& out) const;

    Component comp_[3];
    TextEncoderOptions options_;
    ClipTextConfig cfg_l_, cfg_g_;
    T5Config cfg_t5_;
    std::optional<ClipTextModel> clip_l_, clip_g_;
    std::optional<T5Encoder> t5_;
    Timings timings_;
};

}  // namespace sd3
