// TorchGenerator: mt19937 as at::mt19937 (aten/src/ATen/core/MT19937RNGEngine.h), the distributions of
// ATen's CPU kernels (aten/src/ATen/native/cpu/DistributionTemplates.h, core/DistributionsHelper.h,
// core/TransformationHelper.h) and torch.get_rng_state()'s layout (aten/src/ATen/CPUGeneratorImpl.cpp).
// Read for the facts; the code is ours. docs/sampling.md explains the paths.
#include "core/rng.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "core/check.h"
#include "core/dtype.h"

namespace sd3 {
namespace {

constexpr int kN = 624;
constexpr int kM = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfu;

// ---- uniform_real (TransformationHelper.h): the low `digits` bits of a draw, times 2^-digits ------------------
inline float uniform24(uint32_t v) { return static_cast<float>(v & 0xffffffu) * (1.0f / 16777216.0f); }
inline double uniform53(uint64_t v) {
    return static_cast<double>(v & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}
inline float uniform11(uint32_t v) { return static_cast<float>(v & 0x7ffu) * (1.0f / 2048.0f); }  // Half
inline float uniform8(uint32_t v) { return static_cast<float>(v & 0xffu) * (1.0f / 256.0f); }     // BFloat16

// ---- the float path of the AVX2 kernel (normal_fill_16_AVX2 with avx_mathfun.h's log256_ps and sincos256_ps) --
// Those are Cephes polynomials evaluated lane by lane in float. PyTorch builds that kernel with GCC, -mavx2 -mfma
// and GCC's default -ffp-contract=fast, so a multiply whose only use is an add is fused into one FMA; `fma`
// below marks exactly those places (found by reproducing rng.safetensors bit for bit, docs/sampling.md).
inline float mad(float a, float b, float c) { return std::fma(a, b, c); }

float cephes_logf(float x) {
    const bool invalid = x <= 0.0f;
    const float min_norm = f32_from_bits(0x00800000u);
    x = x > min_norm ? x : min_norm;  // _mm256_max_ps(x, min_norm)
    uint32_t bits = f32_bits(x);
    const int32_t exponent = static_cast<int32_t>(bits >> 23) - 0x7f;
    x = f32_from_bits((bits & ~0x7f800000u) | f32_bits(0.5f));  // mantissa in [0.5, 1)
    float e = static_cast<float>(exponent) + 1.0f;
    const bool below = x < 0.707106781186547524f;
    const float tmp = below ? x : 0.0f;
    x = x - 1.0f;
    e = e - (below ? 1.0f : 0.0f);
    x = x + tmp;
    const float z = x * x;
    float y = 7.0376836292E-2f;
    y = mad(y, x, -1.1514610310E-1f);
    y = mad(y, x, 1.1676998740E-1f);
    y = mad(y, x, -1.2420140846E-1f);
    y = mad(y, x, +1.4249322787E-1f);
    y = mad(y, x, -1.6668057665E-1f);
    y = mad(y, x, +2.0000714765E-1f);
    y = mad(y, x, -2.4999993993E-1f);
    y = mad(y, x, +3.3333331174E-1f);
    y = y * x;
    y = mad(y, z, e * -2.12194440e-4f);
    y = y - z * 0.5f;
    x = mad(e, 0.693359375f, x + y);
    return invalid ? std::numeric_limits<float>::quiet_NaN() : x;
}

void cephes_sincosf(float x, float* s, float* c) {
    const bool negative = std::signbit(x);
    x = std::fabs(x);
    float y = x * 1.27323954473516f;  // 4 / pi
    int32_t j = static_cast<int32_t>(y);  // truncation, as _mm256_cvttps_epi32 for the range used here
    j = (j + 1) & ~1;
    y = static_cast<float>(j);
    const bool swap_sin = (j & 4) != 0;
    const bool poly_cos = (j & 2) == 0;  // "poly_mask": the sine polynomial gives the sine
    const bool swap_cos = ((~(j - 2)) & 4) != 0;
    x = mad(y, -0.78515625f, x);
    x = mad(y, -2.4187564849853515625e-4f, x);
    x = mad(y, -3.77489497744594108e-8f, x);
    const float z = x * x;
    float yc = 2.443315711809948E-005f;
    yc = mad(yc, z, -1.388731625493765E-003f);
    yc = mad(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = mad(yc, z, -(z * 0.5f));
    yc = yc + 1.0f;
    float ys = -1.9515295891E-4f;
    ys = mad(ys, z, 8.3321608736E-3f);
    ys = mad(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = mad(ys, x, x);
    float sin_v = poly_cos ? ys : yc;
    float cos_v = poly_cos ? yc : ys;
    if (negative != swap_sin) sin_v = -sin_v;
    if (swap_cos) cos_v = -cos_v;
    *s = sin_v;
    *c = cos_v;
}

// normal_fill_16_AVX2: Box-Muller over 16 uniforms, the first 8 as u1 and the next 8 as u2.
void normal_fill_16_f32(float* data, float mean, float std) {
    const float two_pi = static_cast<float>(2.0f * std::numbers::pi);
    for (int j = 0; j < 8; ++j) {
        const float u1 = 1.0f - data[j];
        const float u2 = data[j + 8];
        const float radius = std::sqrt(-2.0f * cephes_logf(u1));
        const float theta = two_pi * u2;
        float sin_t, cos_t;
        cephes_sincosf(theta, &sin_t, &cos_t);
        data[j] = std::fma(radius * cos_t, std, mean);
        data[j + 8] = std::fma(radius * sin_t, std, mean);
    }
}

// normal_fill_16<double> (the generic template; doubles never take the AVX2 path).
void normal_fill_16_f64(double* data, double mean, double std) {
    for (int j = 0; j < 8; ++j) {
        const double u1 = 1 - data[j];
        const double u2 = data[j + 8];
        const double radius = std::sqrt(-2 * std::log(u1));
        const double theta = 2.0f * std::numbers::pi * u2;
        data[j] = radius * std::cos(theta) * std + mean;
        data[j + 8] = radius * std::sin(theta) * std + mean;
    }
}

// normal_fill_16<c10::Half> and <c10::BFloat16>: every intermediate is stored in the narrow type. c10's std::log,
// std::sqrt, std::cos, std::sin overloads for these types compute in float and round the result back; products
// of two narrow values compute in float and round; `2.0f * pi<double> * u2` is a double rounded through float.
template <uint16_t (*Round)(float), float (*Widen)(uint16_t)>
void normal_fill_16_narrow(float* data /* narrow values held as float */, float mean, float std) {
    auto r = [](float v) { return Widen(Round(v)); };
    for (int j = 0; j < 8; ++j) {
        const float u1 = r(1.0f - data[j]);
        const float u2 = data[j + 8];
        const float log_u1 = r(std::log(u1));
        const float radius = r(std::sqrt(r(-2.0f * log_u1)));
        const float theta = r(static_cast<float>(static_cast<double>(2.0f * std::numbers::pi) * u2));
        const float cos_t = r(std::cos(theta));
        const float sin_t = r(std::sin(theta));
        data[j] = r(r(r(radius * cos_t) * std) + mean);
        data[j + 8] = r(r(r(radius * sin_t) * std) + mean);
    }
}

uint16_t round_f16(float v) { return f32_to_f16(v); }
uint16_t round_bf16(float v) { return f32_to_bf16(v); }
float widen_bf16(uint16_t v) { return bf16_to_f32(v); }

}  // namespace

// ---- engine ---------------------------------------------------------------------------------------------------

void TorchGenerator::manual_seed(uint64_t seed) {
    seed_ = seed;
    state_[0] = static_cast<uint32_t>(seed & 0xffffffffu);
    for (int j = 1; j < kN; ++j)
        state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + static_cast<uint32_t>(j);
    left_ = 1;
    next_ = 0;
    next_double_normal_.reset();
    next_float_normal_.reset();
}

void TorchGenerator::next_state() {
    auto twist = [](uint32_t u, uint32_t v) {
        const uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
        return (mixed >> 1) ^ ((v & 1u) ? kMatrixA : 0u);
    };
    for (int i = 0; i < kN; ++i) {
        const uint32_t far = state_[(i + kM) % kN];
        state_[i] = far ^ twist(state_[i], state_[(i + 1) % kN]);
    }
    left_ = kN;
    next_ = 0;
}

uint32_t TorchGenerator::random() {
    if (--left_ == 0) next_state();
    uint32_t y = state_[next_++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
}

uint64_t TorchGenerator::random64() {
    const uint64_t hi = random();
    const uint64_t lo = random();
    return (hi << 32) | lo;
}

// ---- distributions --------------------------------------------------------------------------------------------

double TorchGenerator::normal_double(double mean, double std) {
    // at::normal_distribution<double>: returns a cached value when there is one, else draws u1, u2, returns
    // r*cos(theta) and caches r*sin(theta).
    if (next_double_normal_) {
        const double v = *next_double_normal_;
        next_double_normal_.reset();
        return v * std + mean;
    }
    const double u1 = uniform53(random64());
    const double u2 = uniform53(random64());
    const double r = std::sqrt(-2.0 * std::log1p(-u2));
    const double theta = 2.0 * std::numbers::pi * u1;
    next_double_normal_ = r * std::sin(theta);
    return r * std::cos(theta) * std + mean;
}

void TorchGenerator::normal_fill(float* data, int64_t n, double mean_d, double std_d) {
    if (n < 16) {  // the serial kernel: one double draw per element, cast to float
        for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(normal_double(mean_d, std_d));
        return;
    }
    const float mean = static_cast<float>(mean_d), std = static_cast<float>(std_d);
    for (int64_t i = 0; i < n; ++i) data[i] = uniform24(random());
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16_f32(data + i, mean, std);
    if (n % 16 != 0) {  // the last 16 values are drawn again and recomputed
        float* tail = data + n - 16;
        for (int i = 0; i < 16; ++i) tail[i] = uniform24(random());
        normal_fill_16_f32(tail, mean, std);
    }
}

void TorchGenerator::normal_fill(double* data, int64_t n, double mean, double std) {
    if (n < 16) {
        for (int64_t i = 0; i < n; ++i) data[i] = normal_double(mean, std);
        return;
    }
    for (int64_t i = 0; i < n; ++i) data[i] = uniform53(random64());
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16_f64(data + i, mean, std);
    if (n % 16 != 0) {
        double* tail = data + n - 16;
        for (int i = 0; i < 16; ++i) tail[i] = uniform53(random64());
        normal_fill_16_f64(tail, mean, std);
    }
}

void TorchGenerator::uniform_fill(float* data, int64_t n, float from, float to) {
    for (int64_t i = 0; i < n; ++i) data[i] = uniform24(random()) * (to - from) + from;
}

void TorchGenerator::uniform_fill(double* data, int64_t n, double from, double to) {
    for (int64_t i = 0; i < n; ++i) data[i] = uniform53(random64()) * (to - from) + from;
}

Tensor TorchGenerator::randn(const Shape& shape, DType dtype) {
    const int64_t n = shape_numel(shape);
    switch (dtype) {
        case DType::F32: {
            Tensor t = Tensor::empty(shape, DType::F32);
            normal_fill(t.data<float>(), n);
            return t;
        }
        case DType::F64: {
            Tensor t = Tensor::empty(shape, DType::F64);
            normal_fill(t.data<double>(), n);
            return t;
        }
        case DType::F16:
        case DType::BF16: {
            const bool half = dtype == DType::F16;
            auto round = half ? round_f16 : round_bf16;
            auto widen = half ? f16_to_f32 : widen_bf16;
            std::vector<float> v(static_cast<size_t>(n));  // narrow values, held exactly as float
            if (n < 16) {
                // static_cast<Half>(double): through float, as c10's constructors take a float.
                for (auto& x : v) x = widen(round(static_cast<float>(normal_double(0.0, 1.0))));
            } else {
                auto draw = [&] { return half ? uniform11(random()) : uniform8(random()); };
                auto fill16 = half ? normal_fill_16_narrow<round_f16, f16_to_f32>
                                   : normal_fill_16_narrow<round_bf16, widen_bf16>;
                for (auto& x : v) x = draw();
                for (int64_t i = 0; i + 16 <= n; i += 16) fill16(v.data() + i, 0.0f, 1.0f);
                if (n % 16 != 0) {
                    float* tail = v.data() + n - 16;
                    for (int i = 0; i < 16; ++i) tail[i] = draw();
                    fill16(tail, 0.0f, 1.0f);
                }
            }
            Tensor t = Tensor::empty(shape, dtype);
            auto* out = t.data<uint16_t>();
            for (int64_t i = 0; i < n; ++i) out[i] = round(v[static_cast<size_t>(i)]);
            return t;
        }
        default: SD3_ASSERT(false, "randn supports f32, f64, f16 and bf16, not ", dtype_name(dtype));
    }
    return {};
}

Tensor TorchGenerator::rand(const Shape& shape, DType dtype) {
    const int64_t n = shape_numel(shape);
    Tensor t = Tensor::empty(shape, dtype);
    switch (dtype) {
        case DType::F32: uniform_fill(t.data<float>(), n); break;
        case DType::F64: uniform_fill(t.data<double>(), n); break;
        case DType::F16:
            for (int64_t i = 0; i < n; ++i) t.data<uint16_t>()[i] = f32_to_f16(uniform11(random()));
            break;
        case DType::BF16:
            for (int64_t i = 0; i < n; ++i) t.data<uint16_t>()[i] = f32_to_bf16(uniform8(random()));
            break;
        default: SD3_ASSERT(false, "rand supports f32, f64, f16 and bf16, not ", dtype_name(dtype));
    }
    return t;
}

// ---- state in torch.get_rng_state()'s layout ------------------------------------------------------------------
// struct { uint64 seed; int32 left; int32 seeded; uint64 next; uint64 state[624]; double normal_x, normal_y,
// normal_rho; int32 normal_is_valid; (pad 4) float next_float_normal; bool valid; (pad 3) } = 5056 bytes.
namespace {
constexpr size_t kOffSeed = 0, kOffLeft = 8, kOffSeeded = 12, kOffNext = 16, kOffState = 24;
constexpr size_t kOffNormalY = kOffState + 8 * kN + 8;   // after normal_x
constexpr size_t kOffNormalValid = kOffState + 8 * kN + 24;
constexpr size_t kOffFloatNormal = kOffNormalValid + 8;
constexpr size_t kOffFloatValid = kOffFloatNormal + 4;
static_assert(kOffFloatValid + 4 == TorchGenerator::kStateBytes);

template <typename T>
void put(std::vector<uint8_t>& b, size_t off, T v) {
    std::memcpy(b.data() + off, &v, sizeof(T));
}
template <typename T>
T get(const std::vector<uint8_t>& b, size_t off) {
    T v;
    std::memcpy(&v, b.data() + off, sizeof(T));
    return v;
}
}  // namespace

std::vector<uint8_t> TorchGenerator::get_state() const {
    std::vector<uint8_t> b(kStateBytes, 0);
    put<uint64_t>(b, kOffSeed, seed_);
    put<int32_t>(b, kOffLeft, left_);
    put<int32_t>(b, kOffSeeded, 1);
    put<uint64_t>(b, kOffNext, next_);
    for (int i = 0; i < kN; ++i) put<uint64_t>(b, kOffState + 8 * i, state_[i]);
    put<double>(b, kOffNormalY, next_double_normal_.value_or(0.0));
    put<int32_t>(b, kOffNormalValid, next_double_normal_ ? 1 : 0);
    put<float>(b, kOffFloatNormal, next_float_normal_.value_or(0.0f));
    put<uint8_t>(b, kOffFloatValid, next_float_normal_ ? 1 : 0);
    return b;
}

Status TorchGenerator::set_state(const std::vector<uint8_t>& b) {
    if (b.size() != kStateBytes)
        return make_error(ErrorCode::CORRUPT_FILE, "random generator state has ", b.size(), " bytes, expected ",
                          kStateBytes, " (the layout of torch.get_rng_state())");
    const int32_t left = get<int32_t>(b, kOffLeft);
    const uint64_t next = get<uint64_t>(b, kOffNext);
    if (get<int32_t>(b, kOffSeeded) == 0 || left <= 0 || left > kN || next > static_cast<uint64_t>(kN))
        return make_error(ErrorCode::CORRUPT_FILE, "invalid mt19937 state (left ", left, ", next ", next, ")");
    seed_ = get<uint64_t>(b, kOffSeed);
    left_ = left;
    next_ = static_cast<uint32_t>(next);
    for (int i = 0; i < kN; ++i) state_[i] = static_cast<uint32_t>(get<uint64_t>(b, kOffState + 8 * i));
    next_double_normal_.reset();
    if (get<int32_t>(b, kOffNormalValid)) next_double_normal_ = get<double>(b, kOffNormalY);
    next_float_normal_.reset();
    if (get<uint8_t>(b, kOffFloatValid)) next_float_normal_ = get<float>(b, kOffFloatNormal);
    return {};
}

}  // namespace sd3
