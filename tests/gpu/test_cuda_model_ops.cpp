// The model-level ops on CUDA (ops/mmdit_ops.h, the VAE ops, attention at head dims
// without a flash kernel) against the same calls on the CPU, on odd sizes, in f32, bf16 and f16 (tolerances:
// gpu_testing.h; widenings explained at each call), plus the dropout mask and bit-identical reruns of the token
// reductions.
#include <cstring>

#include "gpu/gpu_testing.h"
#include "ops/cpu/vae_ops.h"
#include "ops/cuda/context.h"
#include "ops/cuda/model_ops.h"
#include "ops/mmdit_ops.h"

namespace sd3::gputest {
namespace {

bool bit_identical(const Tensor& a, const Tensor& b) {
    const Tensor ha = to_host(a), hb = to_host(b);
    return ha.nbytes() == hb.nbytes() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

class CudaModelOps : public ::testing::TestWithParam<DType> {
  protected:
    void SetUp() override { SD3_REQUIRE_GPU(); }
    DType dt() const { return GetParam(); }
    // Parameter-like gradients: f32 master gradients, and the storage dtype itself.
    std::vector<DType> grad_dtypes() const {
        return dt() == DType::F32 ? std::vector<DType>{DType::F32} : std::vector<DType>{DType::F32, dt()};
    }
};

// --- adaLN modulation and gated residuals, forward and backward with views into an adaLN output --------------
TEST_P(CudaModelOps, ModulateForwardBackward) {
    // T = 333 spans 11 reduction chunks (detail::reduce_chunks) with a tail; D = 45 leaves a partial block.
    const int64_t B = 2, T = 333, D = 45;
    const Tensor x = cpu_randn({B, T, D}, 1, 1.5f), E = cpu_randn({B, 4 * D}, 2, 0.5f), dy = cpu_randn({B, T, D}, 3);
    const Tensor xr = rounded(x, dt()), Er = rounded(E, dt()), dyr = rounded(dy, dt());
    const Tensor gx = on_gpu(x, dt()), gE = on_gpu(E, dt()), gdy = on_gpu(dy, dt());
    auto ch = [D](const Tensor& t, int i) { return t.slice(1, i * D, (i + 1) * D); };

    EXPECT_TRUE(same_as_cpu(ops::modulate(gx, ch(gE, 0), ch(gE, 1)), ops::modulate(xr, ch(Er, 0), ch(Er, 1)), dt()));

    for (DType gdt : grad_dtypes()) {
        SCOPED_TRACE(::testing::Message() << "gradients in " << dt_name(gdt));
        // Accumulation onto existing values; chunk 3 is never touched.
        const Tensor dE0 = rounded(cpu_randn({B, 4 * D}, 4), gdt);
        Tensor dE = dE0.clone();
        Tensor dsh = ch(dE, 2), dsc = ch(dE, 0);
        const Tensor dx = ops::modulate_backward(dyr, xr, ch(Er, 1), &dsh, &dsc);
        Tensor gdE = on_gpu(dE0, gdt);
        Tensor gdsh = ch(gdE, 2), gdsc = ch(gdE, 0);
        const Tensor gdx = ops::modulate_backward(gdy, gx, ch(gE, 1), &gdsh, &gdsc);
        EXPECT_TRUE(same_as_cpu(gdx, dx, dt())) << "dx";
        // Sums of 333 products of mixed sign: f32 accumulation order differs from the CPU's double, so 3x (as dw).
        EXPECT_TRUE(same_as_cpu(gdE, dE, gdt, 3.0)) << "dshift, dscale";
        EXPECT_EQ(download(ch(gdE, 3)), ch(dE0, 3).contiguous().to_float_vector()) << "untouched chunk";
        EXPECT_EQ(download(ch(gdE, 1)), ch(dE0, 1).contiguous().to_float_vector()) << "untouched chunk";

        // Deterministic: the same call from the same state gives the same bits.
        Tensor gdE2 = on_gpu(dE0, gdt);
        Tensor gdsh2 = ch(gdE2, 2), gdsc2 = ch(gdE2, 0);
        const Tensor gdx2 = ops::modulate_backward(gdy, gx, ch(gE, 1), &gdsh2, &gdsc2);
        EXPECT_TRUE(bit_identical(gdE, gdE2)) << "rerun";
        EXPECT_TRUE(bit_identical(gdx, gdx2)) << "rerun";
    }
}

// LayerNorm + modulation: the vector kernel (D = 64) stores what the two GPU ops store, bit for bit (also the
// LayerNorm's output and statistics that training keeps), and both match the CPU; D = 45 falls back to the two
// ops.
TEST_P(CudaModelOps, LayerNormModulateFused) {
    for (const int64_t D : {64, 45}) {
        const int64_t B = 2, T = 37;
        const Tensor x = cpu_randn({B, T, D}, 21, 1.5f, 0.3f), E = cpu_randn({B, 3 * D}, 22, 0.5f);
        const Tensor xr = rounded(x, dt()), Er = rounded(E, dt());
        const Tensor gx = on_gpu(x, dt()), gE = on_gpu(E, dt());
        auto ch = [D](const Tensor& t, int i) { return t.slice(1, i * D, (i + 1) * D); };
        Tensor m, r, gm, gr;
        const Tensor fused = ops::layer_norm_modulate(gx, ch(gE, 2), ch(gE, 0), 1e-6f);
        const Tensor two_ops = ops::modulate(ops::layer_norm_fwd(gx, 1e-6f, &gm, &gr), ch(gE, 2), ch(gE, 0));
        EXPECT_TRUE(bit_identical(fused, two_ops)) << "D = " << D;
        Tensor xhat, fm, fr;
        const Tensor fused_kept = ops::layer_norm_modulate(gx, ch(gE, 2), ch(gE, 0), 1e-6f, &xhat, &fm, &fr);
        EXPECT_TRUE(bit_identical(fused_kept, two_ops)) << "D = " << D << ", keeping the LayerNorm's output";
        EXPECT_TRUE(bit_identical(xhat, ops::layer_norm_fwd(gx, 1e-6f, &gm, &gr))) << "xhat, D = " << D;
        EXPECT_TRUE(bit_identical(fm, gm) && bit_identical(fr, gr)) << "mean, rstd, D = " << D;
        const Tensor cpu = ops::modulate(ops::layer_norm_fwd(xr, 1e-6f, &m, &r), ch(Er, 2), ch(Er, 0));
        EXPECT_TRUE(same_as_cpu(fused, cpu, dt())) << "D = " << D;
    }
}

TEST_P(CudaModelOps, VectorizedElementwiseMatchesCpu) {
    // D = 64 and whole tensors of 16-byte vectors take the Vec kernels (common.cuh) of modulate, gated_add_,
    // add_, the activations and layer_norm_fwd; the odd sizes above take the scalar ones.
    const int64_t B = 2, T = 33, D = 64;
    const Tensor x = cpu_randn({B, T, D}, 15, 1.5f), a = cpu_randn({B, T, D}, 16), E = cpu_randn({B, 4 * D}, 17, 0.5f);
    const Tensor xr = rounded(x, dt()), ar = rounded(a, dt()), Er = rounded(E, dt());
    const Tensor gx = on_gpu(x, dt()), ga = on_gpu(a, dt()), gE = on_gpu(E, dt());
    auto ch = [D](const Tensor& t, int i) { return t.slice(1, i * D, (i + 1) * D); };
    EXPECT_TRUE(same_as_cpu(ops::modulate(gx, ch(gE, 0), ch(gE, 1)), ops::modulate(xr, ch(Er, 0), ch(Er, 1)), dt()))
        << "modulate";
    Tensor ref = xr.clone(), gy = ops::copy(gx);
    ops::gated_add_(ref, ch(Er, 2), ar);
    ops::gated_add_(gy, ch(gE, 2), ga);
    EXPECT_TRUE(same_as_cpu(gy, ref, dt())) << "gated_add_";
    ref = xr.clone();
    gy = ops::copy(gx);
    ops::add_(ref, ar, -0.5f);
    ops::add_(gy, ga, -0.5f);
    EXPECT_TRUE(same_as_cpu(gy, ref, dt())) << "add_";
    EXPECT_TRUE(same_as_cpu(ops::activation(gx, ops::Activation::GELU_TANH),
                            ops::activation(xr, ops::Activation::GELU_TANH), dt(), 2.0))
        << "gelu";  // device and C library transcendental functions: 2x, as CudaOps.Activations
    EXPECT_TRUE(same_as_cpu(ops::activation_backward(ga, gx, ops::Activation::GELU_TANH),
                            ops::activation_backward(ar, xr, ops::Activation::GELU_TANH), dt(), 2.0))
        << "gelu backward";
    Tensor mean, rstd, gmean, grstd;
    EXPECT_TRUE(same_as_cpu(ops::layer_norm_fwd(gx, 1e-6f, &gmean, &grstd), ops::layer_norm_fwd(xr, 1e-6f, &mean, &rstd),
                            dt()))
        << "layer_norm_fwd";
    EXPECT_TRUE(same_as_cpu(grstd, rstd, DType::F32)) << "rstd";
    // The backward reductions with two columns per thread: dx and the adaLN gradients (float32).
    Tensor dE = Tensor::zeros({B, 4 * D}), gdE = ops::zeros({B, 4 * D}, kGPU);
    Tensor dsh = ch(dE, 0), dsc = ch(dE, 1), gdsh = ch(gdE, 0), gdsc = ch(gdE, 1);
    EXPECT_TRUE(same_as_cpu(ops::modulate_backward(ga, gx, ch(gE, 1), &gdsh, &gdsc),
                            ops::modulate_backward(ar, xr, ch(Er, 1), &dsh, &dsc), dt()))
        << "modulate_backward dx";
    Tensor dg = ch(dE, 2), gdg = ch(gdE, 2);
    EXPECT_TRUE(same_as_cpu(ops::gated_add_backward(ga, gx, ch(gE, 3), &gdg), ops::gated_add_backward(ar, xr, ch(Er, 3), &dg),
                            dt()))
        << "gated_add_backward da";
    EXPECT_TRUE(same_as_cpu(gdE, dE, DType::F32, 3.0)) << "adaLN gradients";  // token sums, as above
}

// The token reductions at the model's width: D = 1536 takes 16-byte vectors over three column blocks, T = 130
// makes 5 chunks of 26 rows (each ending on a partial group of rows in flight); adaLN gradients in float32.
TEST_P(CudaModelOps, TokenReductionsAtModelWidth) {
    const int64_t B = 2, T = 130, D = 1536;
    const Tensor x = cpu_randn({B, T, D}, 31, 1.5f), dy = cpu_randn({B, T, D}, 32), E = cpu_randn({B, 4 * D}, 33, 0.5f);
    const Tensor xr = rounded(x, dt()), dyr = rounded(dy, dt()), Er = rounded(E, dt());
    const Tensor gx = on_gpu(x, dt()), gdy = on_gpu(dy, dt()), gE = on_gpu(E, dt());
    auto ch = [D](const Tensor& t, int i) { return t.slice(1, i * D, (i + 1) * D); };
    Tensor dE = Tensor::zeros({B, 4 * D}), gdE = ops::zeros({B, 4 * D}, kGPU);
    Tensor dsh = ch(dE, 0), dsc = ch(dE, 1), dg = ch(dE, 2), gdsh = ch(gdE, 0), gdsc = ch(gdE, 1), gdg = ch(gdE, 2);
    EXPECT_TRUE(same_as_cpu(ops::modulate_backward(gdy, gx, ch(gE, 1), &gdsh, &gdsc),
                            ops::modulate_backward(dyr, xr, ch(Er, 1), &dsh, &dsc), dt()))
        << "modulate_backward dx";
    EXPECT_TRUE(same_as_cpu(ops::gated_add_backward(gdy, gx, ch(gE, 3), &gdg),
                            ops::gated_add_backward(dyr, xr, ch(Er, 3), &dg), dt()))
        << "gated_add_backward da";
    EXPECT_TRUE(same_as_cpu(gdE, dE, DType::F32, 3.0)) << "adaLN gradients";  // token sums, as above
    Tensor gdE2 = ops::zeros({B, 4 * D}, kGPU);
    Tensor gdsh2 = ch(gdE2, 0), gdsc2 = ch(gdE2, 1), gdg2 = ch(gdE2, 2);
    ops::modulate_backward(gdy, gx, ch(gE, 1), &gdsh2, &gdsc2);
    ops::gated_add_backward(gdy, gx, ch(gE, 3), &gdg2);
    EXPECT_TRUE(bit_identical(gdE, gdE2)) << "rerun";
}

TEST_P(CudaModelOps, GatedAddForwardBackward) {
    const int64_t B = 3, T = 77, D = 111;
    const Tensor x = cpu_randn({B, T, D}, 10), a = cpu_randn({B, T, D}, 11), E = cpu_randn({B, 3 * D}, 12, 0.5f);
    const Tensor dx = cpu_randn({B, T, D}, 13);
    const Tensor xr = rounded(x, dt()), ar = rounded(a, dt()), Er = rounded(E, dt()), dxr = rounded(dx, dt());
    Tensor ref = xr.clone();
    ops::gated_add_(ref, Er.slice(1, D, 2 * D), ar);
    Tensor gx = on_gpu(x, dt());
    ops::gated_add_(gx, on_gpu(E, dt()).slice(1, D, 2 * D), on_gpu(a, dt()));
    EXPECT_TRUE(same_as_cpu(gx, ref, dt()));

    for (DType gdt : grad_dtypes()) {
        SCOPED_TRACE(::testing::Message() << "gradients in " << dt_name(gdt));
        const Tensor dE0 = rounded(cpu_randn({B, 3 * D}, 14), gdt);
        Tensor dE = dE0.clone();
        Tensor dg = dE.slice(1, 2 * D, 3 * D);
        const Tensor da = ops::gated_add_backward(dxr, ar, Er.slice(1, D, 2 * D), &dg);
        const Tensor gE = on_gpu(E, dt()), gdx = on_gpu(dx, dt()), ga = on_gpu(a, dt());
        Tensor gdE = on_gpu(dE0, gdt);
        Tensor gdg = gdE.slice(1, 2 * D, 3 * D);
        const Tensor gda = ops::gated_add_backward(gdx, ga, gE.slice(1, D, 2 * D), &gdg);
        EXPECT_TRUE(same_as_cpu(gda, da, dt())) << "da";
        EXPECT_TRUE(same_as_cpu(gdE, dE, gdt, 3.0)) << "dgate";  // token sums, as in ModulateForwardBackward
        Tensor gdE2 = on_gpu(dE0, gdt);
        Tensor gdg2 = gdE2.slice(1, 2 * D, 3 * D);
        ops::gated_add_backward(gdx, ga, gE.slice(1, D, 2 * D), &gdg2);
        EXPECT_TRUE(bit_identical(gdE, gdE2)) << "rerun";
    }
}

// --- layouts: permutations are exact -------------------------------------------------------------------------
TEST_P(CudaModelOps, PatchifyUnpatchifyBothLayouts) {
    const Tensor img = cpu_randn({2, 5, 6, 10}, 20);
    const Tensor imgr = rounded(img, dt()), gimg = on_gpu(img, dt());
    for (auto layout : {ops::PatchLayout::CHANNEL_FIRST, ops::PatchLayout::CHANNEL_LAST}) {
        const Tensor tok = ops::patchify(imgr, 2, layout);
        const Tensor gtok = ops::patchify(gimg, 2, layout);
        EXPECT_EQ(download(gtok), tok.to_float_vector());
        const Tensor tokens = cpu_randn({2, 15, 20}, 21);
        EXPECT_EQ(download(ops::unpatchify(on_gpu(tokens, dt()), 5, 6, 10, 2, layout)),
                  ops::unpatchify(rounded(tokens, dt()), 5, 6, 10, 2, layout).to_float_vector());
        EXPECT_EQ(download(ops::unpatchify(gtok, 5, 6, 10, 2, layout)), imgr.to_float_vector());
    }
}

TEST_P(CudaModelOps, TimestepEmbedding) {
    const Tensor t = Tensor::from_vector({5}, {0.0f, 1.5f, 999.0f, 500.25f, 37.0f});
    const Tensor gt = on_gpu(t, DType::F32);  // timesteps stay f32; the result is in dt
    // The transcendental functions in double, rounded once: at most an ulp from glibc's float versions.
    EXPECT_TRUE(same_as_cpu(ops::timestep_embedding(gt, 256, true, 0.0f, 10000.0f, dt()),
                            ops::timestep_embedding(t, 256, true, 0.0f), dt()));
    EXPECT_TRUE(same_as_cpu(ops::timestep_embedding(gt, 10, false, 1.0f, 100.0f, dt()),
                            ops::timestep_embedding(t, 10, false, 1.0f, 100.0f), dt()));
}

TEST_P(CudaModelOps, AxpyAddRows) {
    const Tensor y = cpu_randn({7, 13}, 32), x = cpu_randn({7, 13}, 33), row = cpu_randn({13}, 34);
    Tensor yr = rounded(y, dt()), gy = on_gpu(y, dt());
    ops::add_(yr, rounded(x, dt()), -0.75f);
    ops::add_(gy, on_gpu(x, dt()), -0.75f);
    EXPECT_TRUE(same_as_cpu(gy, yr, dt()));
    yr = Tensor::from_vector(yr.shape(), download(gy));  // restart from the GPU's rounded sums: one rounding per op
    ops::add_rows_(yr, rounded(row, dt()));
    ops::add_rows_(gy, on_gpu(row, dt()));
    EXPECT_TRUE(same_as_cpu(gy, yr, dt()));
    if (dt() == DType::F32) EXPECT_EQ(download(gy), yr.to_float_vector());  // the same f32 roundings: bit-exact
}

TEST_P(CudaModelOps, DropoutDropsTheSameElementsAsTheCpu) {
    const int64_t n = 4099;
    const Tensor x = cpu_randn({n}, 40, 1.0f, 3.0f);  // shifted away from zero: a zero output means "dropped"
    const Tensor xr = rounded(x, dt()), gx = on_gpu(x, dt());
    for (float p : {0.1f, 0.5f}) {
        const Tensor ref = ops::dropout(xr, p, 1234), refb = ops::dropout_backward(xr, p, 99);
        const std::vector<float> got = download(ops::dropout(gx, p, 1234));
        const std::vector<float> gotb = download(ops::dropout_backward(gx, p, 99));
        const std::vector<float> r = ref.to_float_vector(), rb = refb.to_float_vector();
        int64_t dropped = 0, mismatched = 0;
        for (int64_t i = 0; i < n; ++i) {
            dropped += r[i] == 0.0f;
            mismatched += (got[i] == 0.0f) != (r[i] == 0.0f) || (gotb[i] == 0.0f) != (rb[i] == 0.0f);
        }
        EXPECT_EQ(mismatched, 0) << "p " << p;
        EXPECT_NEAR(static_cast<double>(dropped) / n, p, 0.04) << "p " << p;
        EXPECT_TRUE(close(got, r, dt()));
        if (dt() == DType::F32) EXPECT_EQ(got, r);  // one f32 multiply: bit-identical
    }
}

TEST_P(CudaModelOps, ZerosCopies) {
    const Tensor z = ops::zeros({3, 5, 7}, kGPU, dt());
    EXPECT_EQ(z.dtype(), dt());
    EXPECT_EQ(download(z), std::vector<float>(105, 0.0f));
    const Tensor src = cpu_randn({5, 6, 7}, 51);
    const Tensor gview = on_gpu(src, dt()).permute({2, 0, 1});  // non-contiguous
    const Tensor c = ops::copy(gview);
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(download(c), rounded(src, dt()).permute({2, 0, 1}).contiguous().to_float_vector());
    // A token range of a batch of several is strided: copied. Of a batch of one it is contiguous: a view.
    const Tensor gsrc = on_gpu(src, dt());
    const Tensor strided = ops::slice_contiguous(gsrc, 1, 2, 5);
    EXPECT_TRUE(strided.is_contiguous());
    EXPECT_NE(strided.raw(), gsrc.slice(1, 2, 5).raw());
    EXPECT_EQ(download(strided), rounded(src, dt()).slice(1, 2, 5).contiguous().to_float_vector());
    const Tensor one = gsrc.slice(0, 1, 2);  // [1, 6, 7]
    const Tensor view = ops::slice_contiguous(one, 1, 2, 5);
    EXPECT_EQ(view.raw(), one.slice(1, 2, 5).raw());
    EXPECT_EQ(download(view), rounded(src, dt()).slice(0, 1, 2).slice(1, 2, 5).contiguous().to_float_vector());
}

// --- backward passes of ops.h ---------------------------------------------------------------------------------
TEST_P(CudaModelOps, LinearBackward) {
    const int64_t K = 111, N = 45;  // 57 rows
    const Tensor x = cpu_randn({3, 19, K}, 60), w = cpu_randn({N, K}, 61, 0.1f), dy = cpu_randn({3, 19, N}, 62);
    const Tensor xr = rounded(x, dt()), wr = rounded(w, dt()), dyr = rounded(dy, dt());
    const Tensor gx = on_gpu(x, dt()), gw = on_gpu(w, dt()), gdy = on_gpu(dy, dt());
    for (DType gdt : grad_dtypes()) {
        SCOPED_TRACE(::testing::Message() << "gradients in " << dt_name(gdt));
        const Tensor dw0 = rounded(cpu_randn({N, K}, 63), gdt), db0 = rounded(cpu_randn({N}, 64), gdt);
        Tensor dw = dw0.clone(), db = db0.clone();
        const Tensor dx = ops::linear_backward(dyr, xr, wr, &dw, &db);
        Tensor gdw = on_gpu(dw0, gdt), gdb = on_gpu(db0, gdt);
        const Tensor gdx = ops::linear_backward(gdy, gx, gw, &gdw, &gdb);
        EXPECT_TRUE(same_as_cpu(gdx, dx, dt())) << "dx";
        // Sums of M = 57 products rounded once into the gradient dtype: 3x, as the launcher tests.
        EXPECT_TRUE(same_as_cpu(gdw, dw, gdt, 3.0)) << "dw";
        EXPECT_TRUE(same_as_cpu(gdb, db, gdt, 3.0)) << "db";
    }
    EXPECT_FALSE(ops::linear_backward(gdy, Tensor(), gw, nullptr, nullptr, false).defined());
    // A scale of dy folded into the GEMMs (a LoRA adapter's): dx and dw against the CPU's.
    Tensor dw = rounded(cpu_randn({N, K}, 63), DType::F32), gdw = on_gpu(dw, DType::F32);
    const Tensor dx = ops::linear_backward(dyr, xr, wr, &dw, nullptr, true, 0.75f);
    const Tensor gdx = ops::linear_backward(gdy, gx, gw, &gdw, nullptr, true, 0.75f);
    EXPECT_TRUE(same_as_cpu(gdx, dx, dt())) << "dx, alpha 0.75";
    EXPECT_TRUE(same_as_cpu(gdw, dw, DType::F32, 3.0)) << "dw, alpha 0.75";
}

TEST_P(CudaModelOps, LinearAccumulate) {
    // y += alpha·x·wᵀ and y += alpha·x·w (a LoRA up-projection and input gradient): one GEMM with beta 1, the
    // sum rounded once to the dtype; y = alpha·x·wᵀ fresh.
    const int64_t K = 45, N = 111;
    const Tensor x = cpu_randn({3, 19, K}, 65), w_nk = cpu_randn({N, K}, 66, 0.1f), w_kn = cpu_randn({K, N}, 67, 0.1f);
    const Tensor y0 = cpu_randn({3, 19, N}, 68);
    for (bool kn : {false, true}) {
        SCOPED_TRACE(kn ? "w [K, N]" : "w [N, K]");
        const Tensor& w = kn ? w_kn : w_nk;
        Tensor y = rounded(y0, dt()), gy = on_gpu(y0, dt());
        ops::linear_acc_(y, rounded(x, dt()), rounded(w, dt()), 0.5f, kn);
        ops::linear_acc_(gy, on_gpu(x, dt()), on_gpu(w, dt()), 0.5f, kn);
        EXPECT_TRUE(same_as_cpu(gy, y, dt()));
    }
    // y = alpha·h·upᵀ (+ b), the LoRA output the frozen product then adds into: rank 4 (the skinny kernel, which
    // writes without reading and adds the bias in float32 before its one rounding; 112 columns make 16-byte
    // vectors, 111 not) and a wider inner dimension (cuBLASLt, whose bias epilogue rounds twice).
    const Tensor h4 = cpu_randn({3, 19, 4}, 70), hk = cpu_randn({3, 19, K}, 71);
    for (int64_t n : {N, N + 1}) {
        const Tensor b = cpu_randn({n}, 72);
        for (const Tensor* h : {&h4, &hk}) {
            const Tensor up = cpu_randn({n, h->size(-1)}, 73, 0.1f);
            for (bool with_bias : {false, true}) {
                SCOPED_TRACE(::testing::Message() << "inner dimension " << h->size(-1) << ", " << n << " outputs"
                                                  << (with_bias ? ", bias" : ""));
                const Tensor bc = with_bias ? rounded(b, dt()) : Tensor(), bg = with_bias ? on_gpu(b, dt()) : Tensor();
                const double extra = with_bias && h == &hk ? bias_epilogue_factor(dt()) : 1.0;
                EXPECT_TRUE(same_as_cpu(ops::linear(on_gpu(*h, dt()), on_gpu(up, dt()), bg, 0.75f),
                                        ops::linear(rounded(*h, dt()), rounded(up, dt()), bc, 0.75f), dt(),
                                        extra));
            }
        }
    }
}

TEST_P(CudaModelOps, NormAndActivationBackward) {
    const Tensor x = cpu_randn({2, 19, 111}, 70, 2.0f, 0.5f), dy = cpu_randn({2, 19, 111}, 71);
    const Tensor w = cpu_randn({111}, 72, 0.3f, 1.0f);
    const Tensor xr = rounded(x, dt()), dyr = rounded(dy, dt()), wr = rounded(w, dt());
    const Tensor gx = on_gpu(x, dt()), gdy = on_gpu(dy, dt()), gw = on_gpu(w, dt());

    Tensor mean, rstd, gmean, grstd;
    const Tensor y = ops::layer_norm_fwd(xr, 1e-6f, &mean, &rstd);
    EXPECT_TRUE(same_as_cpu(ops::layer_norm_fwd(gx, 1e-6f, &gmean, &grstd), y, dt()));
    EXPECT_TRUE(same_as_cpu(gmean, mean, DType::F32));
    EXPECT_TRUE(same_as_cpu(grstd, rstd, DType::F32));
    // Backward from the CPU's statistics so that only the backward is compared; 2x as the launcher tests.
    EXPECT_TRUE(same_as_cpu(ops::layer_norm_backward(gdy, gx, on_gpu(mean, DType::F32), on_gpu(rstd, DType::F32)),
                            ops::layer_norm_backward(dyr, xr, mean, rstd), dt(), 2.0));

    for (DType gdt : grad_dtypes()) {
        SCOPED_TRACE(::testing::Message() << "dw in " << dt_name(gdt));
        Tensor rs, grs;
        const Tensor yr = ops::rms_norm_fwd(xr, wr, 1e-6f, &rs);
        EXPECT_TRUE(same_as_cpu(ops::rms_norm_fwd(gx, gw, 1e-6f, &grs), yr, dt()));
        EXPECT_TRUE(same_as_cpu(grs, rs, DType::F32));
        const Tensor dw0 = rounded(cpu_randn({111}, 73), gdt);
        Tensor dw = dw0.clone(), gdw = on_gpu(dw0, gdt);
        const Tensor dx = ops::rms_norm_backward(dyr, xr, wr, rs, &dw);
        const Tensor gdx = ops::rms_norm_backward(gdy, gx, gw, on_gpu(rs, DType::F32), &gdw);
        EXPECT_TRUE(same_as_cpu(gdx, dx, dt(), 2.0)) << "dx";
        EXPECT_TRUE(same_as_cpu(gdw, dw, gdt, 3.0)) << "dw";  // 38 rows summed, as dw of the launcher tests
    }
    // GPU expf/tanhf vs the C library: a few f32 ulps, 2x (as the launcher tests).
    for (auto act : {ops::Activation::SILU, ops::Activation::GELU_TANH}) {
        EXPECT_TRUE(same_as_cpu(ops::activation_backward(gdy, gx, act), ops::activation_backward(dyr, xr, act), dt(),
                                2.0));
    }
}

TEST_P(CudaModelOps, AttentionForwardWithLseAndBackward) {
    for (int64_t D : {64, 32}) {
        SCOPED_TRACE(::testing::Message() << "head dim " << D);
        const int64_t B = 2, H = 3, Tq = 77, Tk = 45;
        const Tensor q = cpu_randn({B, Tq, H * D}, 80), k = cpu_randn({B, Tk, H * D}, 81);
        const Tensor v = cpu_randn({B, Tk, H * D}, 82), dout = cpu_randn({B, Tq, H * D}, 83);
        const Tensor qr = rounded(q, dt()), kr = rounded(k, dt()), vr = rounded(v, dt()), dor = rounded(dout, dt());
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));
        Tensor lse, glse;
        const Tensor out = ops::attention_fwd(qr, kr, vr, H, scale, &lse);
        const Tensor gout = ops::attention_fwd(on_gpu(q, dt()), on_gpu(k, dt()), on_gpu(v, dt()), H, scale, &glse);
        // In 16 bits the tensor-core kernel and cuDNN (which takes head dims 32 and 64 here) round P to dt before
        // P·V, and cuDNN sums in another order: the cuDNN tests' widening (test_cuda_attention_cudnn.cpp: output
        // 2x, lse and gradients 4x).
        const bool h16 = dt() != DType::F32;
        const double fwd = h16 ? 2.0 : 1.0, lse_tol = h16 ? 4.0 : 1.0, grad = h16 ? 4.0 : 2.0;
        EXPECT_TRUE(same_as_cpu(gout, out, dt(), fwd)) << "out";
        EXPECT_TRUE(same_as_cpu(glse, lse, DType::F32, lse_tol)) << "lse";
        // The backward of both sides from the CPU's forward (out rounded to dt, its lse).
        Tensor dq, dk, dv, gdq, gdk, gdv;
        const Tensor outr = rounded(out, dt());
        ops::attention_backward(dor, qr, kr, vr, outr, lse, H, scale, &dq, &dk, &dv);
        ops::attention_backward(on_gpu(dout, dt()), on_gpu(q, dt()), on_gpu(k, dt()), on_gpu(v, dt()),
                                on_gpu(out, dt()), on_gpu(lse, DType::F32), H, scale, &gdq, &gdk, &gdv);
        // Sums over Tk (dq) or Tq (dk, dv) terms of mixed sign: 2x in f32, as the launcher tests; cuDNN's 4x.
        EXPECT_TRUE(same_as_cpu(gdq, dq, dt(), grad)) << "dq";
        EXPECT_TRUE(same_as_cpu(gdk, dk, dt(), grad)) << "dk";
        EXPECT_TRUE(same_as_cpu(gdv, dv, dt(), grad)) << "dv";
    }
}

// --- attention at head dims without a flash kernel: the chunked GEMM + softmax path -------------------------
TEST_P(CudaModelOps, AttentionAnyHeadDim) {
    struct Case {
        int64_t B, H, Tq, Tk, D;
        bool causal, bias;
    };
    // The VAE's mid-block (one head of 512), head dim 80 with Tq != Tk, causal (also with Tq != Tk: the top-left
    // mask), and an additive bias.
    const Case cases[] = {{1, 1, 300, 300, 512, false, false},
                          {2, 2, 77, 45, 80, false, false},
                          {1, 2, 45, 45, 80, true, false},
                          {1, 2, 45, 70, 80, true, false},
                          {2, 3, 33, 21, 24, false, true}};
    for (const Case& c : cases) {
        SCOPED_TRACE(::testing::Message() << "B " << c.B << " H " << c.H << " Tq " << c.Tq << " Tk " << c.Tk << " D "
                                          << c.D << " causal " << c.causal << " bias " << c.bias);
        const Tensor q = cpu_randn({c.B, c.Tq, c.H * c.D}, 90), k = cpu_randn({c.B, c.Tk, c.H * c.D}, 91);
        const Tensor v = cpu_randn({c.B, c.Tk, c.H * c.D}, 92);
        const Tensor bias = c.bias ? cpu_randn({c.H, c.Tq, c.Tk}, 93) : Tensor();
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
        const Tensor qr = rounded(q, dt()), kr = rounded(k, dt()), vr = rounded(v, dt());
        const Tensor ref = ops::attention(qr, kr, vr, c.H, scale, c.causal, c.bias ? rounded(bias, dt()) : Tensor());
        const Tensor gq = on_gpu(q, dt()), gk = on_gpu(k, dt()), gv = on_gpu(v, dt());
        const Tensor gbias = c.bias ? on_gpu(bias, dt()) : Tensor();
        // P is rounded to dt before P·V (a second rounding in 16 bits): 2x, as the tensor-core forward.
        const double extra = dt() == DType::F32 ? 1.0 : 2.0;
        EXPECT_TRUE(same_as_cpu(ops::attention(gq, gk, gv, c.H, scale, c.causal, gbias), ref, dt(), extra));
        if (c.causal || c.bias) continue;
        Tensor lse, glse;
        const Tensor out = ops::attention_fwd(qr, kr, vr, c.H, scale, &lse);
        EXPECT_TRUE(same_as_cpu(ops::attention_fwd(gq, gk, gv, c.H, scale, &glse), out, dt(), extra)) << "fwd";
        EXPECT_TRUE(same_as_cpu(glse, lse, DType::F32)) << "lse";
    }
}

// A scratch budget of 7 query rows: 1024 queries at head dim 512 take 147 chunks, the last one short (the launcher
// directly: the Tensor-level op gives it 256 MiB).
TEST_P(CudaModelOps, AttentionChunksBySmallScratch) {
    const int64_t T = 1024, D = 512;
    const cpu::AttentionShape s{1, 1, T, T, D, 1.0f / std::sqrt(512.0f), false};
    const Tensor q = cpu_randn({1, T, D}, 95), k = cpu_randn({1, T, D}, 96), v = cpu_randn({1, T, D}, 97);
    std::vector<float> out(T * D), lse(T);
    const auto qr = round_to(q.to_float_vector(), dt()), kr = round_to(k.to_float_vector(), dt()),
               vr = round_to(v.to_float_vector(), dt());
    cpu::attention_fwd(out.data(), lse.data(), qr.data(), kr.data(), vr.data(), nullptr, s);
    const Tensor gq = upload(qr, dt()), gk = upload(kr, dt()), gv = upload(vr, dt());
    Tensor gout = upload(std::vector<float>(T * D, NAN), dt()), glse = upload(std::vector<float>(T, NAN), DType::F32);
    const size_t per_row = T * (sizeof(float) + (dt() == DType::F32 ? 0 : dtype_size(dt())));  // S, then P in dt
    const size_t bytes = cuda::attention_chunked_workspace(s, dt(), 7 * per_row + 256);
    cuda::Exec ex = cuda::Context::get(0).exec(bytes);
    ex.scratch_bytes = bytes;
    cuda::attention_chunked_fwd(ex, gout.raw(), glse.data<float>(), gq.raw(), gk.raw(), gv.raw(), nullptr, s, dt());
    EXPECT_TRUE(close(download(gout), out, dt(), dt() == DType::F32 ? 1.0 : 2.0)) << "out";  // as AttentionAnyHeadDim
    EXPECT_TRUE(close(download(glse), lse, DType::F32)) << "lse";
}

// --- VAE ops ----------------------------------------------------------------------------------------------------
TEST_P(CudaModelOps, VaeUpsamplePadBandedConv) {
    const Tensor x = cpu_randn({2, 3, 5, 7}, 100);
    const Tensor xr = rounded(x, dt()), gx = on_gpu(x, dt());
    EXPECT_EQ(download(ops::upsample_nearest2x(gx)), ops::upsample_nearest2x(xr).to_float_vector());
    EXPECT_EQ(download(ops::pad_right_bottom(gx, 1, 2)), ops::pad_right_bottom(xr, 1, 2).to_float_vector());
    const Tensor w = cpu_randn({4, 3, 3, 3}, 101, 0.2f), b = cpu_randn({4}, 102);
    EXPECT_TRUE(same_as_cpu(ops::conv2d_banded(gx, on_gpu(w, dt()), on_gpu(b, dt()), 2, 1, 1),
                            ops::conv2d(xr, rounded(w, dt()), rounded(b, dt()), 2, 1), dt()));
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaModelOps, ::testing::ValuesIn(kDTypes), dt_param_name);

}  // namespace
}  // namespace sd3::gputest
