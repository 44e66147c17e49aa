// Helpers of the CUDA op tests (ggml's test-backend-ops idea, research/aesthetics.md §3.3): random inputs,
// rounding to the storage dtype, upload/download, per-dtype tolerances, and the skip when no GPU is present.
//
// Tolerances (per element, |got - ref| <= atol + rtol * |ref|). The CPU reference runs in float32/double on
// inputs already rounded to the storage dtype, so the GPU result differs from it only by (a) float32
// accumulation order and (b) rounding the output to its dtype:
//   F32  (TF32 off): (a) only, ~1e-6 relative for sums of ~100-1500 terms   -> rtol 1e-5, atol 1e-5 * max|ref|
//   BF16 (8 significant bits): one output rounding is <= u = 2^-8 relative (the unit roundoff); twice that
//        leaves room for (a) pushing a value across a rounding boundary   -> rtol 2^-7, atol 1e-3 * max|ref|
//   F16  (11 significant bits, u = 2^-11): likewise 2u                     -> rtol 2^-10, atol 2e-4 * max|ref|
// The atol term (a small fraction of the largest reference value, well under one ulp of it) covers results
// that cancel to near zero, where a relative bound means nothing.
// cuBLASLt's bias epilogue with a 16-bit output rounds the product to the output dtype before adding the bias
// and rounds again (seen on H100, cuBLASLt 13.1: 0.09 off at 16.2 in bf16, beyond half an ulp): two roundings,
// so GEMMs with a bias get twice the 16-bit tolerance (`kBiasEpilogue`). PyTorch's addmm does the same.
// Every comparison records its largest error and how much of the tolerance it used as a test property, so
// the XML report (--gtest_output=xml) holds the numbers docs/cuda.md quotes.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "common/testing.h"
#include "core/tensor.h"
#include "ops/device.h"

namespace sd3::gputest {

#define SD3_REQUIRE_GPU()                                                                                 \
    do {                                                                                                  \
        if (!::sd3::cuda_available())                                                                     \
            GTEST_SKIP() << "no CUDA device here: the CUDA op tests run on a GPU machine (docs/cuda.md)"; \
    } while (0)

inline const Device kGPU{DeviceType::CUDA, 0};

inline std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f, float shift = 0.0f) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = shift + scale * dist(gen);
    return v;
}

// Each value rounded to `dt` and back (what the GPU sees when it stores `dt`).
inline std::vector<float> round_to(const std::vector<float>& v, DType dt) {
    if (dt == DType::F32) return v;
    Tensor t = Tensor::from_vector({static_cast<int64_t>(v.size())}, v).to(dt).to(DType::F32);
    return t.to_float_vector();
}

// Uploads `v` (already representable in dt, or rounded on the way) as a contiguous `dt` tensor on the GPU.
inline Tensor upload(const std::vector<float>& v, DType dt, const Shape& shape = {}) {
    const Shape s = shape.empty() ? Shape{static_cast<int64_t>(v.size())} : shape;
    auto r = to_device(Tensor::from_vector(s, v).to(dt), kGPU);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.value();
}

inline std::vector<float> download(const Tensor& t) { return to_host(t).to(DType::F32).to_float_vector(); }

inline const char* dt_name(DType dt) { return dt == DType::F32 ? "f32" : dt == DType::BF16 ? "bf16" : "f16"; }

struct Tol {
    double atol_of_max, rtol;
};

inline Tol tol_for(DType dt) {
    switch (dt) {
        case DType::BF16: return {1e-3, 1.0 / 128};
        case DType::F16: return {2e-4, 1.0 / 1024};
        default: return {1e-5, 1e-5};
    }
}

// all_close of tests/common with atol scaled by the largest reference magnitude.
inline ::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref, DType dt,
                                        double extra = 1.0) {
    if (got.size() != ref.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " != reference " << ref.size();
    double mx = 0;
    for (float r : ref) mx = std::max(mx, std::fabs(static_cast<double>(r)));
    const Tol t = tol_for(dt);
    const double atol = extra * t.atol_of_max * std::max(mx, 1e-30), rtol = extra * t.rtol;
    double max_diff = 0, used = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
        max_diff = std::max(max_diff, d);
        used = std::max(used, d / (atol + rtol * std::fabs(static_cast<double>(ref[i]))));
    }
    static int counter = 0;
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s max_abs_diff=%.3g max_abs_ref=%.3g tolerance_used=%.2f", dt_name(dt),
                  max_diff, mx, used);
    ::testing::Test::RecordProperty("cmp" + std::to_string(++counter), buf);
    const int64_t n = static_cast<int64_t>(ref.size());
    return testing::all_close(Tensor::from_vector({n}, got), Tensor::from_vector({n}, ref), atol, rtol);
}

inline double bias_epilogue_factor(DType dt) { return dt == DType::F32 ? 1.0 : 2.0; }

inline std::string dt_param_name(const ::testing::TestParamInfo<DType>& info) { return dt_name(info.param); }

inline const DType kDTypes[] = {DType::F32, DType::BF16, DType::F16};

// Tensor-level versions: a float32 CPU tensor of randn values; its values rounded to `dt` and back, a fresh copy
// even for f32 (Tensor::to returns itself then), so in-place ops on it leave the input alone; the same values
// stored as `dt` on the GPU.
inline Tensor cpu_randn(const Shape& shape, uint32_t seed, float scale = 1.0f, float shift = 0.0f) {
    return Tensor::from_vector(shape, randn(shape_numel(shape), seed, scale, shift));
}
inline Tensor rounded(const Tensor& cpu_f32, DType dt) { return cpu_f32.to(dt).to(DType::F32).clone(); }
inline Tensor on_gpu(const Tensor& cpu_f32, DType dt) {
    auto r = to_device(cpu_f32.to(dt), kGPU);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.value();
}

// The CUDA op's result (in `dt`, on the GPU) against the CPU op's f32 result on the dtype-rounded inputs.
inline ::testing::AssertionResult same_as_cpu(const Tensor& gpu_out, const Tensor& cpu_out, DType dt,
                                              double extra = 1.0) {
    if (gpu_out.device().is_cpu()) return ::testing::AssertionFailure() << "result is not on the GPU";
    if (gpu_out.dtype() != dt) return ::testing::AssertionFailure() << "result dtype " << gpu_out.describe();
    return close(download(gpu_out), cpu_out.contiguous().to_float_vector(), dt, extra);
}

}  // namespace sd3::gputest
