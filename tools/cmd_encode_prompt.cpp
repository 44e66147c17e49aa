// `sd3tune encode-prompt --model DIR --prompt P [--negative-prompt N] [--max-sequence-length L]
// [--t5-dtype int8|fp8|nf4|bf16|fp16|f32] --output FILE.safetensors`: SD3's prompt encoding (diffusers
// encode_prompt) written as float32 tensors prompt_embeds, pooled_prompt_embeds and, with a negative prompt,
// negative_prompt_embeds, negative_pooled_prompt_embeds.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "infer/prompt_encoding.h"
#include "io/model_folder.h"
#include "io/quant.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "tools/commands.h"
#include "ops/ops.h"
#include "tools/device_options.h"
#include "tools/model_options.h"

namespace sd3::tools {

namespace {

struct EncodePromptOptions {
    ModelSpec spec;  // --model (folder or single file) and the parts options
    std::string prompt, prompts_file, negative_prompt, output;
    bool has_negative = false;
    int max_sequence_length = 256;
    std::string t5_dtype = "int8";
    DeviceCliOptions device;
};

// One prompt per line; empty lines are skipped.
Result<std::vector<std::string>> read_prompts(const std::string& path) {
    std::ifstream f(path);
    if (!f) return make_error(ErrorCode::NOT_FOUND, "--prompts-file ", path, ": cannot open it");
    std::vector<std::string> out;
    for (std::string line; std::getline(f, line);) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (!line.empty()) out.push_back(line);
    }
    if (out.empty()) return make_error(ErrorCode::INVALID_ARGUMENT, "--prompts-file ", path, " holds no prompt");
    return out;
}

Status encode_prompt(const EncodePromptOptions& o) {
    if (!std::filesystem::exists(o.spec.model))
        return make_error(ErrorCode::NOT_FOUND, o.spec.model, ": no such model folder or file");
    const auto format = quant_format_from_name(o.t5_dtype);
    if (!format)
        return make_error(ErrorCode::INVALID_ARGUMENT, "--t5-dtype ", o.t5_dtype,
                          " is not one of int8, fp8, nf4, bf16, fp16, f32");
    if (o.prompt.empty() == o.prompts_file.empty())
        return make_error(ErrorCode::INVALID_ARGUMENT, "give either --prompt or --prompts-file");
    std::vector<std::string> prompts = {o.prompt};
    if (!o.prompts_file.empty()) {
        SD3_ASSIGN_OR_RETURN(prompts, read_prompts(o.prompts_file));
    }
    const size_t n_positive = prompts.size();
    SD3_ASSIGN_OR_RETURN(const nn::Placement placement, resolve_placement(o.device));
    SD3_ASSIGN_OR_RETURN(ModelFolder model, open_model(o.spec));
    TextEncoderOptions opt;
    opt.t5.format = *format;
    opt.max_sequence_length = o.max_sequence_length;
    opt.placement = placement;
    opt.t5_max_resident_bytes = max_vram_bytes(o.device);
    SD3_ASSIGN_OR_RETURN(TextEncoders encoders, TextEncoders::open(model, opt));
    SD3_ASSIGN_OR_RETURN(PromptTokenizer tokenizer, PromptTokenizer::open(model));

    // Positive and negative go through each encoder together (one load of each), but the negative without
    // clip_skip, as diffusers; with the default clip_skip both are the same call.
    if (o.has_negative) prompts.push_back(o.negative_prompt);
    reset_peak_memory(placement.device);
    SD3_ASSIGN_OR_RETURN(std::vector<PromptEmbeds> e, encoders.encode_prompts(tokenizer, prompts));

    // Several prompts: stacked on the batch axis in file order.
    std::vector<Tensor> embeds, pooled;
    for (size_t i = 0; i < n_positive; ++i) {
        embeds.push_back(e[i].prompt_embeds);
        pooled.push_back(e[i].pooled);
    }
    NamedTensors out = {{"prompt_embeds", n_positive == 1 ? embeds[0] : ops::cat(embeds, 0)},
                        {"pooled_prompt_embeds", n_positive == 1 ? pooled[0] : ops::cat(pooled, 0)}};
    if (o.has_negative) {
        out.push_back({"negative_prompt_embeds", e.back().prompt_embeds});
        out.push_back({"negative_pooled_prompt_embeds", e.back().pooled});
    }
    std::map<std::string, std::string> meta = {{"prompt", o.prompts_file.empty() ? o.prompt : "file:" + o.prompts_file},
                                               {"max_sequence_length", std::to_string(o.max_sequence_length)},
                                               {"t5_dtype", o.t5_dtype}};
    if (o.has_negative) meta["negative_prompt"] = o.negative_prompt;
    SD3_TRY(write_safetensors(o.output, out, meta));
    std::printf("wrote %s: prompt_embeds %s, pooled_prompt_embeds %s%s\n", o.output.c_str(),
                shape_str(out[0].second.shape()).c_str(), shape_str(out[1].second.shape()).c_str(),
                o.has_negative ? " (and the negative prompt's)" : "");
    nlohmann::ordered_json m;
    m["prompts"] = prompts.size();
    m["seconds"] = encoders.timings().run_seconds;
    m["load_seconds"] = encoders.timings().load_seconds;
    for (TextEncoderId id : {TextEncoderId::CLIP_L, TextEncoderId::CLIP_G, TextEncoderId::T5}) {
        const std::string name = text_encoder_name(id);
        m["seconds_by_encoder"][name] = encoders.timings().run_seconds_by_encoder[static_cast<int>(id)];
        m["load_seconds_by_encoder"][name] = encoders.timings().load_seconds_by_encoder[static_cast<int>(id)];
    }
    m["t5_dtype"] = o.t5_dtype;
    return write_metrics(o.device, placement, m);
}

std::pair<CLI::App*, CommandRunner> setup_encode_prompt(CLI::App& app) {
    auto opt = std::make_shared<EncodePromptOptions>();
    CLI::App* sub = app.add_subcommand("encode-prompt", "Encode a prompt with SD3's three text encoders");
    add_model_options(sub, opt->spec);
    sub->add_option("--prompt", opt->prompt, "the prompt");
    sub->add_option("--prompts-file", opt->prompts_file, "a text file of prompts, one per line (outputs stacked)");
    CLI::Option* neg = sub->add_option("--negative-prompt", opt->negative_prompt, "also encode this negative prompt");
    sub->add_option("--max-sequence-length", opt->max_sequence_length, "T5 tokens (256 for generation, 77 as in training)")
        ->check(CLI::Range(1, 512))
        ->capture_default_str();
    sub->add_option("--t5-dtype", opt->t5_dtype, "T5 weight format: int8, fp8, nf4, bf16, fp16, f32")
        ->check(CLI::IsMember({"int8", "fp8", "nf4", "bf16", "fp16", "f32"}))
        ->capture_default_str();
    sub->add_option("--output", opt->output, "output .safetensors file")->required();
    add_device_options(sub, opt->device);
    add_max_vram_option(sub, opt->device, "T5's blocks", "what is free");
    return {sub, [opt, neg]() -> Status {
                opt->has_negative = neg->count() > 0;
                return encode_prompt(*opt);
            }};
}

SD3_COMMAND(40, setup_encode_prompt);

}  // namespace

}  // namespace sd3::tools
