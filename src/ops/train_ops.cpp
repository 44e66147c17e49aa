// Shape checks and device dispatch for ops/train_ops.h: CUDA tensors go to ops/cuda/tensor_ops_train, the rest to
// the loops of ops/cpu/train_ops.h.
#include "ops/train_ops.h"

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "ops/dispatch.h"

namespace sd3::ops {

namespace {

void require_f32(const Tensor& t, const Tensor& like, const char* what) {
    SD3_ASSERT(t.defined() && t.dtype() == DType::F32 && t.is_contiguous() && t.device() == like.device(), what,
               " must be contiguous f32 on ", like.device().str(), ", got ", t.defined() ? t.describe() : "undefined");
}

void require_table(const Tensor& t, const Tensor& like, int64_t cols, const char* what) {
    SD3_ASSERT(t.defined() && t.dtype() == DType::I64 && t.dim() == 2 && t.size(1) == cols && t.is_contiguous() &&
                   t.device() == like.device(),
               what, " must be a contiguous I64 [rows, ", cols, "] table on ", like.device().str(), ", got ",
               t.defined() ? t.describe() : "undefined");
}

}  // namespace

Tensor loss_sample_table(const std::vector<cpu::LossSample>& samples) {
    constexpr int64_t kBytes = sizeof(cpu::LossSample);
    Tensor t = Tensor::empty({static_cast<int64_t>(samples.size()), kBytes}, DType::U8);
    if (!samples.empty()) std::memcpy(t.raw(), samples.data(), samples.size() * kBytes);
    return t;
}

Tensor flow_matching_loss(const Tensor& pred_in, const Tensor& noisy_in, const Tensor& x0_in, const Tensor& noise_in,
                          const Tensor& samples, bool precondition, Tensor* grad) {
    SD3_ASSERT(pred_in.defined() && pred_in.dim() >= 1 && samples.defined() && samples.dtype() == DType::U8 &&
                   samples.is_contiguous() && samples.device() == pred_in.device() &&
                   samples.shape() == Shape({pred_in.size(0), static_cast<int64_t>(sizeof(cpu::LossSample))}),
               "flow_matching_loss: pred ", pred_in.describe(), " with the sample table ", samples.describe());
    for (const Tensor* t : {&noisy_in, &x0_in, &noise_in})
        SD3_ASSERT(t->defined() && t->dtype() == DType::F32 && t->device() == pred_in.device() &&
                       t->shape() == pred_in.shape(),
                   "flow_matching_loss: inputs must be f32 like pred ", pred_in.describe(), ", got ", t->describe());
    SD3_ON_CUDA(pred_in, flow_matching_loss(pred_in, noisy_in, x0_in, noise_in, samples, precondition, grad));
    SD3_ASSERT(pred_in.dtype() == DType::F32, "flow_matching_loss: the CPU takes f32 pred, got ", pred_in.describe());
    const Tensor pred = pred_in.contiguous(), noisy = noisy_in.contiguous(), x0 = x0_in.contiguous(),
                 noise = noise_in.contiguous();
    const int64_t B = pred.size(0), per = B > 0 ? pred.numel() / B : 0;
    const auto* sample = static_cast<const cpu::LossSample*>(samples.raw());
    *grad = Tensor::empty(pred.shape(), DType::F32);
    Tensor sums = Tensor::empty({B}, DType::F64);  // [B]
#pragma omp parallel for
    for (int64_t b = 0; b < B; ++b)
        sums.data<double>()[b] = cpu::flow_matching_sample(
            grad->data<float>() + b * per, pred.data<float>() + b * per, noisy.data<float>() + b * per,
            x0.data<float>() + b * per, noise.data<float>() + b * per, per, sample[b], precondition);
    return sums;
}

Tensor clip_by_total_norm_(const Tensor& x, const Tensor& segments, float max_norm) {
    require_f32(x, x, "clip_by_total_norm_ x");
    require_table(segments, x, 2, "clip_by_total_norm_ segments");
    SD3_ON_CUDA(x, clip_by_total_norm_(x, segments, max_norm));
    const int64_t S = segments.size(0);
    const int64_t* seg = segments.data<int64_t>();
    std::vector<float> norms(S);
    // One segment per thread, each summed in element order: the same result for any thread count.
#pragma omp parallel for schedule(dynamic)
    for (int64_t k = 0; k < S; ++k)
        norms[k] = static_cast<float>(std::sqrt(cpu::sum_squares(x.data<float>() + seg[2 * k], seg[2 * k + 1])));
    Tensor stats = Tensor::empty({2}, DType::F32);
    cpu::total_norm_and_coef(stats.data<float>(), norms.data(), S, max_norm);
    const float coef = stats.data<float>()[1];
    if (coef < 1.0f) scale_(x, coef);
    return stats;
}

void scale_(const Tensor& x, float s) {
    require_f32(x, x, "scale_ x");
    SD3_ON_CUDA(x, scale_(x, s));
    float* d = x.data<float>();
    const int64_t n = x.numel();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) d[i] *= s;
}

