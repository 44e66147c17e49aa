// Quantized frozen weights on CUDA: dequantize() must reproduce the format's definition exactly (int8 per-row
// scale, fp8 e4m3/e5m2 plain or scaled, bitsandbytes NF4 with an odd element count), and the linear layer over
// such a weight must match the CPU linear over the dequantized weight (tolerances: gpu_testing.h).
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gpu/gpu_testing.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"

namespace sd3::gputest {
namespace {

// The NF4 code book (bitsandbytes; research/gpu-components.md §4b), for the reference quantizer.
const float kNf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

struct Quantized {
    std::vector<uint8_t> bytes;   // the stored weight
    std::vector<float> scale;     // per row, per block, or empty
    std::vector<float> dequant;   // the format's definition of the weight, in float32
};

Quantized quantize(const std::vector<float>& w, int64_t N, int64_t K, cuda::QuantFormat f, bool scaled) {
    Quantized q;
    const int64_t n = N * K;
    q.dequant.resize(n);
    if (f == cuda::QuantFormat::NF4) {
        const int64_t block = 64, blocks = (n + block - 1) / block;
        q.bytes.assign((n + 1) / 2, 0);
        q.scale.resize(blocks);
        for (int64_t b = 0; b < blocks; ++b) {
            float mx = 0;
            for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) mx = std::max(mx, std::fabs(w[i]));
            q.scale[b] = mx;
        }
        for (int64_t i = 0; i < n; ++i) {
            const float x = w[i] / q.scale[i / block];
            int best = 0;
            for (int c = 1; c < 16; ++c)
                if (std::fabs(kNf4[c] - x) < std::fabs(kNf4[best] - x)) best = c;
            q.bytes[i / 2] |= static_cast<uint8_t>(i % 2 == 0 ? best << 4 : best);
            q.dequant[i] = kNf4[best] * q.scale[i / block];
        }
        return q;
    }
    q.bytes.resize(n);
    if (f == cuda::QuantFormat::INT8_ROW || scaled) {
        q.scale.resize(N);
        for (int64_t r = 0; r < N; ++r) {
            float mx = 0;
            for (int64_t c = 0; c < K; ++c) mx = std::max(mx, std::fabs(w[r * K + c]));
            q.scale[r] = f == cuda::QuantFormat::INT8_ROW ? mx / 127.0f : mx / 8.0f;
        }
    }
    for (int64_t i = 0; i < n; ++i) {
        const float s = q.scale.empty() ? 1.0f : q.scale[i / K];
        if (f == cuda::QuantFormat::INT8_ROW) {
            const int v = static_cast<int>(std::lrint(w[i] / s));
            q.bytes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(v, -127, 127)));
            q.dequant[i] = static_cast<float>(static_cast<int8_t>(q.bytes[i])) * s;
        } else if (f == cuda::QuantFormat::FP8_E4M3) {
            q.bytes[i] = f32_to_f8e4m3(w[i] / s);
            q.dequant[i] = f8e4m3_to_f32(q.bytes[i]) * s;
        } else {
            q.bytes[i] = f32_to_f8e5m2(w[i] / s);
            q.dequant[i] = f8e5m2_to_f32(q.bytes[i]) * s;
        }
    }
    return q;
}

class CudaQuant : public ::testing::TestWithParam<DType> {
  protected:
    void SetUp() override { SD3_REQUIRE_GPU(); }
    DType dt() const { return GetParam(); }
};

TEST_P(CudaQuant, DequantizeAndLinear) {
    struct Case {
        cuda::QuantFormat f;
        bool scaled;
        const char* name;
    };
    const Case cases[] = {{cuda::QuantFormat::INT8_ROW, true, "int8 per-row"},
                          {cuda::QuantFormat::FP8_E4M3, false, "fp8 e4m3 cast"},
                          {cuda::QuantFormat::FP8_E4M3, true, "fp8 e4m3 per-row"},
                          {cuda::QuantFormat::FP8_E5M2, false, "fp8 e5m2 cast"},
                          {cuda::QuantFormat::NF4, true, "nf4"}};
    const int64_t M = 19, K = 111, N = 45;  // N*K = 4995: odd, so NF4's last byte holds one code
    const auto w = randn(N * K, 1, 0.5f);
    const auto x = round_to(randn(M * K, 2), dt()), b = round_to(randn(N, 3), dt());
    Tensor gx = upload(x, dt()), gb = upload(b, dt());
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        const Quantized q = quantize(w, N, K, c.f, c.scaled);
        // Raw bytes travel as U8.
        Tensor hq = Tensor::empty({static_cast<int64_t>(q.bytes.size())}, DType::U8);
        std::memcpy(hq.raw(), q.bytes.data(), q.bytes.size());
        Tensor dq = to_device(hq, kGPU).value();
        Tensor dscale = q.scale.empty() ? Tensor() : upload(q.scale, DType::F32);
        cuda::QuantWeight qw{c.f, dq.raw(), q.scale.empty() ? nullptr : dscale.data<float>(), 64};

        // Dequantization is exact up to the final rounding to dt, which the reference applies too.
        Tensor deq = upload(std::vector<float>(N * K, NAN), dt());
        cuda::dequantize(cuda::Context::get(0).exec(), deq.raw(), dt(), qw, N, K);
        EXPECT_EQ(download(deq), round_to(q.dequant, dt()));

        const auto wr = round_to(q.dequant, dt());
        std::vector<float> y(M * N);
        cpu::linear_fwd(y.data(), x.data(), wr.data(), b.data(), M, K, N);
        Tensor gy = upload(std::vector<float>(M * N, NAN), dt());
        cuda::linear_fwd_quantized(cuda::Context::get(0).exec(cuda::linear_fwd_quantized_workspace(N, K, dt())),
                                   gy.raw(), gx.raw(), qw, gb.raw(), M, K, N, dt());
        EXPECT_TRUE(close(download(gy), y, dt(), bias_epilogue_factor(dt())));
    }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaQuant, ::testing::ValuesIn(kDTypes), dt_param_name);

}  // namespace
}  // namespace sd3::gputest
