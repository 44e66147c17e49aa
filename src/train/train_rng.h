// The training run's random streams: one seeded generator per purpose (data order, crops/flips, VAE posterior
// samples, noise, timesteps, LoRA init), so that each consumer's draws do not depend on how much another consumed,
// and the whole state can be saved in a checkpoint and restored bit for bit. mt19937_64 (fully specified by the
// C++ standard) with our own uniform and Box-Muller normal transforms, so results do not depend on the standard
// library. Not PyTorch's stream: the reference draws noise on the GPU, which no CPU program can replay.
#pragma once

#include <cstdint>
#include <random>
#include <string>

namespace sd3::train {

class TrainRng {
  public:
    explicit TrainRng(uint64_t seed = 0) : engine_(seed) {}
    // Derives an independent stream for `purpose` from a run seed.
    static TrainRng for_purpose(uint64_t seed, const std::string& purpose);

    double uniform();                 // [0, 1), 53 random bits
    float uniform_f32();              // [0, 1), 24 random bits (exactly representable)
    double normal();                  // N(0, 1), Box-Muller (pairs cached)
    int64_t uniform_int(int64_t lo, int64_t hi);  // inclusive range, unbiased
    void normal_fill(float* out, int64_t n, float mean = 0.0f, float std = 1.0f);

    // Complete state as text (engine + cached normal) and back.
    std::string save() const;
    bool restore(const std::string& state);

  private:
    std::mt19937_64 engine_;
    bool has_spare_ = false;
    double spare_ = 0;
};

}  // namespace sd3::train
