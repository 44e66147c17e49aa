// Central finite-difference checks of backward passes in float32. The scalar loss L = Σ r ⊙ f(x) with a fixed
// random r is accumulated in double, so only f's own float rounding (~6e-8 relative per element) enters the
// difference quotient. Checks are directional: for random unit-variance directions v, (L(x+hv) - L(x-hv)) / 2h
// must equal <∇L, v>; each input tensor is checked on its own, so a wrong gradient in any one of them fails.
// Error budget for step h on O(1) inputs: truncation ~h²·|f'''|/6, rounding ~sqrt(n)·6e-8·|r·f| / h.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <omp.h>
#include <random>
#include <vector>

#include "core/tensor.h"

namespace sd3::testing {

// Runs a test's many tiny forwards on one OpenMP thread: with 2 threads on a loaded machine the workers' spin
// waits made the whole-model finite-difference test 30x slower (92 s vs 3 s); these sizes gain nothing from
// threads. (OMP_WAIT_POLICY=passive fixes it too, but cannot be set from inside the process.)
struct OneOmpThread {
    int prev = omp_get_max_threads();
    OneOmpThread() { omp_set_num_threads(1); }
    ~OneOmpThread() { omp_set_num_threads(prev); }
};

inline Tensor random_tensor(const Shape& shape, std::mt19937& rng, float stddev = 1.0f) {
    std::normal_distribution<float> nd(0.0f, stddev);
    Tensor t = Tensor::empty(shape, DType::F32);
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(rng);
    return t;
}

inline double dot(const Tensor& a, const Tensor& b) {
    const std::vector<float> x = a.to_float_vector(), y = b.to_float_vector();
    EXPECT_EQ(x.size(), y.size());
    double s = 0;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) s += static_cast<double>(x[i]) * y[i];
    return s;
}

// `param` is perturbed in place (it must be the storage the loss reads); `loss` recomputes the forward;
// `grad` is the analytic gradient for `param`. Passes when |fd - an| <= atol + rtol·|an| for each direction.
// With `richardson`, the quotient is (4·D(h/2) - D(h)) / 3, which cancels the h² truncation term (for strongly
// curved functions where float noise forbids a smaller h) at ~3x the rounding noise of D(h).
inline ::testing::AssertionResult directional_check(Tensor param, const Tensor& grad,
                                                    const std::function<double()>& loss, std::mt19937& rng,
                                                    double h, double atol, double rtol, int directions = 3,
                                                    bool richardson = false) {
    EXPECT_TRUE(param.is_contiguous());
    float* p = param.data<float>();
    const int64_t n = param.numel();
    std::vector<float> saved(p, p + n);
    for (int d = 0; d < directions; ++d) {
        const Tensor v = random_tensor(param.shape(), rng);
        const float* pv = v.data<float>();
        auto quotient = [&](double step) {
            for (int64_t i = 0; i < n; ++i) p[i] = saved[i] + static_cast<float>(step) * pv[i];
            const double lp = loss();
            for (int64_t i = 0; i < n; ++i) p[i] = saved[i] - static_cast<float>(step) * pv[i];
            const double lm = loss();
            for (int64_t i = 0; i < n; ++i) p[i] = saved[i];
            return (lp - lm) / (2.0 * step);
        };
        const double fd = richardson ? (4.0 * quotient(h / 2) - quotient(h)) / 3.0 : quotient(h);
        const double an = dot(grad, v);
        if (!(std::fabs(fd - an) <= atol + rtol * std::fabs(an)))
            return ::testing::AssertionFailure() << "direction " << d << ": finite difference " << fd
                                                 << " vs analytic " << an << " (|diff| " << std::fabs(fd - an) << ")";
    }
    return ::testing::AssertionSuccess();
}

}  // namespace sd3::testing
