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

// y = x·Wᵀ + b + Σ_i s_i·h_i·B_iᵀ from the adapters' down-projections h_i. With dense weights the adapters write
// their sum with the bias first and the frozen GEMM adds x·Wᵀ into it: on CUDA the sum is the GEMM's C operand,
// read behind its math, where adding the adapters afterwards passed over the output again. A quantized weight has
// its own GEMM, which dequantizes: the adapters add to its output.
Tensor linear_from_downs(const Linear& layer, const Tensor& x, const std::vector<Tensor>& h) {
    if (layer.qweight.defined()) {
        Tensor y = ops::linear_quantized(x, layer.qweight.view(), layer.bias);
        for (size_t i = 0; i < h.size(); ++i) ops::linear_acc_(y, h[i], layer.loras[i].B, layer.loras[i].scale);
        return y;
    }
    Tensor y = ops::linear_scaled(h[0], layer.loras[0].B, layer.loras[0].scale, layer.bias);  // s·h·Bᵀ + b
    for (size_t i = 1; i < h.size(); ++i) ops::linear_acc_(y, h[i], layer.loras[i].B, layer.loras[i].scale);
    ops::linear_acc_(y, x, layer.weight, 1.0f);
    return y;
}

// Whether Linears reading one input run their adapters' down-projections as one product (and their input
// gradients as one sum): each has a single adapter, all of one rank and dtype, none with dropout in training.
bool downs_share_input(const std::vector<const Linear*>& layers, const RunContext& ctx) {
    if (layers.size() < 2) return false;
    for (const Linear* l : layers) {
        if (l->loras.size() != 1) return false;
        const LoraAdapter& a = l->loras[0];
        const LoraAdapter& first = layers[0]->loras[0];
        if ((ctx.training && a.dropout > 0.0f) || a.rank() != first.rank() || a.A.dtype() != first.A.dtype())
            return false;
    }
    return true;
}

// The layers' A matrices stacked [P·r, in], in layer order.
Tensor stacked_a(const std::vector<const Linear*>& layers) {
    std::vector<Tensor> a;
    for (const Linear* l : layers) a.push_back(l->loras[0].A);
    return ops::cat(a, 0);
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
    std::vector<Tensor> h;
    for (size_t i = 0; i < layer.loras.size(); ++i) h.push_back(lora_down(layer, i, x, saved, ctx));
    return linear_from_downs(layer, x, h);
}

std::vector<Tensor> linear_forward_shared(const std::vector<const Linear*>& layers, const Tensor& x,
                                          const std::vector<LinearSaved*>& saved, const RunContext& ctx) {
    SD3_ASSERT(saved.size() == layers.size(), "linear_forward_shared: ", layers.size(), " layers, ", saved.size(),
               " saved states");
    std::vector<Tensor> y;
    if (!downs_share_input(layers, ctx)) {
        for (size_t i = 0; i < layers.size(); ++i) y.push_back(linear_forward(*layers[i], x, saved[i], ctx));
        return y;
    }
    const Tensor h = ops::linear_parts(x, stacked_a(layers), static_cast<int64_t>(layers.size()));  // [P, ..., r]
    for (size_t i = 0; i < layers.size(); ++i) {
        const Tensor hi = h.select(0, static_cast<int64_t>(i));
        if (saved[i] != nullptr) {
            saved[i]->x = x;
            saved[i]->valid = true;
            saved[i]->xd.assign(1, Tensor());
            saved[i]->h.assign(1, hi);
        }
        y.push_back(linear_from_downs(*layers[i], x, {hi}));
    }
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

Tensor linear_backward_shared(const std::vector<const Linear*>& layers, const std::vector<Tensor>& dys,
                              const std::vector<const LinearSaved*>& saved, const RunContext& ctx, Tensor& lora_grads) {
    SD3_ASSERT(!layers.empty() && dys.size() == layers.size() && saved.size() == layers.size(),
               "linear_backward_shared: ", layers.size(), " layers, ", dys.size(), " gradients, ", saved.size(),
               " saved states");
    if (!downs_share_input(layers, ctx)) {
        Tensor dx = linear_backward(*layers[0], dys[0], *saved[0], ctx, lora_grads);
        for (size_t i = 1; i < layers.size(); ++i) linear_backward(*layers[i], dys[i], *saved[i], ctx, lora_grads, true, &dx);
        return dx;
    }
    // Per adapter dh = s·dy·B with dB and dA as in linear_backward; then dx = Σ dh·A as one product over the
    // stacked dh, and the frozen GEMMs add dy·W.
    std::vector<Tensor> dh;
    for (size_t i = 0; i < layers.size(); ++i) {
        const LoraAdapter& a = layers[i]->loras[0];
        SD3_ASSERT(saved[i]->valid && saved[i]->h.size() == 1, "linear_backward_shared of ", layers[i]->name,
                   " without its saved forward");
        Tensor dA, dB;
        if (a.trainable()) {
            SD3_ASSERT(lora_grads.defined(), "trainable LoRA on ", layers[i]->name, " but no gradient buffer");
            dA = grad_view(lora_grads, a.grad_offset_a, a.A.shape());
            dB = grad_view(lora_grads, a.grad_offset_b, a.B.shape());
        }
        const Tensor d = ops::linear_backward(dys[i], saved[i]->h[0], a.B, a.trainable() ? &dB : nullptr, nullptr, true, a.scale);
        if (a.trainable()) ops::linear_backward(d, saved[i]->x, a.A, &dA, nullptr, false);
        dh.push_back(d.unsqueeze(0));
    }
    Tensor dx = ops::linear_parts_sum(ops::cat(dh, 0), stacked_a(layers));
    for (size_t i = 0; i < layers.size(); ++i) ops::linear_acc_(dx, dys[i], dense_weight(*layers[i], dys[i]), 1.0f, true);
    return dx;
}

}  // namespace sd3::nn