void zero_(const Tensor& x) {
    SD3_ASSERT(x.defined() && x.is_contiguous(), "zero_ needs a contiguous tensor, got ", x.describe());
    SD3_ON_CUDA(x, zero_(x));
    std::memset(x.raw(), 0, x.nbytes());
}

void add_scaled_(const Tensor& acc, const Tensor& x, float s) {
    require_f32(acc, acc, "add_scaled_ acc");
    require_f32(x, acc, "add_scaled_ x");
    SD3_ASSERT(x.numel() == acc.numel(), "add_scaled_: ", x.describe(), " into ", acc.describe());
    SD3_ON_CUDA(acc, add_scaled_(acc, x, s));
    float* a = acc.data<float>();
    const float* d = x.data<float>();
    const int64_t n = acc.numel();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) a[i] += d[i] * s;
}

bool all_finite(const Tensor& x) {
    require_f32(x, x, "all_finite x");
    SD3_ON_CUDA(x, all_finite(x));
    const float* d = x.data<float>();
    const int64_t n = x.numel();
    bool finite = true;
#pragma omp parallel for reduction(&& : finite)
    for (int64_t i = 0; i < n; ++i) finite = finite && std::isfinite(d[i]);
    return finite;
}

void adamw_update_(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const cpu::AdamWStep& s) {
    for (const Tensor* t : {&p, &g, &m, &v}) {
        require_f32(*t, p, "adamw_update_ operand");
        SD3_ASSERT(t->numel() == p.numel(), "adamw_update_: ", t->describe(), " against ", p.describe());
    }
    SD3_ON_CUDA(p, adamw_update_(p, g, m, v, s));
    cpu::adamw_update(p.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), p.numel(), s);
}

void adam8bit_update_(const Tensor& p, const Tensor& g, const Adam8bitTensors& st, const Tensor& chunks,
                      const Tensor& maps, int64_t block_size, const cpu::Adam8bitStep& s) {
    const int64_t n = p.numel();
    for (const Tensor* t : {&p, &g, &st.m32, &st.v32}) {
        require_f32(*t, p, "adam8bit_update_ operand");
        SD3_ASSERT(t->numel() == n, "adam8bit_update_: ", t->describe(), " against ", p.describe());
    }
    for (const Tensor* t : {&st.m_codes, &st.v_codes})
        SD3_ASSERT(t->dtype() == DType::U8 && t->numel() == n && t->is_contiguous() && t->device() == p.device(),
                   "adam8bit_update_ codes must be U8 [", n, "] on ", p.device().str(), ", got ", t->describe());
    require_f32(st.m_absmax, p, "adam8bit_update_ m_absmax");
    require_f32(st.v_absmax, p, "adam8bit_update_ v_absmax");
    require_f32(maps, p, "adam8bit_update_ maps");
    SD3_ASSERT(maps.numel() == 512, "adam8bit_update_: maps must hold the two 256-code maps, got ", maps.describe());
    require_table(chunks, p, 3, "adam8bit_update_ chunks");
    SD3_ON_CUDA(p, adam8bit_update_(p, g, st, chunks, maps, block_size, s));
    const cpu::Adam8bitState state{st.m_codes.data<uint8_t>(), st.v_codes.data<uint8_t>(), st.m_absmax.data<float>(),
                                   st.v_absmax.data<float>(),  st.m32.data<float>(),       st.v32.data<float>()};
    const int64_t E = chunks.size(0);
    const int64_t* c = chunks.data<int64_t>();
#pragma omp parallel for schedule(dynamic)
    for (int64_t e = 0; e < E; ++e)
        cpu::adam8bit_chunk(p.data<float>(), g.data<float>(), state, {c[3 * e], c[3 * e + 1], c[3 * e + 2]},
                            block_size, s);
}

}  // namespace sd3::ops
