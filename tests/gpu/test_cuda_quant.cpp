// Quantized frozen weights on CUDA against their CPU specification (ops/cpu/quant_ops.h): dequantize() must give
// cpu::dequantize_rows' values exactly (up to the final rounding to dt, which the reference applies too) in every
// format (f32/f16/bf16 casts, fp8 e4m3, int8 per-row absmax, NF4 over an odd element count), and the linear layer
// over such a weight must match the CPU linear over the dequantized weight (tolerances: gpu_testing.h).
#include "gpu/gpu_testing.h"
#include "io/quant.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/quant_ops.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/quant_linear.h"

namespace sd3::gputest {
namespace {

class CudaQuant : public ::testing::TestWithParam<DType> {
  protected:
    void SetUp() override { SD3_REQUIRE_GPU(); }
    DType dt() const { return GetParam(); }
};

// A quantized weight with its bytes on the GPU; `view` points at them.
struct DeviceQuant {
    QuantizedMatrix host;
    Tensor data, scale;
    cpu::QuantWeightView view;
};

DeviceQuant upload_quant(const Tensor& w, cpu::QuantFormat f) {
    DeviceQuant d;
    d.host = quantize_matrix(w, f);
    d.data = to_device(d.host.data, kGPU).value();
    if (d.host.scale.defined()) d.scale = to_device(d.host.scale, kGPU).value();
    d.view = d.host.view();
    d.view.data = d.data.raw();
    d.view.scale = d.scale.defined() ? d.scale.data<float>() : nullptr;
    return d;
}

const cpu::QuantFormat kFormats[] = {cpu::QuantFormat::F32,      cpu::QuantFormat::F16,      cpu::QuantFormat::BF16,
                                     cpu::QuantFormat::FP8_E4M3, cpu::QuantFormat::INT8_ROW, cpu::QuantFormat::NF4};

TEST_P(CudaQuant, DequantizeAndLinear) {
    const int64_t M = 19, K = 111, N = 45;  // N*K = 4995: odd, so NF4's last byte holds one code
    const Tensor w = Tensor::from_vector({N, K}, randn(N * K, 1, 0.5f));
    const auto x = round_to(randn(M * K, 2), dt()), b = round_to(randn(N, 3), dt());
    Tensor gx = upload(x, dt()), gb = upload(b, dt());
    for (cpu::QuantFormat f : kFormats) {
        SCOPED_TRACE(cpu::quant_format_name(f));
        const DeviceQuant q = upload_quant(w, f);
        std::vector<float> deq(N * K);
        cpu::dequantize_rows(deq.data(), q.host.view(), 0, N);

        Tensor gdeq = upload(std::vector<float>(N * K, NAN), dt());
        cuda::dequantize(cuda::Context::get(0).exec(), gdeq.raw(), dt(), q.view);
        EXPECT_EQ(download(gdeq), round_to(deq, dt()));

        const auto wr = round_to(deq, dt());
        std::vector<float> y(M * N);
        cpu::linear_fwd(y.data(), x.data(), wr.data(), b.data(), M, K, N);
        Tensor gy = upload(std::vector<float>(M * N, NAN), dt());
        cuda::linear_fwd_quantized(cuda::Context::get(0).exec(cuda::linear_fwd_quantized_workspace(q.view, dt())),
                                   gy.raw(), gx.raw(), q.view, gb.raw(), M, dt());
        EXPECT_TRUE(close(download(gy), y, dt(), bias_epilogue_factor(dt())));

        // The Tensor-level op on the GPU gives what it gives on the CPU (f32: the spec's own quant_linear_fwd).
        const Tensor xc = Tensor::from_vector({M, K}, x), bc = Tensor::from_vector({N}, b);
        const Tensor ref = dt() == DType::F32 ? ops::linear_quantized(xc, q.host.view(), bc)
                                              : Tensor::from_vector({M, N}, y);
        const Tensor got = ops::linear_quantized(to_device(xc.to(dt()), kGPU).value(), q.view,
                                                 to_device(bc.to(dt()), kGPU).value());
        EXPECT_TRUE(close(download(got), ref.to_float_vector(), dt(), bias_epilogue_factor(dt())));
    }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaQuant, ::testing::ValuesIn(kDTypes), dt_param_name);

}  // namespace
}  // namespace sd3::gputest
