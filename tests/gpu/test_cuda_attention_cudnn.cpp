// cuDNN's fused attention (ops/cuda/attention_cudnn.cpp) behind cuda::attention_fwd / attention_bwd, against the
// CPU spec at SD3-like shapes (24 heads of 64 over joint sequences of 333 and 1178 tokens, batch 2), CLIP's causal
// 77 tokens, causal with Tq != Tk and a T5-style bias; fused QKV strides; bit-identical reruns of the
// deterministic backward; the backward with atomics; chunked execution when the scratch is small; the Exec flag
// and SD3_ATTENTION=own bringing back the own kernels. Skips without a GPU, below sm_80, or without cuDNN (not built in, or
// libcudnn.so.9 not loadable: the skip message says which; with SD3_REQUIRE_CUDNN=1, as run_gpu.sh sets, a
// missing cuDNN fails instead).
#include <array>
#include <cstdlib>
#include <cstring>

#include "gpu/gpu_testing.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/ops.h"

namespace sd3::gputest {
namespace {

struct Case {
    int64_t batch, heads, tq, tk;
    bool causal, bias, fused;  // fused: q, k, v interleaved in one [B, T, 3, H*64] buffer, gradients likewise
};
const Case kCases[] = {
    {2, 24, 333, 333, false, false, false},
    {2, 24, 333, 333, true, false, true},
    {2, 24, 1178, 1178, false, false, true},  // SD3 at 512²: 1024 image + 154 context tokens, fused QKV
    {2, 24, 1178, 1178, true, false, false},
    {2, 12, 77, 77, true, false, false},      // CLIP-L's causal 77 tokens
    {1, 4, 96, 200, true, false, false},      // causal with Tq != Tk: the top-left diagonal, as the CPU's
    {1, 8, 100, 264, false, true, false},     // T5-style additive bias [H, Tq, Tk] (cuDNN may decline it)
};
constexpr int64_t kD = 64;

// Tolerances (gpu_testing.h, per dtype): the forward's output 2x, as for the own tensor-core kernel: cuDNN rounds
// P to the storage dtype before P·V. The gradients 4x: P and dS are rounded before their GEMMs too (two
// roundings more than the CPU), and each gradient sums Tq or Tk terms of mixed sign (the own backward's 2x).
// lse is f32 from exp2/log2 approximations over up to 1178 terms: 4x the f32 tolerance.
constexpr double kOut = 2.0, kGrad = 4.0, kLse = 4.0;

struct Reference {
    std::vector<float> q, k, v, dout, bias, out, out_r, lse, dq, dk, dv;
};

// Inputs exact in bf16 and in f16 (rounded to bf16, then to f16), so one CPU reference serves both dtypes.
std::vector<float> both(const std::vector<float>& x) { return round_to(round_to(x, DType::BF16), DType::F16); }

Reference reference(const Case& c, const cpu::AttentionShape& s) {
    Reference r;
    const int64_t HD = c.heads * kD;
    r.q = both(randn(c.batch * c.tq * HD, 200));
    r.k = both(randn(c.batch * c.tk * HD, 201));
    r.v = both(randn(c.batch * c.tk * HD, 202));
    r.dout = both(randn(c.batch * c.tq * HD, 203));
    r.bias = both(randn(c.heads * c.tq * c.tk, 204));
    const float* bp = c.bias ? r.bias.data() : nullptr;
    r.out.resize(r.q.size());
    r.lse.resize(c.batch * c.heads * c.tq);
    cpu::attention_fwd(r.out.data(), r.lse.data(), r.q.data(), r.k.data(), r.v.data(), bp, s);
    r.out_r = both(r.out);  // both backwards start from the same forward output, in the storage dtype
    r.dq.resize(r.q.size());
    r.dk.resize(r.k.size());
    r.dv.resize(r.v.size());
    cpu::attention_bwd(r.dq.data(), r.dk.data(), r.dv.data(), r.dout.data(), r.q.data(), r.k.data(), r.v.data(),
                       r.out_r.data(), r.lse.data(), bp, s);
    return r;
}

// [B*T, HD] x 3 -> [B*T, 3*HD] and back.
std::vector<float> pack3(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& c,
                         int64_t HD) {
    const int64_t rows = static_cast<int64_t>(a.size()) / HD;
    std::vector<float> f(3 * a.size());
    for (int64_t t = 0; t < rows; ++t)
        for (int64_t e = 0; e < HD; ++e) {
            f[(t * 3 + 0) * HD + e] = a[t * HD + e];
            f[(t * 3 + 1) * HD + e] = b[t * HD + e];
            f[(t * 3 + 2) * HD + e] = c[t * HD + e];
        }
    return f;
}
std::vector<float> unpack3(const std::vector<float>& f, int part, int64_t HD) {
    const int64_t rows = static_cast<int64_t>(f.size()) / (3 * HD);
    std::vector<float> o(rows * HD);
    for (int64_t t = 0; t < rows; ++t)
        for (int64_t e = 0; e < HD; ++e) o[t * HD + e] = f[(t * 3 + part) * HD + e];
    return o;
}

// The device side of one case in one dtype: inputs in the case's layout, output and gradient buffers.
struct OnGpu {
    Tensor qkv, q, k, v, dout, out_in, bias, out, lse, lse_in, grad, dq, dk, dv;
    const void *pq, *pk, *pv;
    void *pdq, *pdk, *pdv;
    cuda::AttentionRows rows;
    bool fused;
    int64_t HD;

