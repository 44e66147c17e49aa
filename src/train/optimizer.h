// Optimizers over flat float32 buffers (DESIGN.md "Memory": LoRA params, grads and moments each one contiguous
// buffer): gradient global norm and clipping (torch.nn.utils.clip_grad_norm_), AdamW (torch.optim.AdamW),
// 8-bit blockwise AdamW (bitsandbytes AdamW8bit, docs/optimizers.md) and Prodigy (prodigyopt.Prodigy). An
// optimizer lives on one device with its state: on a GPU the norm, clipping, AdamW and AdamW8bit run as kernels
// (ops/train_ops.h) that give the CPU loops' bits; Prodigy updates on the host. All are deterministic and
// save/restore their complete state for checkpoints (reference-training.md 3.6, 3.8).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/safetensors.h"

namespace sd3::train {

// One parameter tensor inside the flat buffer. The reference optimizers work per parameter tensor: norms are
// per tensor then combined, and bitsandbytes quantizes each tensor in its own blocks.
struct ParamSegment {
    int64_t offset = 0;
    int64_t numel = 0;
};

// Global L2 norm over all segments the way torch computes it: per-tensor norms (float32), then the norm of
// those. Returned in float32 precision. CPU buffers; Optimizer::clip_grad_norm does it where the optimizer is.
float global_grad_norm(const float* grads, const std::vector<ParamSegment>& segments);

// torch.nn.utils.clip_grad_norm_(params, max_norm): coef = max_norm / (norm + 1e-6) clamped to 1, applied to
// every gradient (torch multiplies by a coef of 1 too, which changes nothing, so that multiply is skipped).
// Returns the norm before.
float clip_grad_norm(float* grads, const std::vector<ParamSegment>& segments, double max_norm);

enum class OptimizerKind { ADAMW, ADAMW_8BIT, PRODIGY };
const char* optimizer_kind_name(OptimizerKind k);

struct OptimizerConfig {
    OptimizerKind kind = OptimizerKind::ADAMW;
    double beta1 = 0.9, beta2 = 0.999;
    double weight_decay = 1e-4;  // the reference script's --adam_weight_decay default
    double eps = 1e-8;
    // AdamW8bit (bitsandbytes 0.43.1, the seed's pin): blocks of 2048 elements; tensors with fewer than
    // min_8bit_size elements keep float32 moments.
    int64_t block_size = 2048;
    int64_t min_8bit_size = 4096;
    // Prodigy (prodigyopt 1.x; the reference passes beta3, decouple, use_bias_correction, safeguard_warmup).
    double beta3 = -1;  // < 0: sqrt(beta2), prodigyopt's default for None
    bool decouple = true;
    bool use_bias_correction = true;
    bool safeguard_warmup = true;
    double d0 = 1e-6, d_coef = 1.0;
    double growth_rate = 1e300;  // prodigyopt's float('inf')
};

class Optimizer {
  public:
    virtual ~Optimizer() = default;
    // One update of params [n] from grads [n] at learning rate `lr` (the scheduled group LR): contiguous float32
    // tensors on device().
    void step(const Tensor& params, const Tensor& grads, double lr);
    // The same on CPU buffers, for an optimizer made for the CPU.
    void step(float* params, const float* grads, double lr);
    // clip_grad_norm over this optimizer's segments of grads [n], queued on device(): returns f32 [2] there, the
    // norm before clipping and the coefficient (ops::clip_by_total_norm_), to be read when needed.
    Tensor clip_grad_norm(const Tensor& grads, double max_norm) const;
    Device device() const { return device_; }
    int64_t steps() const { return steps_; }
    int64_t numel() const { return numel_; }
    // Complete state (moments, step counter, scalars) as named CPU tensors, and its inverse (which copies them to
    // device()). load_state checks that the state matches this optimizer's kind and layout.
    virtual NamedTensors state() const = 0;
    virtual Status load_state(const NamedTensors& state) = 0;
    // State bytes (for the memory plan printed at start-up).
    virtual int64_t state_bytes() const = 0;

  protected:
    Optimizer(std::vector<ParamSegment> segments, Device device);
    // step()'s work, after its checks.
    virtual void update(const Tensor& params, const Tensor& grads, double lr) = 0;
    std::vector<ParamSegment> segments_;
    Tensor segment_table_;  // I64 [S, 2] (offset, numel) on device_
    Device device_;
    int64_t numel_ = 0;
    int64_t steps_ = 0;
};

// Segments must be in order, non-overlapping and cover [0, n) without gaps. The state lives on `device`.
std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& config, std::vector<ParamSegment> segments,
                                          Device device = kCPU);

// Helpers shared by the optimizer implementations.
namespace detail {
const Tensor* find_state(const NamedTensors& state, const std::string& name);
Status expect_state(const NamedTensors& state, const std::string& name, DType dtype, int64_t numel,
                    const Tensor** out);
Tensor scalar_i64(int64_t v);
Tensor scalars_f64(const std::vector<double>& v);
// A copy of the host tensor `t` on `device` (`t` itself on the CPU).
Tensor on_device(const Tensor& t, Device device);
}  // namespace detail

}  // namespace sd3::train
