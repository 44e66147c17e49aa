// The transformer with its block weights quantized (--base-dtype int8 | fp8 | nf4) against the float32 golden
// output of tests/data/tiny-a: the error each format adds, bounded. The quantizers' own per-element bounds are
// tested in unit/test_quant.cpp; this is what they do to a whole forward and to the LoRA gradients of a step.
#include <gtest/gtest.h>

#include <cmath>

#include "common/reference_mmdit.h"
#include "common/testing.h"
#include "io/lora_file.h"
#include "models/mmdit.h"

namespace sd3 {
namespace {

using testing::golden_tensor;
using testing::open_golden;
using testing::relative_error;

// The golden model, its blocks quantized to `f`.
MMDiT reference_model(std::optional<QuantFormat> f) {
    MMDiT m = testing::reference_mmdit();
    EXPECT_TRUE(m.to(nn::Placement{}, f).ok());
    return m;
}

// Norm-wise relative error per format. The weights' own relative error is about int8: 2^-8 of the row's absmax
// per element, fp8 e4m3: 2^-4 per element, nf4: ~10% of the block absmax; through two blocks with residual
// connections the output moves by far less. The LoRA gradients (small values, a chain twice as long) move about
// ten times more. Bounds: ~4x what was measured (output: int8 2.6e-4, fp8 2.2e-3, nf4 6.6e-3; gradients: 4.6e-3,
// 3.3e-2, 0.12); a quantized layer used without its scale, or with the wrong rows, is off by 50-100%.
struct Case {
    QuantFormat format;
    double bound, grad_bound;
};

class BaseQuant : public ::testing::TestWithParam<Case> {};

TEST_P(BaseQuant, ForwardStaysWithinTheFormatsError) {
    const Case c = GetParam();
    const MMDiT m = reference_model(c.format);
    for (const nn::Linear* l : m.linears())
        EXPECT_EQ(l->qweight.defined(), l->name.rfind("transformer_blocks.", 0) == 0) << l->name;
    SafetensorsFile g = open_golden("tiny-a/mmdit.safetensors");
    auto out = m.forward(golden_tensor(g, "0.hidden_states"), golden_tensor(g, "0.timestep"),
                         golden_tensor(g, "0.encoder_hidden_states"), golden_tensor(g, "0.pooled_projections"));
    ASSERT_TRUE(out.ok()) << out.status().message();
    const double rel = relative_error(*out, golden_tensor(g, "0.output"));
    std::printf("%s: norm-wise relative error %.3g\n", cpu::quant_format_name(c.format), rel);
    EXPECT_LT(rel, c.bound);
    EXPECT_GT(rel, 0.0);  // the weights really are quantized
}

// The backward through quantized layers (dx from the dequantized weight) gives LoRA gradients close to the
// float32 ones.
TEST_P(BaseQuant, TrainingGradientsStayWithinTheFormatsError) {
    const Case c = GetParam();
    SafetensorsFile r = open_golden("tiny-a/lora_and_training.safetensors");
    MMDiT m = reference_model(c.format);
    LoraTrainable lora = m.make_trainable_lora(LoraTrainConfig{}).value();
    ASSERT_TRUE(m.attach_trainable(lora).ok());
    // B = 0 at init gives zero dA; any deterministic non-zero B exercises both factors.
    for (size_t i = 0; i < lora.slots.size(); ++i) {
        Tensor p = lora.param(i);
        for (int64_t k = 0; k < p.numel(); ++k) p.data<float>()[k] = 0.01f * std::sin(0.37f * (k + 13 * i));
    }
    MMDiTActivations saved;
    const Tensor x = golden_tensor(r, "train.x0");
    auto pred = m.forward(x, golden_tensor(r, "train.timesteps"), golden_tensor(r, "train.encoder_hidden_states"),
                          golden_tensor(r, "train.pooled_projections"), &saved);
    ASSERT_TRUE(pred.ok());
    m.backward(*pred, saved, lora.grads);  // d(0.5·‖pred‖²)/d pred = pred

    MMDiT f32 = reference_model(std::nullopt);
    LoraTrainable ref = f32.make_trainable_lora(LoraTrainConfig{}).value();
    ref.params.copy_from(lora.params);
    ASSERT_TRUE(f32.attach_trainable(ref).ok());
    MMDiTActivations saved_ref;
    auto pred_ref = f32.forward(x, golden_tensor(r, "train.timesteps"), golden_tensor(r, "train.encoder_hidden_states"),
                                golden_tensor(r, "train.pooled_projections"), &saved_ref);
    ASSERT_TRUE(pred_ref.ok());
    f32.backward(*pred_ref, saved_ref, ref.grads);
    const double rel = relative_error(lora.grads, ref.grads);
    std::printf("%s gradients: norm-wise relative error %.3g\n", cpu::quant_format_name(c.format), rel);
    EXPECT_LT(rel, c.grad_bound);
}

// MMDiT::placed_bytes (the default T5 budget of train's cache phase) reads from the file's shapes alone what to()
// places: the same bytes but the quantized layers' scales (int8's per row, nf4's per block; fp8 has none);
// without a base format, exactly the same.
TEST_P(BaseQuant, PlacedBytesAreWhatToPlacesLessTheScales) {
    auto source = SafetensorsSource::open(testing::tiny_path("model/transformer/diffusion_pytorch_model.safetensors"));
    ASSERT_TRUE(source.ok()) << source.status().message();
    const MMDiT q = reference_model(GetParam().format);
    size_t scales = 0;
    for (const nn::Linear* l : q.linears())
        if (l->qweight.scale.defined()) scales += l->qweight.scale.nbytes();
    EXPECT_EQ(MMDiT::placed_bytes(**source, nn::Placement{}, GetParam().format) + scales, q.weight_bytes());
    EXPECT_EQ(MMDiT::placed_bytes(**source, nn::Placement{}, std::nullopt), reference_model(std::nullopt).weight_bytes());
}

INSTANTIATE_TEST_SUITE_P(Formats, BaseQuant,
                         ::testing::Values(Case{QuantFormat::INT8_ROW, 1e-3, 2e-2}, Case{QuantFormat::FP8_E4M3, 1e-2, 0.13},
                                           Case{QuantFormat::NF4, 2.5e-2, 0.45}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                             return std::string(cpu::quant_format_name(i.param.format));
                         });

}  // namespace
}  // namespace sd3
