// MMDiT forward and backward (models/mmdit.h): patch and condition embeddings, joint blocks with adaLN-Zero, the
// last block's context_pre_only form, the output head; the backward mirrors it op by op (sd3-architecture.md §9.2)
// and can recompute each block from its inputs (activation checkpointing) with identical results.
#include <algorithm>
#include <set>

#include "core/check.h"
#include "models/mmdit.h"
#include "ops/device.h"
#include "ops/mmdit_ops.h"

namespace sd3 {

namespace {

constexpr float kNormEps = 1e-6f;  // every LayerNorm of the MMDiT (§2.5)

// Chunk i of width D of an adaLN output E [B, k*D], as a row-strided view [B, D].
Tensor chunk(const Tensor& E, int64_t i, int64_t D) { return E.slice(1, i * D, (i + 1) * D); }

}  // namespace

void MMDiT::block_forward(const JointBlock& b, Tensor& x, Tensor& c, const Tensor& st, JointBlockSaved* saved,
                          const nn::RunContext& ctx, bool overwrite_inputs) const {
    JointBlockSaved local;
    JointBlockSaved& s = saved != nullptr ? *saved : local;
    const int64_t D = config_.inner_dim();
    s.x_in = x;
    s.c_in = c;
    s.full = true;

    // adaLN: chunks (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift_msa2, scale_msa2,
    // gate_msa2]); the pre-only context norm is AdaLayerNormContinuous with (scale, shift).
    s.E = nn::linear_forward(b.norm1, st, &s.norm1, ctx);                  // [B, 6D | 9D]
    s.Ec = nn::linear_forward(b.norm1_context, st, &s.norm1_context, ctx);  // [B, 6D | 2D]
    const Tensor& E = s.E;
    const Tensor& Ec = s.Ec;

    // Inference proper: nothing kept. Each LayerNorm runs fused with its modulation; training also keeps the
    // LayerNorm's output and statistics (the fused kernel stores the two ops' bits, so a checkpointed block's
    // recomputation matches its first forward).
    const bool inference = saved == nullptr && !ctx.training;
    auto norm_modulate = [&](const Tensor& in, nn::NormSaved* ns, const Tensor& shift, const Tensor& scale) {
        if (inference) return ops::layer_norm_modulate(in, shift, scale, kNormEps);
        Tensor xhat, mean, rstd;
        const Tensor y = ops::layer_norm_modulate(in, shift, scale, kNormEps, &xhat, &mean, &rstd);
        *ns = nn::NormSaved{in, mean, rstd, xhat};
        return y;
    };
    auto residual = [&](const Tensor& base) { return inference && overwrite_inputs ? base : ops::copy(base); };

    Tensor xhat, nx;  // [B, N, D]
    if (b.dual) {     // two modulations of one LayerNorm
        xhat = nn::layer_norm_forward(x, kNormEps, &s.ln1);
        nx = ops::modulate(xhat, chunk(E, 0, D), chunk(E, 1, D));
    } else {
        nx = norm_modulate(x, &s.ln1, chunk(E, 0, D), chunk(E, 1, D));
    }
    const Tensor nc = b.context_pre_only ? norm_modulate(c, &s.ln1c, chunk(Ec, 1, D), chunk(Ec, 0, D))
                                         : norm_modulate(c, &s.ln1c, chunk(Ec, 0, D), chunk(Ec, 1, D));  // [B, M, D]

    nn::joint_attention_forward(b.attn, nx, nc, &s.ax, &s.ac, &s.attn, ctx);
    Tensor x1 = residual(x);  // [B, N, D]
    ops::gated_add_(x1, chunk(E, 2, D), s.ax);
    if (b.dual) {
        const Tensor nx2 = ops::modulate(xhat, chunk(E, 6, D), chunk(E, 7, D));
        nn::joint_attention_forward(b.attn2, nx2, Tensor(), &s.ax2, nullptr, &s.attn2, ctx);
        ops::gated_add_(x1, chunk(E, 8, D), s.ax2);
    }
    s.fx = nn::feed_forward(b.ff, norm_modulate(x1, &s.ln2, chunk(E, 3, D), chunk(E, 4, D)),
                            inference ? nullptr : &s.ff, ctx);
    Tensor x2 = residual(x1);
    ops::gated_add_(x2, chunk(E, 5, D), s.fx);
    x = x2;

    if (b.context_pre_only) {
        c = Tensor();  // the last block returns no context (diffusers sets encoder_hidden_states = None)
        return;
    }
    Tensor c1 = residual(c);  // [B, M, D]
    ops::gated_add_(c1, chunk(Ec, 2, D), s.ac);
    s.fc = nn::feed_forward(b.ff_context, norm_modulate(c1, &s.ln2c, chunk(Ec, 3, D), chunk(Ec, 4, D)),
                            inference ? nullptr : &s.ffc, ctx);
    Tensor c2 = residual(c1);
    ops::gated_add_(c2, chunk(Ec, 5, D), s.fc);
    c = c2;
}

void MMDiT::block_backward(const JointBlock& b, Tensor& dx, Tensor& dc, Tensor& dst, const JointBlockSaved& s,
                           const nn::RunContext& ctx, Tensor& grads) const {
    SD3_ASSERT(s.full, "block backward needs the block's full saved forward");
    const int64_t D = config_.inner_dim();
    const Tensor& E = s.E;
    const Tensor& Ec = s.Ec;
    Tensor dE = ops::zeros(E.shape(), E.device(), E.dtype());    // [B, 6D | 9D]
    Tensor dEc = ops::zeros(Ec.shape(), Ec.device(), Ec.dtype());  // [B, 6D | 2D]
    Tensor dE_[9], dEc_[6];
    for (int64_t i = 0; i < E.size(1) / D; ++i) dE_[i] = chunk(dE, i, D);
    for (int64_t i = 0; i < Ec.size(1) / D; ++i) dEc_[i] = chunk(dEc, i, D);

    // ---- image stream, top down: x2 = x1 + g_mlp * FF(mod(LN(x1)))
    const Tensor dfx = ops::gated_add_backward(dx, s.fx, chunk(E, 5, D), &dE_[5]);
    const Tensor dh = nn::feed_forward_backward(b.ff, dfx, s.ff, ctx, grads);
    const Tensor dxhat2 = ops::modulate_backward(dh, s.ln2.xhat, chunk(E, 4, D), &dE_[3], &dE_[4]);
    Tensor dx1 = nn::layer_norm_backward(dxhat2, s.ln2, dx);  // + the residual's gradient
    // x1 = x + g_msa * attn (+ g_msa2 * attn2)
    Tensor dxhat_extra;
    if (b.dual) {
        const Tensor dax2 = ops::gated_add_backward(dx1, s.ax2, chunk(E, 8, D), &dE_[8]);
        Tensor dnx2, unused;
        nn::joint_attention_backward(b.attn2, dax2, Tensor(), s.attn2, ctx, grads, &dnx2, &unused);
        dxhat_extra = ops::modulate_backward(dnx2, s.ln1.xhat, chunk(E, 7, D), &dE_[6], &dE_[7]);
    }
    const Tensor dax = ops::gated_add_backward(dx1, s.ax, chunk(E, 2, D), &dE_[2]);

    // ---- context stream (absent after the pre-only block's attention)
    Tensor dac, dc1;
    if (!b.context_pre_only) {
        SD3_ASSERT(dc.defined(), "block backward: missing the context gradient");
        const Tensor dfc = ops::gated_add_backward(dc, s.fc, chunk(Ec, 5, D), &dEc_[5]);
        const Tensor dhc = nn::feed_forward_backward(b.ff_context, dfc, s.ffc, ctx, grads);
        const Tensor dchat2 = ops::modulate_backward(dhc, s.ln2c.xhat, chunk(Ec, 4, D), &dEc_[3], &dEc_[4]);
        dc1 = nn::layer_norm_backward(dchat2, s.ln2c, dc);
        dac = ops::gated_add_backward(dc1, s.ac, chunk(Ec, 2, D), &dEc_[2]);
    }

    // ---- joint attention and the first modulations
    Tensor dnx, dnc;
    nn::joint_attention_backward(b.attn, dax, dac, s.attn, ctx, grads, &dnx, &dnc);
    Tensor dxhat = ops::modulate_backward(dnx, s.ln1.xhat, chunk(E, 1, D), &dE_[0], &dE_[1]);
    if (dxhat_extra.defined()) ops::add_(dxhat, dxhat_extra);  // LN(x) feeds both modulations
    Tensor dx_in = nn::layer_norm_backward(dxhat, s.ln1, dx1);
    const Tensor dchat = b.context_pre_only
                             ? ops::modulate_backward(dnc, s.ln1c.xhat, chunk(Ec, 0, D), &dEc_[1], &dEc_[0])
                             : ops::modulate_backward(dnc, s.ln1c.xhat, chunk(Ec, 1, D), &dEc_[0], &dEc_[1]);
    Tensor dc_in = nn::layer_norm_backward(dchat, s.ln1c, dc1);

    // ---- adaLN linears: gradients flow into SiLU(temb)
    nn::linear_backward(b.norm1, dE, s.norm1, ctx, grads, true, &dst);
    nn::linear_backward(b.norm1_context, dEc, s.norm1_context, ctx, grads, true, &dst);
    dx = dx_in;
    dc = dc_in;
}

Result<Tensor> MMDiT::forward(const Tensor& x_in, const Tensor& timestep_in, const Tensor& ctx_arg,
                              const Tensor& pooled_in, MMDiTActivations* saved,
                              const std::vector<int64_t>& skip_layers) const {
    return run_forward(x_in, timestep_in, ctx_arg, pooled_in, saved, skip_layers,
                       saved != nullptr && saved->device_output);
}

Result<Tensor> MMDiT::forward_on_device(const Tensor& x_in, const Tensor& timestep_in, const Tensor& ctx_arg,
                                        const Tensor& pooled_in, const std::vector<int64_t>& skip_layers) const {
    SD3_ASSIGN_OR_RETURN(Tensor out, run_forward(x_in, timestep_in, ctx_arg, pooled_in, nullptr, skip_layers, true));
    return convert(out, DType::F32);
}

Result<Tensor> MMDiT::run_forward(const Tensor& x_in, const Tensor& timestep_in, const Tensor& ctx_arg,
                                  const Tensor& pooled_in, MMDiTActivations* saved,
                                  const std::vector<int64_t>& skip_layers, bool output_on_device) const {
    const MMDiTConfig& c = config_;
    const int64_t p = c.patch_size, D = c.inner_dim();
    auto bad = [](const auto&... what) { return make_error(ErrorCode::INVALID_ARGUMENT, "MMDiT forward: ", what...); };
    for (const Tensor* t : {&x_in, &timestep_in, &ctx_arg, &pooled_in})
        if (!t->defined() || !dtype_is_float(t->dtype())) return bad("inputs must be defined float tensors");
    const nn::Placement& pl = placement_;
    const Tensor x = nn::to_placement(x_in, pl), ctx_in = nn::to_placement(ctx_arg, pl),
                 pooled = nn::to_placement(pooled_in, pl);
    // The sinusoid is computed in float32 and rounded to the compute dtype afterwards, as diffusers' Timesteps.
    const Tensor timestep = nn::to_placement(timestep_in, nn::Placement{pl.device, DType::F32});
    if (x.dim() != 4 || x.size(1) != c.in_channels)
        return bad("hidden_states must be [B, ", c.in_channels, ", H, W], got ", shape_str(x.shape()));
    const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
    if (H % p != 0 || W % p != 0 || H <= 0 || W <= 0)
        return bad("latent size ", H, "x", W, " is not a multiple of the patch size ", p,
                   " (image sizes must be multiples of ", 8 * p, " pixels)");
    const int64_t hp = H / p, wp = W / p;
    if (hp > c.pos_embed_max_size || wp > c.pos_embed_max_size)
        return bad("latent size ", H, "x", W, " exceeds the position table of ", c.pos_embed_max_size * p,
                   "x", c.pos_embed_max_size * p, " latent pixels (", c.pos_embed_max_size * p * 8, " image pixels)");
    if (timestep.dim() != 1 || timestep.size(0) != B) return bad("timestep must be [", B, "], got ", shape_str(timestep.shape()));
    if (ctx_in.dim() != 3 || ctx_in.size(0) != B || ctx_in.size(2) != c.joint_attention_dim)
        return bad("encoder_hidden_states must be [", B, ", M, ", c.joint_attention_dim, "], got ",
                   shape_str(ctx_in.shape()));
    if (pooled.dim() != 2 || pooled.size(0) != B || pooled.size(1) != c.pooled_projection_dim)
        return bad("pooled_projections must be [", B, ", ", c.pooled_projection_dim, "], got ",
                   shape_str(pooled.shape()));

    for (int64_t l : skip_layers)
        if (l < 0 || l >= c.num_layers) return bad("skip layer ", l, " is outside [0, ", c.num_layers, ")");
    if (!skip_layers.empty() && saved != nullptr) return bad("skip_layers is for inference only");
    MMDiTActivations local;
    MMDiTActivations& s = saved != nullptr ? *saved : local;
    const nn::RunContext rc = saved != nullptr ? saved->ctx : nn::RunContext{};
    const bool keep = saved != nullptr;
    s.batch = B;
    s.height = H;
    s.width = W;
    s.hp = hp;
    s.wp = wp;

    // Patch embedding + centre-cropped position table (§2.1).
    const Tensor patches = ops::patchify(x, p, ops::PatchLayout::CHANNEL_FIRST);  // [B, N, C*p*p]
    Tensor hx = nn::linear_forward(w_.patch_embed, patches, keep ? &s.patch_embed : nullptr, rc);  // [B, N, D]
    ops::add_rows_(hx, position_rows(hp, wp));

    // temb = MLP(sinusoid(t)) + MLP(pooled) (§2.2, §2.3).
    const Tensor tsin = ops::timestep_embedding(timestep, 256, true, 0.0f, 10000.0f, pl.dtype);  // [B, 256]
    s.time_pre = nn::linear_forward(w_.time_linear_1, tsin, keep ? &s.time_1 : nullptr, rc);
    const Tensor tE = nn::linear_forward(w_.time_linear_2, ops::activation(s.time_pre, ops::Activation::SILU),
                                         keep ? &s.time_2 : nullptr, rc);
    s.text_pre = nn::linear_forward(w_.text_linear_1, pooled, keep ? &s.text_1 : nullptr, rc);
    const Tensor pE = nn::linear_forward(w_.text_linear_2, ops::activation(s.text_pre, ops::Activation::SILU),
                                         keep ? &s.text_2 : nullptr, rc);
    s.temb = ops::add(tE, pE);                                          // [B, D]
    s.silu_temb = ops::activation(s.temb, ops::Activation::SILU);       // shared by every adaLN

    Tensor hc = nn::linear_forward(w_.context_embedder, ctx_in, keep ? &s.context_embedder : nullptr, rc);  // [B, M, D]

    s.blocks.assign(w_.blocks.size(), JointBlockSaved());
    const int64_t n_blocks = static_cast<int64_t>(w_.blocks.size());
    for (size_t i = 0; i < w_.blocks.size(); ++i) {
        if (std::find(skip_layers.begin(), skip_layers.end(), static_cast<int64_t>(i)) != skip_layers.end()) continue;
        JointBlock staged;  // a streamed block's weights, brought in for this call
        const JointBlock& blk = block_weights(i, staged, i + 1 < w_.blocks.size() ? static_cast<int64_t>(i) + 1 : -1);
        const bool recomputed = s.checkpoint_blocks && static_cast<int64_t>(i) + s.kept_blocks < n_blocks;
        if (keep && !recomputed) {
            block_forward(blk, hx, hc, s.silu_temb, &s.blocks[i], rc);
        } else {
            if (keep) {  // checkpointing: keep only the inputs
                s.blocks[i].x_in = hx;
                s.blocks[i].c_in = hc;
            }
            block_forward(blk, hx, hc, s.silu_temb, nullptr, rc, !keep);
        }
    }

    // Output head: AdaLayerNormContinuous (scale, shift), proj_out, unpatchify (§2.7).
    s.E_out = nn::linear_forward(w_.norm_out, s.silu_temb, keep ? &s.norm_out : nullptr, rc);  // [B, 2D]
    const Tensor xhat = nn::layer_norm_forward(hx, kNormEps, keep ? &s.ln_out : nullptr);
    const Tensor y = ops::modulate(xhat, chunk(s.E_out, 1, D), chunk(s.E_out, 0, D));
    const Tensor o = nn::linear_forward(w_.proj_out, y, keep ? &s.proj_out : nullptr, rc);  // [B, N, p*p*out]
    if (!keep) s.blocks.clear();
    Tensor out = ops::unpatchify(o, c.out_channels, H, W, p, ops::PatchLayout::CHANNEL_LAST);  // [B, C, H, W]
    return output_on_device ? out : host_f32(out);
}

size_t MMDiTActivations::bytes() const {
    std::set<const void*> seen;
    size_t total = 0;
    auto add = [&](const Tensor& t) {
        if (t.defined() && seen.insert(t.storage().get()).second) total += t.storage()->bytes();
    };
    auto lin = [&](const nn::LinearSaved& l) {
        add(l.x);
        for (const Tensor& t : l.xd) add(t);
        for (const Tensor& t : l.h) add(t);
    };
    auto norm = [&](const nn::NormSaved& n) {
        add(n.x);
        add(n.mean);
        add(n.rstd);
        add(n.xhat);
    };
    auto attn = [&](const nn::AttentionSaved& a) {
        for (const auto* l : {&a.q, &a.k, &a.v, &a.qc, &a.kc, &a.vc, &a.out, &a.add_out}) lin(*l);
        for (const Tensor* t : {&a.q_raw, &a.k_raw, &a.qc_raw, &a.kc_raw, &a.q_rstd, &a.k_rstd, &a.qc_rstd,
                                &a.kc_rstd, &a.Q, &a.K, &a.V, &a.O, &a.lse})
            add(*t);
    };
    for (const auto* l : {&patch_embed, &time_1, &time_2, &text_1, &text_2, &context_embedder, &norm_out, &proj_out})
        lin(*l);
    for (const Tensor* t : {&time_pre, &text_pre, &temb, &silu_temb, &E_out}) add(*t);
    norm(ln_out);
    for (const JointBlockSaved& b : blocks) {
        for (const Tensor* t : {&b.x_in, &b.c_in, &b.E, &b.Ec, &b.ax, &b.ac, &b.ax2, &b.fx, &b.fc,
                                &b.ff.pre, &b.ffc.pre})
            add(*t);
        for (const auto* l : {&b.norm1, &b.norm1_context, &b.ff.fc1, &b.ff.fc2, &b.ffc.fc1, &b.ffc.fc2}) lin(*l);
        for (const auto* n : {&b.ln1, &b.ln1c, &b.ln2, &b.ln2c}) norm(*n);
        attn(b.attn);
        attn(b.attn2);
    }
    return total;
}

ActivationPlan MMDiT::plan_activations(int64_t B, int64_t H, int64_t W, int64_t M, bool checkpoint,
                                       int64_t kept_blocks) const {
    const MMDiTConfig& c = config_;
    const int64_t p = c.patch_size, D = c.inner_dim(), N = (H / p) * (W / p), Hd = c.num_attention_heads;
    const size_t f = sizeof(float);
    // What one Linear keeps for `rows` input rows of width `in`: its input (shared by the Linears reading the same
    // tensor: `input_counted` tells whether that storage is already counted), and per adapter A·x [rows, r] and,
    // with dropout, the masked input.
    auto linear = [&](const nn::Linear& l, int64_t rows, bool& input_counted) {
        size_t n = 0;
        if (l.loras.empty()) return n;
        if (!input_counted) n += rows * l.in_features();
        input_counted = true;
        for (const nn::LoraAdapter& a : l.loras) {
            n += rows * a.rank();
            if (a.dropout > 0.0f) n += rows * l.in_features();
        }
        return n;
    };
    auto attention = [&](const nn::JointAttention& a, int64_t ctx_rows) {
        size_t n = 0;
        const bool ctx = a.has_context, ctx_q = ctx && !a.context_pre_only;
        // The output projections read token ranges of O: views of it (counted with O) where they are contiguous,
        // a batch of one or O's whole range (ops::slice_contiguous), else copies.
        bool nx = false, nc = false, o_img = B == 1 || !ctx_q, o_ctx = B == 1;
        n += linear(a.to_q, B * N, nx) + linear(a.to_k, B * N, nx) + linear(a.to_v, B * N, nx);
        if (ctx) n += linear(a.add_k_proj, B * ctx_rows, nc) + linear(a.add_v_proj, B * ctx_rows, nc);
        if (ctx_q) n += linear(a.add_q_proj, B * ctx_rows, nc);
        n += linear(a.to_out, B * N, o_img);
        if (ctx_q) n += linear(a.to_add_out, B * ctx_rows, o_ctx);
        const int64_t tq = ctx_q ? N + ctx_rows : N, tk = ctx ? N + ctx_rows : N;
        n += (tq + 2 * tk + tq) * B * D + B * Hd * tq;  // Q, K, V, O, lse
        if (a.qk_norm()) {
            n += 2 * (B * N * D + B * N * Hd);  // q, k before the norm, and their rstd
            if (ctx) n += B * ctx_rows * D + B * ctx_rows * Hd;
            if (ctx_q) n += B * ctx_rows * D + B * ctx_rows * Hd;
        }
        return n;
    };
    auto feed_forward = [&](const nn::FeedForward& ff, int64_t rows) {
        bool in = false, act = false;
        return linear(ff.fc1, rows, in) + rows * 4 * D + linear(ff.fc2, rows, act) + rows * D;  // + pre, output
    };
    auto block_full = [&](const JointBlock& b) {
        bool st = true;  // SiLU(temb) is counted once outside
        size_t n = b.norm1.out_features() * B + b.norm1_context.out_features() * B;  // E, Ec
        n += linear(b.norm1, B, st) + linear(b.norm1_context, B, st);
        n += B * N * D + 2 * B * N + B * M * D + 2 * B * M;  // LN of x and c: x̂ and statistics
        n += attention(b.attn, M) + B * N * D;                // + the projected image output
        if (b.dual) n += attention(b.attn2, 0) + B * N * D;
        n += 2 * B * N * D + 2 * B * N + feed_forward(b.ff, B * N);  // x1 and its LN
        if (!b.context_pre_only) n += B * M * D + 2 * B * M * D + 2 * B * M + feed_forward(b.ff_context, B * M);
        return n;
    };
    ActivationPlan plan;
    const int64_t n_blocks = static_cast<int64_t>(w_.blocks.size());
    for (int64_t i = 0; i < n_blocks; ++i) {
        const JointBlock& b = w_.blocks[static_cast<size_t>(i)];
        const size_t inputs = B * N * D + B * M * D;  // each block's x and c are fresh tensors
        const size_t full = block_full(b);
        const bool recomputed = checkpoint && i + kept_blocks < n_blocks;
        plan.blocks += f * (inputs + (recomputed ? 0 : full));
        if (recomputed) plan.recompute = std::max(plan.recompute, f * full);
    }
    size_t outer = 6 * B * D;  // time_pre, text_pre, temb, SiLU(temb), E_out
    bool tin = false, t2 = false, pin = false, p2 = false, cin = false, st = true, y = false;
    outer += linear(w_.time_linear_1, B, tin) + linear(w_.time_linear_2, B, t2);
    outer += linear(w_.text_linear_1, B, pin) + linear(w_.text_linear_2, B, p2);
    outer += linear(w_.context_embedder, B * M, cin) + linear(w_.norm_out, B, st);
    outer += 2 * B * N * D + 2 * B * N;  // the last block's output (LN input), its x̂ and statistics
    outer += linear(w_.proj_out, B * N, y);
    plan.outer = f * outer;
    return plan;
}

void MMDiT::backward(const Tensor& dout_in, MMDiTActivations& s, Tensor& grads, InputGrads* inputs) const {
    const Tensor dout = nn::to_placement(dout_in, placement_);
    const MMDiTConfig& c = config_;
    const int64_t p = c.patch_size, D = c.inner_dim();
    SD3_ASSERT(dout.dim() == 4 && dout.size(0) == s.batch && dout.size(1) == c.out_channels &&
                   dout.size(2) == s.height && dout.size(3) == s.width,
               "MMDiT backward: dout ", dout.describe(), " does not match the saved forward");
    SD3_ASSERT(s.blocks.size() == w_.blocks.size(), "MMDiT backward without a saved forward");
    const nn::RunContext& rc = s.ctx;
    const bool want_inputs = inputs != nullptr;

    // Output head.
    const Tensor dO = ops::patchify(dout, p, ops::PatchLayout::CHANNEL_LAST);  // [B, N, p*p*out]
    const Tensor dy = nn::linear_backward(w_.proj_out, dO, s.proj_out, rc, grads);
    Tensor dEo = ops::zeros(s.E_out.shape(), s.E_out.device(), s.E_out.dtype());  // [B, 2D] = (scale, shift)
    Tensor dscale = chunk(dEo, 0, D), dshift = chunk(dEo, 1, D);
    const Tensor dxhat = ops::modulate_backward(dy, s.ln_out.xhat, chunk(s.E_out, 0, D), &dshift, &dscale);
    Tensor dx = nn::layer_norm_backward(dxhat, s.ln_out);                       // [B, N, D]
    Tensor dst = nn::linear_backward(w_.norm_out, dEo, s.norm_out, rc, grads);  // d SiLU(temb) [B, D]

    // Blocks, last to first; under checkpointing each block's forward is recomputed from its saved inputs.
    Tensor dc;  // the last block returns no context
    for (size_t i = w_.blocks.size(); i-- > 0;) {
        const JointBlockSaved* bs = &s.blocks[i];
        JointBlock staged;  // a streamed block comes in once for its recompute and backward
        const JointBlock& blk = block_weights(i, staged, static_cast<int64_t>(i) - 1);
        JointBlockSaved recomputed;
        if (!bs->full) {
            Tensor x = bs->x_in, cc = bs->c_in;
            block_forward(blk, x, cc, s.silu_temb, &recomputed, rc);
            bs = &recomputed;
        }
        block_backward(blk, dx, dc, dst, *bs, rc, grads);
    }

    // Embeddings.
    const Tensor dtemb = ops::activation_backward(dst, s.temb, ops::Activation::SILU);  // [B, D]
    const Tensor dtext = ops::activation_backward(nn::linear_backward(w_.text_linear_2, dtemb, s.text_2, rc, grads),
                                                  s.text_pre, ops::Activation::SILU);
    Tensor dpooled = nn::linear_backward(w_.text_linear_1, dtext, s.text_1, rc, grads, want_inputs);
    const Tensor dtime = ops::activation_backward(nn::linear_backward(w_.time_linear_2, dtemb, s.time_2, rc, grads),
                                                  s.time_pre, ops::Activation::SILU);
    nn::linear_backward(w_.time_linear_1, dtime, s.time_1, rc, grads, false);  // the timestep gets no gradient
    Tensor dctx = nn::linear_backward(w_.context_embedder, dc, s.context_embedder, rc, grads, want_inputs);
    Tensor dpatches = nn::linear_backward(w_.patch_embed, dx, s.patch_embed, rc, grads, want_inputs);
    if (!want_inputs) return;
    inputs->hidden_states = ops::unpatchify(dpatches, c.in_channels, s.height, s.width, p,
                                            ops::PatchLayout::CHANNEL_FIRST);
    inputs->hidden_states = host_f32(inputs->hidden_states);
    inputs->encoder_hidden_states = host_f32(dctx);
    inputs->pooled_projections = host_f32(dpooled);
}

}  // namespace sd3
