// The arithmetic of one denoising step, element by element, shared by the CPU loops (infer/scheduler.cpp,
// ops::guided_euler_step_) and the CUDA kernel (ops/cuda/elementwise.cu): every float operation rounds on its own,
// as PyTorch's separate tensor ops do in diffusers' pipeline (the CPU build does not contract to FMA; on the device
// each operation is a round-to-nearest intrinsic), so both give the reference's bits.
#pragma once

#include "ops/cpu/host_device.h"

namespace sd3::cpu {

// Classifier-free guidance: noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond).
SD3_HOST_DEVICE inline float cfg_guided(float uncond, float cond, float guidance_scale) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(uncond, __fmul_rn(guidance_scale, __fsub_rn(cond, uncond)));
#else
    const float diff = cond - uncond;
    const float scaled = guidance_scale * diff;
    return uncond + scaled;
#endif
}

// FlowMatchEulerDiscreteScheduler.step: sample + dt * v, dt = sigma_next - sigma (0-dim float32 tensors there).
SD3_HOST_DEVICE inline float euler_step(float sample, float dt, float v) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(sample, __fmul_rn(dt, v));
#else
    const float d = dt * v;
    return sample + d;
#endif
}

}  // namespace sd3::cpu
