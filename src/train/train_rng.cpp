// TrainRng: mt19937_64 plus exact uniform/normal transforms; state saved as the engine's standard text form.
#include "train/train_rng.h"

#include <cmath>
#include <numbers>
#include <sstream>

namespace sd3::train {

TrainRng TrainRng::for_purpose(uint64_t seed, const std::string& purpose) {
    // FNV-1a of the purpose mixed with the seed through splitmix64: distinct, reproducible streams.
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : purpose) h = (h ^ c) * 1099511628211ull;
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (h | 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return TrainRng(z ^ (z >> 31));
}

double TrainRng::uniform() { return static_cast<double>(engine_() >> 11) * 0x1p-53; }

float TrainRng::uniform_f32() { return static_cast<float>(engine_() >> 40) * 0x1p-24f; }

double TrainRng::normal() {
    if (has_spare_) {
        has_spare_ = false;
        return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
}

int64_t TrainRng::uniform_int(int64_t lo, int64_t hi) {
    const uint64_t range = static_cast<uint64_t>(hi - lo) + 1;
    if (range == 0) return static_cast<int64_t>(engine_());
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t x;
    do x = engine_();
    while (x >= limit);
    return lo + static_cast<int64_t>(x % range);
}

void TrainRng::normal_fill(float* out, int64_t n, float mean, float std) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(mean + std * normal());
}

std::string TrainRng::save() const {
    std::ostringstream os;
    os << engine_ << ' ' << (has_spare_ ? 1 : 0) << ' ';
    os.precision(17);
    os << std::hexfloat << spare_;
    return os.str();
}

bool TrainRng::restore(const std::string& state) {
    std::istringstream is(state);
    std::mt19937_64 e;
    int spare_flag = 0;
    std::string spare_text;
    if (!(is >> e >> spare_flag >> spare_text)) return false;
    engine_ = e;
    has_spare_ = spare_flag != 0;
    spare_ = std::strtod(spare_text.c_str(), nullptr);
    return true;
}

}  // namespace sd3::train
