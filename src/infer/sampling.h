// The denoising loop of diffusers' StableDiffusion3Pipeline.__call__ (research/sd3-architecture.md §8.2,
// reference-training.md §5.4-5.5), independent of which model supplies the velocity: initial noise as
// prepare_latents draws it, classifier-free guidance over the batch [uncond, cond], the Euler step, and the VAE
// output's conversion to images. The text-to-image pipeline (infer/pipeline.h) plugs the MMDiT into it.
#pragma once

#include <functional>
#include <vector>

#include "core/rng.h"
#include "core/status.h"
#include "core/tensor.h"
#include "infer/scheduler.h"
#include "io/image.h"

namespace sd3 {

// The model: latents [N, C, h, w], timesteps [N], context [N, M, D], pooled [N, P] -> velocity [N, C, h, w].
using VelocityFn = std::function<Result<Tensor>(const Tensor& latents, const Tensor& timesteps, const Tensor& context,
                                                const Tensor& pooled)>;

struct SamplerProgress {
    int64_t step = 0;   // steps finished (1..steps)
    int64_t steps = 0;
    double seconds = 0;        // since the loop started
    double queue_seconds = 0;  // of those, the host's time queuing the steps' work (the rest it waited)
};
// Called after every step; returning false cancels the loop (sample_flow_match then fails with a Status).
using ProgressFn = std::function<bool(const SamplerProgress&)>;

struct Conditioning {
    Tensor context;           // [B, M, D]  prompt_embeds, one row per image
    Tensor pooled;            // [B, P]
    Tensor negative_context;  // [B, M, D]  needed when guidance_scale > 1
    Tensor negative_pooled;   // [B, P]
};

// randn([batch, channels, height / f, width / f]) from `generator`, float32, as diffusers' prepare_latents draws
// it with a CPU generator (one draw for the whole batch; no initial scaling since sigma_0 = 1).
Tensor prepare_latents(TorchGenerator& generator, int64_t batch, int64_t channels, int64_t height, int64_t width,
                       int64_t vae_scale_factor);

// The loop: for each step i, velocity of cat([latents, latents]) at timesteps[i] with context cat([neg, pos])
// (CFG when guidance_scale > 1: v = v_u + g·(v_c − v_u), float32), then latents += (σ_{i+1} − σ_i)·v.
// `latents` [B, C, h, w] are the initial latents (CPU); returns the final ones (float32, CPU). The latents and
// timesteps live on `device` for the whole loop, where the model must return its velocity (float32): each step is
// queued behind the previous one, and the host waits for step i (to report it) only once step i + 1 is queued.
// With `replay` (a GPU model whose call queues the same work each time and never waits for the device, such as a
// transformer with every block resident), the model's work is recorded at the second step and replayed after
// (DeviceGraph, ops/device.h): `model` is then called twice in all. SD3_CUDA_GRAPHS=0 turns the replay off.
Result<Tensor> sample_flow_match(const VelocityFn& model, const Tensor& latents, const FlowMatchSchedule& schedule,
                                 const Conditioning& cond, float guidance_scale, const ProgressFn& progress = {},
                                 Device device = kCPU, bool replay = false);

// VaeImageProcessor.postprocess before 8-bit: (x / 2 + 0.5).clamp(0, 1), float32. x [B, 3, H, W].
Tensor denormalize_images(const Tensor& decoded);
// [B, 3, H, W] in [0, 1] -> B images (x·255 rounded half to even).
std::vector<Image> images_from_batch(const Tensor& unit_range);

}  // namespace sd3
