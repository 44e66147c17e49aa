// `sd3tune generate`: text to image with diffusers' defaults (28 steps, guidance 7, 1024x1024, T5 length 256),
// optional LoRAs at a scale, seeded noise identical to torch's, PNGs carrying the prompt, seed and settings.
// Parses options, prints progress and calls infer/pipeline.h; no model logic here.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <unistd.h>

#include "core/log.h"
#include "infer/pipeline.h"
#include "io/quant.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "tools/commands.h"
#include "tools/device_options.h"
#include "tools/model_options.h"

namespace sd3::tools {

namespace {

namespace fs = std::filesystem;

struct GenerateCliOptions {
    ModelSpec spec;
    GenerateRequest request;
    std::vector<std::string> lora_files;
    std::vector<float> lora_scales;
    std::string output;
    std::string init_latents;
    std::string save_latents;
    std::string t5_format = "int8";
    int clip_skip = 0;
    int warmup_steps = 0;
    bool vae_tiling = false;
    bool fuse_lora = false;
    DeviceCliOptions device;
};

// Pairs every --lora-scale with the --lora before it (CLI11 keeps the order options appeared in).
Result<std::vector<LoraRequest>> pair_loras(const CLI::App* sub, const GenerateCliOptions& o) {
    std::vector<LoraRequest> out;
    size_t next_file = 0, next_scale = 0;
    bool scale_given = false;
    for (const CLI::Option* opt : sub->parse_order()) {
        if (opt->get_name() == "--lora") {
            out.push_back({o.lora_files.at(next_file++), 1.0f});
            scale_given = false;
        } else if (opt->get_name() == "--lora-scale") {
            if (out.empty() || scale_given)
                return make_error(ErrorCode::INVALID_ARGUMENT,
                                  "--lora-scale must follow the --lora FILE it applies to (one scale per LoRA)");
            out.back().scale = o.lora_scales.at(next_scale++);
            scale_given = true;
        }
    }
    return out;
}

// FILE or FILE:KEY; without a key, the tensor named "initial_latents" or "latents", else the file's only tensor.
Result<Tensor> read_latents(const std::string& arg) {
    std::string path = arg, key;
    const size_t colon = arg.rfind(':');
    if (!fs::exists(arg) && colon != std::string::npos) {
        path = arg.substr(0, colon);
        key = arg.substr(colon + 1);
    }
    SD3_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(path));
    if (key.empty()) {
        for (const char* k : {"initial_latents", "latents"})
            if (f.contains(k)) key = k;
        if (key.empty() && f.tensors().size() == 1) key = f.tensors()[0].name;
        if (key.empty())
            return make_error(ErrorCode::INVALID_ARGUMENT, path, ": holds ", f.tensors().size(),
                              " tensors and none is named latents; pick one with --init-latents FILE:NAME");
    }
    SD3_ASSIGN_OR_RETURN(Tensor t, f.get(key));
    return t.to(DType::F32).clone();
}

std::string output_name(const std::string& output, int64_t index, int64_t count) {
    if (count == 1) return output;
    const fs::path p(output);
    return (p.parent_path() / (p.stem().string() + "-" + std::to_string(index) + p.extension().string())).string();
}

Status run_generate(const CLI::App* sub, GenerateCliOptions& o) {
    // Everything cheap is checked before any weight is read.
    if (fs::path(o.output).extension() != ".png")
        return make_error(ErrorCode::INVALID_ARGUMENT, "--output ", o.output, ": only PNG is written; use a .png name");
    const fs::path out_dir = fs::path(o.output).parent_path();
    if (!out_dir.empty() && !fs::is_directory(out_dir))
        return make_error(ErrorCode::NOT_FOUND, "--output ", o.output, ": the folder ", out_dir.string(),
                          " does not exist");
    const auto t5_format = quant_format_from_name(o.t5_format);
    if (!t5_format)
        return make_error(ErrorCode::INVALID_ARGUMENT, "--t5-format ", o.t5_format,
                          " is not one of f32, fp16, bf16, fp8, int8, nf4");
    SD3_ASSIGN_OR_RETURN(std::vector<LoraRequest> loras, pair_loras(sub, o));
    if (!o.init_latents.empty()) {
        SD3_ASSIGN_OR_RETURN(o.request.initial_latents, read_latents(o.init_latents));
    }

    SD3_ASSIGN_OR_RETURN(const nn::Placement placement, resolve_placement(o.device));
    SD3_ASSIGN_OR_RETURN(ModelFolder model, open_model(o.spec));
    PipelineOptions popt;
    popt.placement = placement;
    popt.base_format = base_format(o.device);
    if (max_vram_bytes(o.device) > 0 && !placement.on_cpu()) {  // the CPU streams nothing
        popt.transformer_max_resident_bytes = max_vram_bytes(o.device);
        popt.text.t5_max_resident_bytes = popt.transformer_max_resident_bytes;
    } else {
        // The decode has the device to itself (the transformer is freed first) and stays below the prompt
        // encoding's peak with every convolution on cuDNN (docs/benchmarks.md, run 13).
        set_conv_copy_limit(placement.device, SIZE_MAX);
    }
    popt.text.t5.format = *t5_format;
    popt.text.clip_skip = o.clip_skip;
    popt.loras = loras;
    popt.vae_tiling = o.vae_tiling;
    popt.fuse_loras = o.fuse_lora;
    popt.single_use = true;
    SD3_ASSIGN_OR_RETURN(TextToImage pipe, TextToImage::open(model, popt));
    SD3_ASSIGN_OR_RETURN(GenerateRequest req, pipe.resolve(o.request));
    log_info("generating ", req.num_images, " image(s) of ", req.width, "x", req.height, ", ", req.steps,
             " steps, guidance ", req.guidance_scale,
             req.initial_latents.defined() ? std::string(", given initial latents") : str_cat(", seed ", req.seed));

    const bool tty = isatty(STDERR_FILENO) != 0;
    double queue_seconds = 0;  // the sampler's host time queuing work, for --metrics-json
    auto progress = [tty, &queue_seconds](const SamplerProgress& p) {
        queue_seconds = p.queue_seconds;
        const double rate = p.seconds > 0 ? static_cast<double>(p.step) / p.seconds : 0.0;
        std::fprintf(stderr, "%sstep %lld/%lld  %.2f steps/s  %.1f s%s", tty ? "\r" : "",
                     static_cast<long long>(p.step), static_cast<long long>(p.steps), rate, p.seconds,
                     tty && p.step < p.steps ? "" : "\n");
        std::fflush(stderr);
        return true;
    };
    // Seconds and peak device memory per stage, for --metrics-json: loading the transformer/VAE, encoding (with
    // the encoders' loading), sampling and decoding.
    std::map<std::string, double> stage_seconds;
    std::map<std::string, size_t> stage_peak;
    std::string current_stage;
    auto stage_start = std::chrono::steady_clock::now();
    auto end_stage = [&]() {
        const auto now = std::chrono::steady_clock::now();
        if (!current_stage.empty()) {
            stage_seconds[current_stage] += std::chrono::duration<double>(now - stage_start).count();
            size_t& peak = stage_peak[current_stage];
            peak = std::max(peak, memory_stats(placement.device).peak);
            reset_peak_memory(placement.device);
        }
        stage_start = now;
    };
    auto stage = [&](const std::string& s) {
        end_stage();
        current_stage = s;
        log_info(s, " on ", device_description(placement.device));
    };
    if (o.warmup_steps > 0) {  // the same request, shorter and untimed: one-time setup happens here
        GenerateRequest warm = req;
        warm.steps = o.warmup_steps;
        log_info("warming up: ", o.warmup_steps, " untimed step(s) and a decode");
        SD3_TRY(pipe.generate(warm, {}, {}).status());
        pipe.release_models();  // the timed call loads them again, in the order memory was planned for
        release_workspace(placement.device);  // nor does the decode's kernel workspace stay into its encoding
    }
    reset_peak_memory(placement.device);
    SD3_ASSIGN_OR_RETURN(GenerateOutput out, pipe.generate(req, progress, stage));
    synchronize(placement.device);
    end_stage();

    const std::string model_name = o.spec.model;
    for (int64_t k = 0; k < static_cast<int64_t>(out.images.size()); ++k) {
        const std::string path = output_name(o.output, k, static_cast<int64_t>(out.images.size()));
        SD3_TRY(write_png(path, out.images[k], generation_text(req, loras, k, model_name)));
        log_info("wrote ", path);
    }
    if (!o.save_latents.empty()) {
        std::map<std::string, std::string> meta = {{"prompt", req.prompt},
                                                   {"negative_prompt", req.negative_prompt},
                                                   {"seed", std::to_string(req.seed)},
                                                   {"steps", std::to_string(req.steps)},
                                                   {"note", "latents: final, before the VAE; initial_latents: the start"}};
        SD3_TRY(write_safetensors(o.save_latents, {{"latents", out.latents}, {"initial_latents", out.initial_latents}},
                                  meta));
        log_info("wrote ", o.save_latents);
    }
    nlohmann::ordered_json m;
    const double images = static_cast<double>(out.images.size());
    m["seconds_per_image"] = (stage_seconds["sampling"] + stage_seconds["decoding"]) / images;
    m["sampling_seconds_per_image"] = stage_seconds["sampling"] / images;
    m["decode_seconds_per_image"] = stage_seconds["decoding"] / images;
    m["sampling_queue_seconds_per_step"] = queue_seconds / static_cast<double>(req.steps);
    m["encode_seconds"] = stage_seconds["encoding the prompt"];
    m["load_seconds"] = stage_seconds["loading the transformer"] + stage_seconds["loading the VAE decoder"];
    size_t peak = 0;
    for (const auto& [name, bytes] : stage_peak) {
        m["peak_gpu_bytes_by_stage"][name] = bytes;
        peak = std::max(peak, bytes);
    }
    m["peak_gpu_bytes"] = peak;
    m["steps"] = req.steps;
    m["width"] = req.width;
    m["height"] = req.height;
    return write_metrics(o.device, placement, m);
}

std::pair<CLI::App*, CommandRunner> setup_generate(CLI::App& app) {
    auto o = std::make_shared<GenerateCliOptions>();
    CLI::App* sub = app.add_subcommand("generate", "Generate images from a text prompt (optionally with LoRAs)");
    add_model_options(sub, o->spec);
    add_device_options(sub, o->device);
    add_base_dtype_option(sub, o->device);
    add_max_vram_option(sub, o->device, "the frozen weights (T5, then the transformer)",
                        "T5 what is free, the transformer all of it");
    GenerateRequest& r = o->request;
    sub->add_option("--prompt,-p", r.prompt, "what to draw")->required();
    sub->add_option("--negative-prompt,-n", r.negative_prompt, "what to steer away from (default: empty)");
    sub->add_option("--lora", o->lora_files, "LoRA .safetensors to apply; repeat for several")
        ->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->check(CLI::ExistingFile);
    sub->add_option("--lora-scale", o->lora_scales, "scale of the --lora before it (default 1.0)")
        ->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    sub->add_flag("--fuse-lora", o->fuse_lora,
                  "merge the LoRAs into the weights once (as pipe.fuse_lora) instead of applying them each step");
    sub->add_option("--steps", r.steps, "sampling steps")->capture_default_str()->check(CLI::Range(1, 10000));
    sub->add_option("--cfg,--guidance-scale", r.guidance_scale, "classifier-free guidance scale (<= 1: off)")
        ->capture_default_str();
    sub->add_option("--width", r.width, "image width, a multiple of 16 (default: the model's, 1024 for SD3)");
    sub->add_option("--height", r.height, "image height, a multiple of 16 (default: the model's)");
    sub->add_option("--seed", r.seed, "seed of the initial noise (torch.Generator().manual_seed)")->capture_default_str();
    sub->add_option("--num-images", r.num_images, "images from one batch of noise")->capture_default_str()
        ->check(CLI::Range(1, 1000));
    sub->add_option("--max-sequence-length", r.max_sequence_length, "T5 tokens (at most 512)")->capture_default_str();
    sub->add_option("--init-latents", o->init_latents,
                    "start from these latents instead of seeded noise (.safetensors, FILE or FILE:TENSOR)");
    sub->add_option("--save-latents", o->save_latents, "also write the final latents (.safetensors)");
    sub->add_option("--t5-format", o->t5_format, "T5 weight format: f32, bf16, fp16, fp8, int8, nf4")
        ->capture_default_str();
    sub->add_option("--clip-skip", o->clip_skip, "CLIP layers to skip (0 = SD3's default)")->capture_default_str();
    sub->add_flag("--vae-tiling", o->vae_tiling,
                  "decode in overlapping tiles of the VAE's sample size (less memory for large images; blended seams)");
    sub->add_option("--warmup-steps", o->warmup_steps,
                    "for benchmarks: first run this many untimed steps (and a decode), so --metrics-json leaves out "
                    "one-time setup (library loading, kernel plans), as bench/reference/generate.py does")
        ->capture_default_str()->check(CLI::Range(0, 10000));
    sub->add_option("--output,-o", o->output, "output .png (several images: name-0.png, name-1.png, ...)")->required();
    return {sub, [o, sub]() { return run_generate(sub, *o); }};
}

SD3_COMMAND(30, setup_generate);

}  // namespace

}  // namespace sd3::tools
