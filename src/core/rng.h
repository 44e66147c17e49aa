// TorchGenerator: PyTorch's CPU random generator reproduced bit for bit, so that a seed gives the same initial
// latents as `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` (diffusers' prepare_latents) and
// the trainer can draw what the reference draws (torch.rand, torch.randn, torch.normal on the CPU).
// The engine is mt19937 seeded as at::mt19937 does; the distributions follow ATen's CPU kernels
// (docs/sampling.md "Random numbers" says which path each call takes and why the results are bit-identical).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

class TorchGenerator {
  public:
    // c10::detail::default_rng_seed_val: the seed of a fresh `torch.Generator()`.
    static constexpr uint64_t kDefaultSeed = 67280421310721ULL;
    // Size of the state in torch.get_rng_state()'s byte layout (CPUGeneratorImplState on 64-bit platforms).
    static constexpr size_t kStateBytes = 5056;

    explicit TorchGenerator(uint64_t seed = kDefaultSeed) { manual_seed(seed); }

    // generator.manual_seed(seed): reseeds the engine and forgets any cached normal sample.
    void manual_seed(uint64_t seed);
    uint64_t initial_seed() const { return seed_; }

    uint32_t random();    // next 32 bits of the engine
    uint64_t random64();  // two 32-bit draws, the first in the high half

    // torch.randn(shape, generator=g, dtype=dtype) on the CPU; dtype F32, F64, F16 or BF16.
    Tensor randn(const Shape& shape, DType dtype = DType::F32);
    // torch.rand(shape, generator=g, dtype=dtype): uniform in [0, 1); dtype F32, F64, F16 or BF16.
    Tensor rand(const Shape& shape, DType dtype = DType::F32);
    // tensor.normal_(mean, std, generator=g) on a contiguous float32 tensor of n elements (randn is mean 0, std 1);
    // also torch.normal(mean, std, size) as the trainer's logit-normal timestep sampling calls it.
    void normal_fill(float* data, int64_t n, double mean = 0.0, double std = 1.0);
    void normal_fill(double* data, int64_t n, double mean = 0.0, double std = 1.0);
    // tensor.uniform_(from, to, generator=g) on a float32 tensor of n elements (rand is 0, 1).
    void uniform_fill(float* data, int64_t n, float from = 0.0f, float to = 1.0f);
    void uniform_fill(double* data, int64_t n, double from = 0.0, double to = 1.0);

    // The full state in torch.get_rng_state()'s byte layout, so a training run can be resumed exactly (and a
    // state saved by PyTorch can be loaded). set_state checks size and validity.
    std::vector<uint8_t> get_state() const;
    Status set_state(const std::vector<uint8_t>& bytes);

  private:
    // One double-precision Box-Muller draw with the cached second value (at::normal_distribution<double>).
    double normal_double(double mean, double std);
    void next_state();

    uint64_t seed_ = 0;
    std::array<uint32_t, 624> state_{};
    int left_ = 1;
    uint32_t next_ = 0;
    std::optional<double> next_double_normal_;
    std::optional<float> next_float_normal_;  // kept for the state layout; ATen's float path never sets it
};

}  // namespace sd3
