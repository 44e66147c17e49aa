// Linear + LoRA forward and backward through ops/ (so every device runs the same code).
#include "nn/linear.h"

#include "core/check.h"
#include "ops/mmdit_ops.h"
#include "ops/quant_linear.h"

namespace sd3::nn {

uint64_t layer_id(const std::string& name) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    return h;
}

namespace {
uint64_t dropout_seed(const Linear& layer, size_t adapter, const RunContext& ctx) {
    return ctx.seed ^ (layer.id + 0x9E3779B97F4A7C15ull * (adapter + 1));
}

Tensor grad_view(Tensor& grads, int64_t offset, const Shape& shape) {
    return grads.slice(0, offset, offset + shape_numel(shape)).view(shape);
}

// Adapter i's h = A·dropout(x) [..., r], kept in `saved` (with the masked input) for the backward.
Tensor lora_down(const Linear& layer, size_t i, const Tensor& x, LinearSaved* saved, const RunContext& ctx) {
    const LoraAdapter& a = layer.loras[i];
    Tensor xd;  // [..., in]
    if (ctx.training && a.dropout > 0.0f) xd = ops::dropout(x, a.dropout, dropout_seed(layer, i, ctx));
    const Tensor h = ops::linear(xd.defined() ? xd : x, a.A);
    if (saved != nullptr) {
        saved->xd[i] = xd;
        saved->h[i] = h;
    }
    return h;
}
}  // namespace

Tensor dense_weight(const Linear& layer, const Tensor& like) {
    return layer.qweight.defined() ? ops::dequantize_weight(layer.qweight.view(), like.dtype(), like.device())
                                   : layer.weight;
}

Tensor linear_forward(const Linear& layer, const Tensor& x, LinearSaved* saved, const RunContext& ctx) {
    if (saved != nullptr) {
        // A frozen layer's backward needs only W (dx = dy·W): its input is kept only for the adapters' dA.
        saved->x = layer.loras.empty() ? Tensor() : x;
        saved->valid = true;
        saved->xd.assign(layer.loras.size(), Tensor());
        saved->h.assign(layer.loras.size(), Tensor());
    }
    if (layer.loras.empty()) {
        return layer.qweight.defined() ? ops::linear_quantized(x, layer.qweight.view(), layer.bias)
                                       : ops::linear(x, layer.weight, layer.bias);  // [..., out]
    }
    if (layer.qweight.defined()) {  // its own GEMM, which dequantizes: the adapters add to its output
        Tensor y = ops::linear_quantized(x, layer.qweight.view(), layer.bias);
        for (size_t i = 0; i < layer.loras.size(); ++i) {
            const LoraAdapter& a = layer.loras[i];
            ops::linear_acc_(y, lora_down(layer, i, x, saved, ctx), a.B, a.scale);  // y += s·h·Bᵀ
        }
        return y;
    }
    // The adapters write their sum with the bias first and the frozen GEMM adds x·Wᵀ into it: on CUDA the sum is
    // the GEMM's C operand, read behind its math, where adding the adapters afterwards passed over the output again.
    Tensor y;
    for (size_t i = 0; i < layer.loras.size(); ++i) {
        const LoraAdapter& a = layer.loras[i];
        const Tensor h = lora_down(layer, i, x, saved, ctx);  // [..., r]
        if (y.defined()) {
            ops::linear_acc_(y, h, a.B, a.scale);  // y += s·h·Bᵀ
        } else {
            y = ops::linear(h, a.B, layer.bias, a.scale);  // y = s·h·Bᵀ + b
        }
    }
    ops::linear_acc_(y, x, layer.weight, 1.0f);
    return y;
}

Tensor linear_backward(const Linear& layer, const Tensor& dy, const LinearSaved& saved, const RunContext& ctx,
                       Tensor& lora_grads, bool need_dx, Tensor* dx_sum) {
    SD3_ASSERT(saved.valid && saved.h.size() == layer.loras.size(), "linear_backward of ", layer.name,
               " without its saved forward");
    SD3_ASSERT(dx_sum == nullptr || need_dx, "linear_backward of ", layer.name, ": dx_sum without need_dx");
    // dx = dy·W + Σ the adapters' input gradients (the base weight is frozen: no dW, db). The adapters' terms come
    // first, the frozen GEMM last, adding into them (as in the forward); with `dx_sum` all of them add to it.
    Tensor dx = dx_sum != nullptr ? *dx_sum : Tensor();
    for (size_t i = 0; i < layer.loras.size(); ++i) {
        const LoraAdapter& a = layer.loras[i];
        if (!a.trainable() && !need_dx) continue;
        Tensor dA, dB;
        if (a.trainable()) {
            SD3_ASSERT(lora_grads.defined(), "trainable LoRA on ", layer.name, " but no gradient buffer");
            dA = grad_view(lora_grads, a.grad_offset_a, a.A.shape());
            dB = grad_view(lora_grads, a.grad_offset_b, a.B.shape());
        }
        // y += s·B·h  =>  dB += s·dyᵀ·h,  dh = s·dy·B;   h = A·xd  =>  dA += dhᵀ·xd,  dxd = dh·A.
        const Tensor dh = ops::linear_backward(dy, saved.h[i], a.B, a.trainable() ? &dB : nullptr, nullptr, true, a.scale);
        const Tensor& xin = saved.xd[i].defined() ? saved.xd[i] : saved.x;
        if (a.trainable()) ops::linear_backward(dh, xin, a.A, &dA, nullptr, false);
        if (!need_dx) continue;
        if (saved.xd[i].defined()) {
            const Tensor dxd = ops::dropout_backward(ops::linear_backward(dh, Tensor(), a.A, nullptr, nullptr, true),
                                                     a.dropout, dropout_seed(layer, i, ctx));
            if (dx.defined()) {
                ops::add_(dx, dxd);
            } else {
                dx = dxd;
            }
        } else if (dx.defined()) {
            ops::linear_acc_(dx, dh, a.A, 1.0f, true);  // dx += dh·A
        } else {
            dx = ops::linear_backward(dh, Tensor(), a.A, nullptr, nullptr, true);  // dx = dh·A
        }
    }
    if (need_dx) {
        const Tensor w = dense_weight(layer, dy);
        if (dx.defined()) {
            ops::linear_acc_(dx, dy, w, 1.0f, true);  // dx += dy·W
        } else {
            dx = ops::linear_backward(dy, Tensor(), w, nullptr, nullptr, true);
        }
    }
    return dx;
}

}  // namespace sd3::nn
