// bitsandbytes 0.43.1's AdamW8bit (reference-training.md 3.6; gpu-components.md 4c) over the flat buffer: the
// layout of its state (8-bit blocks per parameter tensor, float32 moments for small ones) and the per-step
// scalars. The element math is ops/cpu/train_ops.h's adam8bit_chunk, run where the optimizer lives;
// docs/optimizers.md gives the derivation.
#include <cmath>
#include <vector>

#include "ops/device.h"
#include "ops/mmdit_ops.h"
#include "ops/train_ops.h"
#include "train/optimizer.h"

namespace sd3::train {

namespace {

// Every segment (parameter tensor) of at least min_8bit_size elements has 8-bit moments in its own blocks;
// smaller ones keep float32 moments (kOptimizer32bit2State math). The update runs over chunks: one per 8-bit
// block, and float32 segments cut to the same length. Chunks are independent, so any order gives the same bytes.
class AdamW8bit final : public Optimizer {
  public:
    AdamW8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device)
        : Optimizer(std::move(segments), device), c_(c) {
        std::vector<int64_t> table;  // (offset, count, block) per chunk
        int64_t blocks = 0;
        for (const ParamSegment& s : segments_) {
            const bool quantized = s.numel >= c_.min_8bit_size;
            for (int64_t at = 0; at < s.numel; at += c_.block_size)
                table.insert(table.end(), {s.offset + at, std::min(c_.block_size, s.numel - at), quantized ? blocks++ : -1});
        }
        Tensor chunks = Tensor::empty({static_cast<int64_t>(table.size()) / 3, 3}, DType::I64);  // [E, 3]
        std::copy(table.begin(), table.end(), chunks.data<int64_t>());
        chunks_ = detail::on_device(chunks, device_);
        Tensor maps = Tensor::empty({512}, DType::F32);  // [512] the signed map, then the unsigned one
        const std::array<float, 256> smap = cpu::dynamic_quant_map(true), umap = cpu::dynamic_quant_map(false);
        std::copy(smap.begin(), smap.end(), maps.data<float>());
        std::copy(umap.begin(), umap.end(), maps.data<float>() + 256);
        maps_ = detail::on_device(maps, device_);
        st_.m_codes = ops::zeros({numel_}, device_, DType::U8);  // [n] (bitsandbytes starts from uint8 zeros)
        st_.v_codes = ops::zeros({numel_}, device_, DType::U8);  // [n]
        st_.m_absmax = ops::zeros({blocks}, device_);            // [blocks]
        st_.v_absmax = ops::zeros({blocks}, device_);            // [blocks]
        st_.m32 = ops::zeros({numel_}, device_);                 // [n] only used by float32 segments
        st_.v32 = ops::zeros({numel_}, device_);
    }

    NamedTensors state() const override {
        return {{"adamw8bit.step", detail::scalar_i64(steps_)}, {"adamw8bit.m_codes", to_host(st_.m_codes)},
                {"adamw8bit.v_codes", to_host(st_.v_codes)},     {"adamw8bit.m_absmax", to_host(st_.m_absmax)},
                {"adamw8bit.v_absmax", to_host(st_.v_absmax)},   {"adamw8bit.m32", to_host(st_.m32)},
                {"adamw8bit.v32", to_host(st_.v32)}};
    }

    Status load_state(const NamedTensors& st) override {
        const Tensor *s, *mc, *vc, *ma, *va, *m32, *v32;
        SD3_TRY(detail::expect_state(st, "adamw8bit.step", DType::I64, 1, &s));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m_codes", DType::U8, numel_, &mc));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v_codes", DType::U8, numel_, &vc));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m_absmax", DType::F32, st_.m_absmax.numel(), &ma));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v_absmax", DType::F32, st_.v_absmax.numel(), &va));
        SD3_TRY(detail::expect_state(st, "adamw8bit.m32", DType::F32, numel_, &m32));
        SD3_TRY(detail::expect_state(st, "adamw8bit.v32", DType::F32, numel_, &v32));
        steps_ = *s->data<int64_t>();
        copy_into(st_.m_codes, *mc);
        copy_into(st_.v_codes, *vc);
        copy_into(st_.m_absmax, *ma);
        copy_into(st_.v_absmax, *va);
        copy_into(st_.m32, *m32);
        copy_into(st_.v32, *v32);
        return {};
    }

    int64_t state_bytes() const override { return 2 * numel_ + 8 * st_.m_absmax.numel() + 8 * numel_; }

  private:
    void update(const Tensor& params, const Tensor& grads, double lr_d) override {
        ++steps_;
        // The kernel's scalars: float32 powers of the step count (bitsandbytes computes them in Python floats and
        // passes float32; powf here, exact where the kernel's __powf is not).
        const float lr = static_cast<float>(lr_d), b1 = static_cast<float>(c_.beta1), b2 = static_cast<float>(c_.beta2);
        const float eps = static_cast<float>(c_.eps), wd = static_cast<float>(c_.weight_decay);
        const float corr1 = 1.0f - std::pow(b1, static_cast<float>(steps_));
        const float corr2 = std::sqrt(1.0f - std::pow(b2, static_cast<float>(steps_)));
        cpu::Adam8bitStep s;
        s.beta1 = b1;
        s.beta2 = b2;
        s.one_minus_beta1 = 1.0f - b1;
        s.one_minus_beta2 = 1.0f - b2;
        s.step_size = (-lr * corr2) / corr1;
        s.eps_corr2 = corr2 * eps;
        s.weight_decay = wd > 0.0f;
        s.decay = 1.0f - (lr * wd);
        ops::adam8bit_update_(params, grads, st_, chunks_, maps_, c_.block_size, s);
    }

    OptimizerConfig c_;
    ops::Adam8bitTensors st_;  // on device_
    Tensor chunks_;            // I64 [E, 3] (offset, count, block) on device_
    Tensor maps_;              // f32 [512] on device_
};

}  // namespace

std::unique_ptr<Optimizer> make_adamw8bit(const OptimizerConfig& c, std::vector<ParamSegment> segments, Device device) {
    return std::make_unique<AdamW8bit>(c, std::move(segments), device);
}

}  // namespace sd3::train
