// The model-independent denoising loop (infer/sampling.h), following diffusers' pipeline_stable_diffusion_3.py
// __call__ (prepare_latents, the CFG batch, step) and image_processor.py postprocess.
#include "infer/sampling.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "ops/device.h"
#include "ops/ops.h"

namespace sd3 {

Tensor prepare_latents(TorchGenerator& generator, int64_t batch, int64_t channels, int64_t height, int64_t width,
                       int64_t vae_scale_factor) {
    SD3_ASSERT(height % vae_scale_factor == 0 && width % vae_scale_factor == 0, "size ", width, "x", height,
               " is not a multiple of ", vae_scale_factor);
    return generator.randn({batch, channels, height / vae_scale_factor, width / vae_scale_factor});  // [B, C, h, w]
}

namespace {

Status check_rows(const Tensor& t, int64_t batch, int dims, const char* what) {
    if (!t.defined() || t.dim() != dims || t.size(0) != batch || t.dtype() != DType::F32)
        return make_error(ErrorCode::INVALID_ARGUMENT, what, " must be f32 with ", dims, " dimensions and ", batch,
                          " rows, got ", t.defined() ? t.describe() : "nothing");
    return {};
}

}  // namespace

Result<Tensor> sample_flow_match(const VelocityFn& model, const Tensor& latents_in, const FlowMatchSchedule& schedule,
                                 const Conditioning& cond, float guidance_scale, const ProgressFn& progress,
                                 Device device, bool replay) {
    if (latents_in.dim() != 4 || latents_in.dtype() != DType::F32)
        return make_error(ErrorCode::INVALID_ARGUMENT, "initial latents must be f32 [B, C, h, w], got ",
                          latents_in.describe());
    const int64_t B = latents_in.size(0);
    const int64_t steps = static_cast<int64_t>(schedule.timesteps.size());
    SD3_ASSERT(schedule.sigmas.size() == static_cast<size_t>(steps + 1), "schedule with ", steps, " timesteps and ",
               schedule.sigmas.size(), " sigmas");
    const bool cfg = guidance_scale > 1.0f;  // diffusers: do_classifier_free_guidance = guidance_scale > 1
    SD3_TRY(check_rows(cond.context, B, 3, "prompt embeddings"));
    SD3_TRY(check_rows(cond.pooled, B, 2, "pooled prompt embeddings"));
    Tensor context = cond.context, pooled = cond.pooled;
    if (cfg) {
        SD3_TRY(check_rows(cond.negative_context, B, 3, "negative prompt embeddings"));
        SD3_TRY(check_rows(cond.negative_pooled, B, 2, "negative pooled prompt embeddings"));
        context = ops::cat({cond.negative_context, cond.context}, 0);  // [2B, M, D]  uncond first (§8.1)
        pooled = ops::cat({cond.negative_pooled, cond.pooled}, 0);     // [2B, P]
    }
    const int64_t rows = cfg ? 2 * B : B;
    // Every step's timestep, repeated over the rows (t.expand(rows)), goes up once with the latents.
    Tensor all_t = Tensor::empty({steps, rows}, DType::F32);  // [steps, rows]
    for (int64_t i = 0; i < steps; ++i)
        for (int64_t r = 0; r < rows; ++r) all_t.data<float>()[i * rows + r] = schedule.timesteps[i];
    SD3_ASSIGN_OR_RETURN(all_t, to_device(all_t, device));
    SD3_ASSIGN_OR_RETURN(Tensor latents, to_device(latents_in.contiguous().clone(), device));  // [B, C, h, w]
    // SD3_PROFILE_STEP=N: the CUDA profiler captures denoising step N alone (docs/benchmarks.md, profile_generate).
    const char* profile_env = std::getenv("SD3_PROFILE_STEP");
    const int64_t profiled_step = profile_env != nullptr ? std::atoll(profile_env) : 0;
    const auto start = std::chrono::steady_clock::now();
    double queue_seconds = 0;
    // Step i's end, as the completion of a one-element copy queued behind it: waited for once step i + 1 is queued.
    PendingDownload queued_end;
    auto report = [&](int64_t finished) -> Status {
        queued_end.wait();
        if (!progress) return {};
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!progress({finished, steps, secs, queue_seconds}))
            return make_error(ErrorCode::INVALID_ARGUMENT, "generation cancelled after step ", finished);
        return {};
    };
    // The model call reads the latents and the step's timestep from fixed buffers and leaves its velocity in one,
    // so every step queues the same work on the same memory: with `replay`, recorded at the second step and
    // replayed after (DeviceGraph), one launch per step instead of hundreds of kernels queued one by one.
    Tensor t_step = Tensor::empty({rows}, DType::F32, device);                                      // [rows]
    Tensor v_step = Tensor::empty({rows, latents.size(1), latents.size(2), latents.size(3)}, DType::F32, device);
    auto call_model = [&]() -> Status {
        const Tensor model_in = cfg ? ops::cat({latents, latents}, 0) : latents;  // [rows, C, h, w]
        SD3_ASSIGN_OR_RETURN(Tensor v, model(model_in, t_step, context, pooled));
        if (v.shape() != model_in.shape() || v.dtype() != DType::F32 || v.device() != device)
            return make_error(ErrorCode::INTERNAL, "the model returned ", v.describe(), " for input ",
                              model_in.describe());
        copy_into(v_step, v);
        return {};
    };
    const char* graphs_env = std::getenv("SD3_CUDA_GRAPHS");
    const bool record = replay && !(graphs_env != nullptr && std::strcmp(graphs_env, "0") == 0);
    DeviceGraph model_call(device);
    for (int64_t i = 0; i < steps; ++i) {
        const auto queue_start = std::chrono::steady_clock::now();
        if (i + 1 == profiled_step) profiler_capture(true);
        copy_into(t_step, all_t.select(0, i));
        SD3_TRY(record ? model_call.run(call_model) : call_model());
        ops::guided_euler_step_(latents, v_step, guidance_scale, schedule.sigmas[i], schedule.sigmas[i + 1]);
        if (i + 1 == profiled_step) profiler_capture(false);
        queue_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - queue_start).count();
        if (i > 0) SD3_TRY(report(i));
        queued_end = download_async(latents.view({latents.numel()}).slice(0, 0, 1));
    }
    if (steps > 0) SD3_TRY(report(steps));
    return host_f32(latents);
}

Tensor denormalize_images(const Tensor& decoded) {
    Tensor x = decoded.to(DType::F32).contiguous().clone();  // [B, 3, H, W]
    float* p = x.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) {
        const float v = p[i] / 2.0f + 0.5f;
        p[i] = std::min(1.0f, std::max(0.0f, v));
    }
    return x;
}

std::vector<Image> images_from_batch(const Tensor& unit_range) {
    SD3_ASSERT(unit_range.dim() == 4 && unit_range.size(1) == 3, "images_from_batch wants [B, 3, H, W], got ",
               unit_range.describe());
    std::vector<Image> out;
    for (int64_t b = 0; b < unit_range.size(0); ++b) out.push_back(image_from_tensor(unit_range.select(0, b)));
    return out;
}

}  // namespace sd3
