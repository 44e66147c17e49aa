// Tensor-level CUDA ops of tensor_ops_train.h.
#include "ops/cuda/tensor_ops_train.h"

#include <cuda_runtime.h>

#include "core/check.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/model_ops.h"
#include "ops/cuda/tensor_ops.h"
#include "ops/cuda/train_ops.h"
#include "ops/train_ops.h"

namespace sd3::cuda::tensor_ops {

namespace {

Context& ctx_of(const Tensor& t) { return Context::get(t.device().index); }

}  // namespace

Tensor flow_matching_loss(const Tensor& pred_in, const Tensor& noisy_in, const Tensor& x0_in, const Tensor& noise_in,
                          const Tensor& samples, bool precondition, Tensor* grad) {
    const Tensor pred = contiguous(pred_in), noisy = contiguous(noisy_in), x0 = contiguous(x0_in),
                 noise = contiguous(noise_in);
    const int64_t B = pred.size(0), per = B > 0 ? pred.numel() / B : 0;
    *grad = Tensor::empty(pred.shape(), DType::F32, pred.device());
    Tensor sums = Tensor::empty({B}, DType::F64, pred.device());  // [B]
    const Tensor partials = Tensor::empty({B, cuda::flow_matching_loss_chunks(per)}, DType::F64, pred.device());
    cuda::flow_matching_loss(ctx_of(pred).exec(), grad->data<float>(), sums.data<double>(), partials.data<double>(),
                             pred.raw(), pred.dtype(), noisy.data<float>(), x0.data<float>(), noise.data<float>(), B,
                             per, static_cast<const cpu::LossSample*>(samples.raw()), precondition);
    return sums;
}

Tensor clip_by_total_norm_(const Tensor& x, const Tensor& segments, float max_norm) {
    const int64_t S = segments.size(0);
    const Tensor norms = Tensor::empty({S}, DType::F32, x.device());  // [S]
    Tensor stats = Tensor::empty({2}, DType::F32, x.device());         // (norm, coef)
    cuda::clip_by_total_norm(ctx_of(x).exec(), stats.data<float>(), norms.data<float>(), x.data<float>(), x.numel(),
                             segments.data<int64_t>(), S, max_norm);
    return stats;
}

void scale_(const Tensor& x, float s) { cuda::scale(ctx_of(x).exec(), x.raw(), x.raw(), s, x.numel(), DType::F32); }

void zero_(const Tensor& x) {
    if (x.nbytes() == 0) return;
    const cudaError_t err = cudaMemsetAsync(x.raw(), 0, x.nbytes(), ctx_of(x).stream());
    SD3_ASSERT(err == cudaSuccess, "zero_ on ", x.device().str(), ": ", cudaGetErrorString(err));
}

void add_scaled_(const Tensor& acc, const Tensor& x, float s) {
    cuda::axpy(ctx_of(acc).exec(), acc.raw(), x.raw(), s, acc.numel(), DType::F32);
}

bool all_finite(const Tensor& x) {
    Tensor flag = Tensor::empty({1}, DType::I32, x.device());
    cuda::find_nonfinite(ctx_of(x).exec(), flag.data<int32_t>(), x.data<float>(), x.numel());
    return *to_host(flag).data<int32_t>() == 0;
}

void adamw_update_(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const cpu::AdamWStep& s) {
    cuda::adamw_update(ctx_of(p).exec(), p.data<float>(), g.data<float>(), m.data<float>(), v.data<float>(), p.numel(),
                       s);
}

void adam8bit_update_(const Tensor& p, const Tensor& g, const ops::Adam8bitTensors& st, const Tensor& chunks,
                      const Tensor& maps, int64_t block_size, const cpu::Adam8bitStep& s) {
    const cpu::Adam8bitState state{st.m_codes.data<uint8_t>(), st.v_codes.data<uint8_t>(), st.m_absmax.data<float>(),
                                   st.v_absmax.data<float>(),  st.m32.data<float>(),       st.v32.data<float>()};
    cuda::adam8bit_update(ctx_of(p).exec(), p.data<float>(), g.data<float>(), state, chunks.data<int64_t>(),
                          chunks.size(0), maps.data<float>(), block_size, s);
}

}  // namespace sd3::cuda::tensor_ops
