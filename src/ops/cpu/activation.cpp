// Element-wise activations and their derivatives, in float32 as PyTorch's CPU kernels compute them.
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCoeff = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void activation_fwd(float* y, const float* x, int64_t n, Activation act) {
    switch (act) {
        case Activation::SILU:
#pragma omp parallel for
            for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(x[i]);
            return;
        case Activation::GELU_TANH:
#pragma omp parallel for
            for (int64_t i = 0; i < n; ++i) {
                const float v = x[i];
                y[i] = 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * (v + kGeluCoeff * v * v * v)));
            }
            return;
        case Activation::GELU_ERF:
#pragma omp parallel for
            for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
            return;
        case Activation::QUICK_GELU:
#pragma omp parallel for
            for (int64_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid(1.702f * x[i]);
            return;
    }
}

void activation_bwd(float* dx, const float* dy, const float* x, int64_t n, Activation act) {
    switch (act) {
        case Activation::SILU:
            for (int64_t i = 0; i < n; ++i) {
                const float s = sigmoid(x[i]);
                dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
            }
            return;
        case Activation::GELU_TANH:
            for (int64_t i = 0; i < n; ++i) {
                const float v = x[i];
                const float t = std::tanh(kSqrt2OverPi * (v + kGeluCoeff * v * v * v));
                const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoeff * v * v);
                dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
            }
            return;
        case Activation::GELU_ERF:
            for (int64_t i = 0; i < n; ++i) {
                const float v = x[i];
                const float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
                const float pdf = std::exp(-0.5f * v * v) * 0.3989422804014327f;
                dx[i] = dy[i] * (cdf + v * pdf);
            }
            return;
        case Activation::QUICK_GELU:
            for (int64_t i = 0; i < n; ++i) {
                const float s = sigmoid(1.702f * x[i]);
                dx[i] = dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
            }
            return;
    }
}

}  // namespace sd3::cpu