    OnGpu(const Case& c, const Reference& r, DType dt) : fused(c.fused), HD(c.heads * kD) {
        const size_t es = dtype_size(dt);
        dout = upload(r.dout, dt);
        out_in = upload(r.out_r, dt);
        bias = upload(r.bias, dt);
        lse_in = upload(r.lse, DType::F32);
        if (fused) {  // SD3's layout: one QKV projection output, dense attention output
            qkv = upload(pack3(r.q, r.k, r.v, HD), dt);
            pq = qkv.raw();
            pk = static_cast<const char*>(qkv.raw()) + HD * es;
            pv = static_cast<const char*>(qkv.raw()) + 2 * HD * es;
            rows = {3 * HD, 3 * HD, 3 * HD, HD};
        } else {
            q = upload(r.q, dt);
            k = upload(r.k, dt);
            v = upload(r.v, dt);
            pq = q.raw();
            pk = k.raw();
            pv = v.raw();
            rows = {};
        }
        out = upload(std::vector<float>(r.q.size(), NAN), dt);
        lse = upload(std::vector<float>(r.lse.size(), NAN), DType::F32);
        reset_grads(r, dt);
    }
    void reset_grads(const Reference& r, DType dt) {
        if (fused) {
            grad = upload(std::vector<float>(3 * r.q.size(), NAN), dt);
            const size_t es = dtype_size(dt);
            pdq = grad.raw();
            pdk = static_cast<char*>(grad.raw()) + HD * es;
            pdv = static_cast<char*>(grad.raw()) + 2 * HD * es;
        } else {
            dq = upload(std::vector<float>(r.q.size(), NAN), dt);
            dk = upload(std::vector<float>(r.k.size(), NAN), dt);
            dv = upload(std::vector<float>(r.v.size(), NAN), dt);
            pdq = dq.raw();
            pdk = dk.raw();
            pdv = dv.raw();
        }
    }
    std::vector<float> grad_part(int part) const {
        if (fused) return unpack3(download(grad), part, HD);
        return download(part == 0 ? dq : part == 1 ? dk : dv);
    }
};

class CudnnAttention : public ::testing::Test {
  protected:
    void SetUp() override {
        SD3_REQUIRE_GPU();
        const cuda::Exec ex = cuda::Context::get(0).exec();
        // run_gpu.sh sets SD3_REQUIRE_CUDNN=1 where cuDNN is installed: there a missing cuDNN is a failure.
        const char* require = std::getenv("SD3_REQUIRE_CUDNN");
        if (!cuda::cudnn_attention_available(ex)) {
            if (require != nullptr && std::strcmp(require, "1") == 0) FAIL() << cuda::cudnn_attention_info(ex);
            GTEST_SKIP() << cuda::cudnn_attention_info(ex);
        }
        RecordProperty("cudnn", cuda::cudnn_attention_info(ex));
    }
    static int64_t calls() { return cuda::detail::cudnn_attention_stats(cuda::Context::get(0).exec()).calls; }
};

void forward(const cuda::Exec& ex, OnGpu& g, const Case& c, const cpu::AttentionShape& s, DType dt) {
    cuda::attention_fwd(ex, g.out.raw(), g.lse.data<float>(), g.pq, g.pk, g.pv, c.bias ? g.bias.raw() : nullptr, s, dt,
                        g.rows);
}

void backward(const cuda::Exec& ex, OnGpu& g, const Case& c, const cpu::AttentionShape& s, DType dt) {
    cuda::attention_bwd(ex, g.pdq, g.pdk, g.pdv, g.dout.raw(), g.pq, g.pk, g.pv, g.out_in.raw(), g.lse_in.data<float>(),
                        c.bias ? g.bias.raw() : nullptr, s, dt, g.rows);
}

// The gradients `g` holds, each against the CPU's within `tolerance` (a multiple of dt's); returned as read back.
std::array<std::vector<float>, 3> expect_grads_close(const OnGpu& g, const Reference& r, DType dt, double tolerance) {
    const std::vector<float>* want[3] = {&r.dq, &r.dk, &r.dv};
    const char* names[3] = {"dq", "dk", "dv"};
    std::array<std::vector<float>, 3> got;
    for (int part = 0; part < 3; ++part) {
        got[part] = g.grad_part(part);
        EXPECT_TRUE(close(got[part], *want[part], dt, tolerance)) << names[part];
    }
    return got;
}

// check(c, s, r, dt, g) for every case of kCases in bf16 and in f16, with its shape, its CPU reference and its
// operands on the GPU, under a trace that names them.
template <typename Check>
void for_each_case(Check check) {
    for (const Case& c : kCases) {
        const cpu::AttentionShape s{c.batch, c.heads, c.tq, c.tk, kD, 1.0f / std::sqrt(float(kD)), c.causal};
        const Reference r = reference(c, s);
        for (DType dt : {DType::BF16, DType::F16}) {
            SCOPED_TRACE(::testing::Message() << dt_name(dt) << " B " << c.batch << " H " << c.heads << " Tq " << c.tq
                                              << " Tk " << c.tk << " causal " << c.causal << " bias " << c.bias
                                              << " fused " << c.fused);
            OnGpu g(c, r, dt);
            check(c, s, r, dt, g);
        }
    }
}

TEST_F(CudnnAttention, MatchesCpuAndRerunsBitIdentical) {
    cuda::Context& ctx = cuda::Context::get(0);
    for_each_case([&](const Case& c, const cpu::AttentionShape& s, const Reference& r, DType dt, OnGpu& g) {
        const int64_t before = calls();
        forward(ctx.exec(cuda::attention_fwd_workspace(s, dt)), g, c, s, dt);
        const bool served_fwd = calls() > before;
        EXPECT_TRUE(close(download(g.out), r.out, dt, kOut)) << "out";
        EXPECT_TRUE(close(download(g.lse), r.lse, DType::F32, kLse)) << "lse";

        const cuda::Exec bx = ctx.exec(cuda::attention_bwd_workspace(s, dt));
        const int64_t before_bwd = calls();
        backward(bx, g, c, s, dt);
        const bool served_bwd = calls() > before_bwd;
        const auto st = cuda::detail::cudnn_attention_stats(bx);
        RecordProperty(std::string("case_") + dt_name(dt) + "_T" + std::to_string(c.tq) + (c.causal ? "c" : "") +
                           (c.bias ? "b" : "") + (c.fused ? "f" : ""),
                       std::string("fwd ") + (served_fwd ? "cudnn" : "own") + ", bwd " +
                           (served_bwd ? "cudnn" : "own") + ", bwd workspace " + std::to_string(st.workspace) +
                           " chunk " + std::to_string(st.chunk_batch) + "x" + std::to_string(st.chunk_heads) +
                           (st.declined.empty() ? "" : "; last declined graph: " + st.declined));
        if (!c.bias) EXPECT_TRUE(served_fwd && served_bwd) << "cuDNN declined this shape";
        const std::array<std::vector<float>, 3> first = expect_grads_close(g, r, dt, kGrad);

        // The deterministic algorithm: a rerun into fresh (NaN) buffers gives the same bits.
        g.reset_grads(r, dt);
        backward(bx, g, c, s, dt);
        for (int part = 0; part < 3; ++part)
            EXPECT_TRUE(g.grad_part(part) == first[part]) << "a rerun changed gradient " << part;
    });
}

// The backward that sums dQ with atomics (Exec::deterministic_attention off, train --attention-backward atomic):
// the same gradients within the same tolerances, from a workspace without the deterministic algorithm's dP.
TEST_F(CudnnAttention, AtomicBackwardMatchesCpu) {
    cuda::Context& ctx = cuda::Context::get(0);
    for_each_case([&](const Case& c, const cpu::AttentionShape& s, const Reference& r, DType dt, OnGpu& g) {
        EXPECT_LT(cuda::attention_bwd_workspace(s, dt, false), cuda::attention_bwd_workspace(s, dt, true));
        cuda::Exec bx = ctx.exec(cuda::attention_bwd_workspace(s, dt, false));
        bx.deterministic_attention = false;
        const int64_t before = calls();
        backward(bx, g, c, s, dt);
        if (!c.bias) EXPECT_GT(calls(), before) << "cuDNN declined this shape";
        expect_grads_close(g, r, dt, kGrad);
    });
}

// Less scratch than the whole problem's workspace: cuDNN runs over chunks of batch and heads (offset pointers,
// the same strides) and still matches the CPU; no scratch for even one head: the own kernels take over.
TEST_F(CudnnAttention, ChunksWhenScratchIsSmall) {
    cuda::Context& ctx = cuda::Context::get(0);
    const Case c{2, 24, 333, 333, false, false, true};
    const cpu::AttentionShape s{c.batch, c.heads, c.tq, c.tk, kD, 0.125f, c.causal};
    const Reference r = reference(c, s);
    const DType dt = DType::BF16;
    OnGpu g(c, r, dt);
    cuda::Exec bx = ctx.exec(cuda::detail::cudnn_workspace_cap());  // surely enough for the whole problem
    const int64_t before = calls();
    backward(bx, g, c, s, dt);
    const auto whole = cuda::detail::cudnn_attention_stats(bx);
    ASSERT_EQ(whole.calls, before + 1) << "cuDNN declined: " << whole.declined;
    ASSERT_EQ(whole.chunk_batch, c.batch);
    if (whole.workspace == 0) GTEST_SKIP() << "this cuDNN's backward needs no workspace: nothing to chunk";
    bx.scratch_bytes = static_cast<size_t>(whole.workspace) / 5;  // about a fifth of the heads of one element
    g.reset_grads(r, dt);
    backward(bx, g, c, s, dt);
    const auto chunked = cuda::detail::cudnn_attention_stats(bx);
    RecordProperty("chunks", std::to_string(whole.workspace) + " bytes whole; " + std::to_string(chunked.workspace) +
                                 " bytes per chunk of " + std::to_string(chunked.chunk_batch) + "x" +
                                 std::to_string(chunked.chunk_heads));
    EXPECT_EQ(chunked.calls, whole.calls + 1);
    EXPECT_LE(chunked.workspace, static_cast<int64_t>(bx.scratch_bytes));
    EXPECT_TRUE(chunked.chunk_batch == 1 && chunked.chunk_heads < c.heads);
    expect_grads_close(g, r, dt, kGrad);

    // Exactly what the own backward needs (B*H*Tq floats), less than one head's cuDNN workspace: the own kernels.
    bx.scratch_bytes = static_cast<size_t>(c.batch * c.heads * c.tq) * sizeof(float);
    if (static_cast<int64_t>(bx.scratch_bytes) * c.batch * c.heads < whole.workspace) {
        g.reset_grads(r, dt);
        backward(bx, g, c, s, dt);
        EXPECT_EQ(cuda::detail::cudnn_attention_stats(bx).calls, chunked.calls) << "cuDNN ran without its workspace";
        EXPECT_TRUE(close(g.grad_part(0), r.dq, dt, 2.0)) << "dq, own kernels";
    }
}

// The Exec flag and SD3_ATTENTION=own send the same call to the own kernels (tensor-core forward, CUDA-core
// backward), which still match the CPU.
TEST_F(CudnnAttention, FlagAndEnvironmentSelectTheOwnKernels) {
    cuda::Context& ctx = cuda::Context::get(0);
    const Case c{2, 24, 333, 333, false, false, true};
    const cpu::AttentionShape s{c.batch, c.heads, c.tq, c.tk, kD, 0.125f, c.causal};
    const Reference r = reference(c, s);
    const DType dt = DType::BF16;
    for (int via_env = 0; via_env < 2; ++via_env) {
        SCOPED_TRACE(via_env ? "SD3_ATTENTION=own" : "Exec::cudnn_attention = false");
        OnGpu g(c, r, dt);
        cuda::Exec fx = ctx.exec(cuda::attention_fwd_workspace(s, dt));
        cuda::Exec bx = ctx.exec(cuda::attention_bwd_workspace(s, dt));
        if (via_env)
            setenv("SD3_ATTENTION", "own", 1);
        else
            fx.cudnn_attention = bx.cudnn_attention = false;
        const int64_t before = calls();
        forward(fx, g, c, s, dt);
        backward(bx, g, c, s, dt);
        const int64_t after = calls();
        unsetenv("SD3_ATTENTION");
        EXPECT_EQ(after, before) << "cuDNN ran although switched off";
        EXPECT_TRUE(close(download(g.out), r.out, dt, 2.0)) << "out";  // tensor cores round P too
        expect_grads_close(g, r, dt, 2.0);
    }
    // And cuDNN again once the switch is gone.
    OnGpu g(c, r, dt);
    const int64_t before = calls();
    forward(ctx.exec(cuda::attention_fwd_workspace(s, dt)), g, c, s, dt);
    EXPECT_EQ(calls(), before + 1);
}

// The VAE's convolutions through cuDNN (ops::conv2d: channels-last copies in and out): a 3x3 same convolution,
// the encoder's 3x3 stride-2 one and a channel-widening one, at the decoder's kind of channel counts (smaller
// images), are served by cuDNN, not the im2col fallback, and match the CPU. cuDNN's output is rounded before the
// bias is added, hence the bias epilogue's factor.
TEST_F(CudnnAttention, ServesTheVaeConvolutions) {
    struct Case {
        int64_t ci, co, h, w, stride;
    };
    for (const Case c : {Case{64, 64, 32, 40, 1}, Case{32, 64, 33, 31, 2}, Case{16, 128, 24, 24, 1}}) {
        for (const DType dt : {DType::BF16, DType::F16}) {
            SCOPED_TRACE(::testing::Message() << c.ci << "->" << c.co << " " << c.h << "x" << c.w << " stride "
                                              << c.stride << " " << dt_name(dt));
            const Tensor x = cpu_randn({2, c.ci, c.h, c.w}, 70), w = cpu_randn({c.co, c.ci, 3, 3}, 71, 0.05f),
                         b = cpu_randn({c.co}, 72);
            const Tensor want = ops::conv2d(rounded(x, dt), rounded(w, dt), rounded(b, dt), c.stride, 1);
            const cuda::Exec ex = cuda::Context::get(0).exec();
            const int64_t before = cuda::detail::cudnn_attention_stats(ex).conv_calls;
            const Tensor got = ops::conv2d(on_gpu(x, dt), on_gpu(w, dt), on_gpu(b, dt), c.stride, 1);
            const auto st = cuda::detail::cudnn_attention_stats(ex);
            EXPECT_EQ(st.conv_calls, before + 1) << "declined: " << st.declined;
            EXPECT_TRUE(same_as_cpu(got, want, dt, bias_epilogue_factor(dt)));
        }
    }
}

}  // namespace
}  // namespace sd3::gputest
