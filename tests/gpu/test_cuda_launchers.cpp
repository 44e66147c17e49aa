// Every CUDA launcher (ops/cuda/cuda_ops.h), forward and backward, against its CPU specification
// (ops/cpu/cpu_ops.h) on odd sizes (19, 45, 77, 111: tails of every tile), strided operands where the API takes
// strides, in f32, bf16 and f16 (tolerances: gpu_testing.h), plus bit-identical reruns of the reductions.
#include <cmath>

#include "gpu/gpu_testing.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"

namespace sd3::gputest {
namespace {

class CudaOps : public ::testing::TestWithParam<DType> {
  protected:
    void SetUp() override { SD3_REQUIRE_GPU(); }
    cuda::Exec exec(size_t scratch = 0) { return cuda::Context::get(0).exec(scratch); }
    DType dt() const { return GetParam(); }
};

// --- GEMM: every transpose combination, padded leading dimensions, alpha/beta, bias ----------------------------
TEST_P(CudaOps, Gemm) {
    const int64_t M = 19, N = 111, K = 77;
    for (int ta = 0; ta < 2; ++ta) {
        for (int tb = 0; tb < 2; ++tb) {
            for (int with_bias = 0; with_bias < 2; ++with_bias) {
                SCOPED_TRACE(::testing::Message() << "trans_a " << ta << " trans_b " << tb << " bias " << with_bias);
                // Padded row strides: the operands are views into wider matrices.
                const int64_t lda = (ta ? M : K) + 5, ldb = (tb ? K : N) + 3, ldc = N + 7;
                const auto A = round_to(randn((ta ? K : M) * lda, 1), dt());
                const auto B = round_to(randn((tb ? N : K) * ldb, 2), dt());
                const auto C0 = round_to(randn(M * ldc, 3), dt());
                const auto bias = round_to(randn(N, 4), dt());
                auto ref = C0;
                cpu::gemm(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, ref.data(), ldc);
                if (with_bias)
                    for (int64_t i = 0; i < M; ++i)
                        for (int64_t j = 0; j < N; ++j) ref[i * ldc + j] += bias[j];
                Tensor dA = upload(A, dt()), dB = upload(B, dt()), dC = upload(C0, dt()), db = upload(bias, dt());
                cuda::gemm(exec(), ta, tb, M, N, K, 0.7f, dA.raw(), lda, dB.raw(), ldb, 0.3f, dC.raw(), ldc, dt(),
                           dt(), with_bias ? db.raw() : nullptr);
                EXPECT_TRUE(close(download(dC), ref, dt(), with_bias ? bias_epilogue_factor(dt()) : 1.0));
            }
        }
    }
}

// The rank-4 and rank-8 shapes of a LoRA adapter take the skinny kernels (gemm.cu): inner dimension r (y += h·Bᵀ,
// dx += dh·A) and output width r (h = x·Aᵀ, dh = dy·B), with and without transposed B, overwriting and
// accumulating. A wide dimension of 136 with tight strides takes their 16-byte vectors, 133 and padded strides
// their scalar forms.
TEST_P(CudaOps, GemmSkinnyRanks) {
    const int64_t M = 37;
    for (const int64_t r : {4, 8}) {
        for (const int64_t wide : {136, 133}) {
            for (const bool small_k : {true, false}) {
                for (int tb = 0; tb < 2; ++tb) {
                    for (const float beta : {0.0f, 0.3f}) {
                        const int64_t N = small_k ? wide : r, K = small_k ? r : wide;
                        const int64_t pad = wide == 136 ? 0 : 3;
                        const int64_t lda = K + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
                        SCOPED_TRACE(::testing::Message() << "r " << r << " M " << M << " N " << N << " K " << K
                                                          << " trans_b " << tb << " beta " << beta);
                        const auto A = round_to(randn(M * lda, 40), dt());
                        const auto B = round_to(randn((tb ? N : K) * ldb, 41), dt());
                        const auto C0 = round_to(randn(M * ldc, 42), dt());
                        auto ref = C0;
                        cpu::gemm(false, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, beta, ref.data(), ldc);
                        Tensor dA = upload(A, dt()), dB = upload(B, dt());
                        Tensor dC = upload(beta != 0.0f ? C0 : std::vector<float>(M * ldc, NAN), dt());
                        cuda::gemm(exec(), false, tb, M, N, K, 0.7f, dA.raw(), lda, dB.raw(), ldb, beta, dC.raw(),
                                   ldc, dt(), dt());
                        auto got = download(dC);
                        if (beta == 0.0f)  // the padding columns are never written: compare the written ones
                            for (int64_t i = 0; i < M; ++i)
                                for (int64_t j = N; j < ldc; ++j) got[i * ldc + j] = ref[i * ldc + j];
                        EXPECT_TRUE(close(got, ref, dt()));
                    }
                }
            }
        }
    }
}

// 16-bit operands accumulating into an f32 result (the weight-gradient path of mixed precision).
TEST_P(CudaOps, GemmF32Result) {
    const int64_t M = 45, N = 33, K = 130;
    const auto A = round_to(randn(K * M, 5), dt()), B = round_to(randn(K * N, 6), dt());
    const auto C0 = randn(M * N, 7);
    auto ref = C0;
    cpu::gemm(true, false, M, N, K, 1.0f, A.data(), M, B.data(), N, 1.0f, ref.data(), N);
    Tensor dA = upload(A, dt()), dB = upload(B, dt()), dC = upload(C0, DType::F32);
    cuda::gemm(exec(), true, false, M, N, K, 1.0f, dA.raw(), M, dB.raw(), N, 1.0f, dC.raw(), N, dt(), DType::F32);
    EXPECT_TRUE(close(download(dC), ref, DType::F32, dt() == DType::F32 ? 1.0 : 3.0));
}

TEST_P(CudaOps, Linear) {
    const int64_t M = 57, K = 111, N = 45;
    const auto x = round_to(randn(M * K, 10), dt()), w = round_to(randn(N * K, 11, 0.1f), dt());
    const auto b = round_to(randn(N, 12), dt()), dy = round_to(randn(M * N, 13), dt());
    std::vector<float> y(M * N);
    cpu::linear_fwd(y.data(), x.data(), w.data(), b.data(), M, K, N);
    Tensor dx_ = upload(x, dt()), dw_ = upload(w, dt()), db_ = upload(b, dt()), ddy = upload(dy, dt());
    Tensor dyo = upload(std::vector<float>(M * N, NAN), dt());  // poisoned: every element must be written
    cuda::linear_fwd(exec(), dyo.raw(), dx_.raw(), dw_.raw(), db_.raw(), M, K, N, dt());
    EXPECT_TRUE(close(download(dyo), y, dt(), bias_epilogue_factor(dt()))) << "forward";

    // Backward: dx overwrites; dw and db accumulate onto existing f32 master gradients.
    const auto gw0 = randn(N * K, 14), gb0 = randn(N, 15);
    std::vector<float> gx(M * K), gw = gw0, gb = gb0;
    cpu::linear_bwd(gx.data(), gw.data(), gb.data(), dy.data(), x.data(), w.data(), M, K, N);
    Tensor dgx = upload(std::vector<float>(M * K, NAN), dt()), dgw = upload(gw0, DType::F32),
           dgb = upload(gb0, DType::F32);
    cuda::linear_bwd(exec(cuda::linear_bwd_workspace(M, N)), dgx.raw(), dgw.raw(), dgb.raw(), ddy.raw(), dx_.raw(),
                     dw_.raw(), M, K, N, dt(), DType::F32);
    EXPECT_TRUE(close(download(dgx), gx, dt())) << "dx";
    // f32 master gradients from 16-bit operands: sums of M exact products, rounded once into f32.
    EXPECT_TRUE(close(download(dgw), gw, DType::F32, 3.0)) << "dw";
    EXPECT_TRUE(close(download(dgb), gb, DType::F32, 3.0)) << "db";
}

// The GELU epilogue: the float32 result of the CPU's linear then GELU-tanh, rounded once. With and without a bias,
// with aligned operands and with x one element off its alignment (other cuBLASLt kernels, or the tiled fallback
// where none takes it). cuBLASLt evaluates GELU with its own tanh, hence four times the GEMM tolerance.
TEST_P(CudaOps, LinearGeluEpilogue) {
    const int64_t M = 57, K = 112, N = 45;
    const auto x = round_to(randn(M * K + 1, 16), dt()), w = round_to(randn(N * K, 17, 0.1f), dt());
    const auto b = round_to(randn(N, 18), dt());
    Tensor gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt());
    for (const bool with_bias : {true, false}) {
        for (const int64_t offset : {0, 1}) {  // offset 1: x starts one element in
            std::vector<float> y(M * N);
            cpu::linear_fwd(y.data(), x.data() + offset, w.data(), with_bias ? b.data() : nullptr, M, K, N);
            cpu::activation_fwd(y.data(), y.data(), M * N, cpu::Activation::GELU_TANH);
            Tensor gy = upload(std::vector<float>(M * N, NAN), dt());
            const char* xp = static_cast<const char*>(gx.raw()) + offset * dtype_size(dt());
            cuda::linear_fwd(exec(), gy.raw(), xp, gw.raw(), with_bias ? gb.raw() : nullptr, M, K, N, dt(),
                             cuda::Epilogue::GELU);
            EXPECT_TRUE(close(download(gy), y, dt(), 4.0)) << "bias " << with_bias << ", offset " << offset;
        }
    }
}

// Training's GELU epilogues. GELU_AUX: the GELU as above plus the pre-activation, rounded once, in aux. DGELU: the
// input gradient dy·w times GELU'(pre) for a given pre. N = 48 gives aux rows cuBLASLt takes (8-element strides),
// N = 45 the tiled fallback's; DGELU's output rows are K = 112 wide. Tolerances as LinearGeluEpilogue.
TEST_P(CudaOps, LinearGeluAuxAndBackwardEpilogues) {
    const int64_t M = 57, K = 112;
    for (const int64_t N : {48, 45}) {
        const auto x = round_to(randn(M * K, 19), dt()), w = round_to(randn(N * K, 20, 0.1f), dt());
        const auto b = round_to(randn(N, 21), dt()), dy = round_to(randn(M * N, 22), dt());
        const auto pre_in = round_to(randn(M * K, 23, 1.5f), dt());
        Tensor gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt()), gdy = upload(dy, dt());
        for (const bool with_bias : {true, false}) {
            SCOPED_TRACE(::testing::Message() << "N " << N << ", bias " << with_bias);
            std::vector<float> pre(M * N), y(M * N);
            cpu::linear_fwd(pre.data(), x.data(), w.data(), with_bias ? b.data() : nullptr, M, K, N);
            cpu::activation_fwd(y.data(), pre.data(), M * N, cpu::Activation::GELU_TANH);
            Tensor gy = upload(std::vector<float>(M * N, NAN), dt()), gpre = upload(std::vector<float>(M * N, NAN), dt());
            cuda::linear_fwd(exec(), gy.raw(), gx.raw(), gw.raw(), with_bias ? gb.raw() : nullptr, M, K, N, dt(),
                             cuda::Epilogue::GELU_AUX, gpre.raw());
            EXPECT_TRUE(close(download(gy), y, dt(), 4.0)) << "GELU";
            EXPECT_TRUE(close(download(gpre), pre, dt())) << "pre-activation";
        }
        std::vector<float> dpre(M * K);
        cpu::linear_bwd(dpre.data(), nullptr, nullptr, dy.data(), nullptr, w.data(), M, K, N);
        cpu::activation_bwd(dpre.data(), dpre.data(), pre_in.data(), M * K, cpu::Activation::GELU_TANH);
        Tensor gpre = upload(pre_in, dt()), gdpre = upload(std::vector<float>(M * K, NAN), dt());
        cuda::linear_bwd_dgelu(exec(), gdpre.raw(), gdy.raw(), gw.raw(), gpre.raw(), M, K, N, dt());
        EXPECT_TRUE(close(download(gdpre), dpre, dt(), 4.0)) << "DGELU, N " << N;
    }
}

// --- norms -----------------------------------------------------------------------------------------------------
struct NormCase {
    int64_t rows, cols;
    bool affine;
};
const NormCase kNormCases[] = {{19, 111, true}, {77, 1536, true}, {5, 33, false}};

TEST_P(CudaOps, LayerNorm) {
    for (const NormCase& nc : kNormCases) {
        SCOPED_TRACE(::testing::Message() << nc.rows << "x" << nc.cols << " affine " << nc.affine);
        const int64_t R = nc.rows, C = nc.cols;
        const auto x = round_to(randn(R * C, 20, 2.0f, 0.5f), dt());
        const auto w = round_to(randn(C, 21, 0.3f, 1.0f), dt()), b = round_to(randn(C, 22), dt());
        const auto dy = round_to(randn(R * C, 23), dt());
        std::vector<float> y(R * C), mean(R), rstd(R);
        const float* wp = nc.affine ? w.data() : nullptr;
        const float* bp = nc.affine ? b.data() : nullptr;
        cpu::layer_norm_fwd(y.data(), mean.data(), rstd.data(), x.data(), wp, bp, R, C, 1e-6f);
        Tensor gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt()), gdy = upload(dy, dt());
        Tensor gy = upload(std::vector<float>(R * C, NAN), dt()), gmean = upload(std::vector<float>(R), DType::F32),
               grstd = upload(std::vector<float>(R), DType::F32);
        cuda::layer_norm_fwd(exec(), gy.raw(), gmean.data<float>(), grstd.data<float>(), gx.raw(),
                             nc.affine ? gw.raw() : nullptr, nc.affine ? gb.raw() : nullptr, R, C, 1e-6f, dt());
        EXPECT_TRUE(close(download(gy), y, dt())) << "y";
        EXPECT_TRUE(close(download(gmean), mean, DType::F32)) << "mean";
        EXPECT_TRUE(close(download(grstd), rstd, DType::F32)) << "rstd";

        // Backward from the same statistics (the CPU's, uploaded), so only the backward is compared.
        std::vector<float> dx(R * C), dw(C, 0.5f), db(C, -0.25f);
        cpu::layer_norm_bwd(dx.data(), nc.affine ? dw.data() : nullptr, nc.affine ? db.data() : nullptr, dy.data(),
                            x.data(), wp, mean.data(), rstd.data(), R, C);
        Tensor cmean = upload(mean, DType::F32), crstd = upload(rstd, DType::F32);
        Tensor gdx = upload(std::vector<float>(R * C, NAN), dt()), gdw = upload(std::vector<float>(C, 0.5f), DType::F32),
               gdb = upload(std::vector<float>(C, -0.25f), DType::F32);
        cuda::layer_norm_bwd(exec(cuda::layer_norm_bwd_workspace(R, C)), gdx.raw(), nc.affine ? gdw.raw() : nullptr,
                             nc.affine ? gdb.raw() : nullptr, gdy.raw(), gx.raw(), nc.affine ? gw.raw() : nullptr,
                             cmean.data<float>(), crstd.data<float>(), R, C, dt(), DType::F32);
        EXPECT_TRUE(close(download(gdx), dx, dt(), 2.0)) << "dx";
        // With a residual gradient added in the same pass (here dy itself): dx + dy, rounded once.
        std::vector<float> dx_plus(R * C);
        for (int64_t i = 0; i < R * C; ++i) dx_plus[i] = dx[i] + dy[i];
        Tensor gdx2 = upload(std::vector<float>(R * C, NAN), dt());
        cuda::layer_norm_bwd(exec(), gdx2.raw(), nullptr, nullptr, gdy.raw(), gx.raw(), nc.affine ? gw.raw() : nullptr,
                             cmean.data<float>(), crstd.data<float>(), R, C, dt(), DType::F32, gdy.raw());
        EXPECT_TRUE(close(download(gdx2), dx_plus, dt(), 2.0)) << "dx + residual";
        if (nc.affine) {
            EXPECT_TRUE(close(download(gdw), dw, DType::F32, 3.0)) << "dw";
            EXPECT_TRUE(close(download(gdb), db, DType::F32, 3.0)) << "db";
        }
    }
}

TEST_P(CudaOps, RmsNorm) {
    for (const NormCase& nc : kNormCases) {
        SCOPED_TRACE(::testing::Message() << nc.rows << "x" << nc.cols << " affine " << nc.affine);
        const int64_t R = nc.rows, C = nc.cols;
        const auto x = round_to(randn(R * C, 30, 1.5f), dt()), w = round_to(randn(C, 31, 0.3f, 1.0f), dt());
        const auto dy = round_to(randn(R * C, 32), dt());
        const float* wp = nc.affine ? w.data() : nullptr;
        std::vector<float> y(R * C), rstd(R);
        cpu::rms_norm_fwd(y.data(), rstd.data(), x.data(), wp, R, C, 1e-6f);
        Tensor gx = upload(x, dt()), gw = upload(w, dt()), gdy = upload(dy, dt());
        Tensor gy = upload(std::vector<float>(R * C, NAN), dt()), grstd = upload(std::vector<float>(R), DType::F32);
        cuda::rms_norm_fwd(exec(), gy.raw(), grstd.data<float>(), gx.raw(), nc.affine ? gw.raw() : nullptr, R, C,
                           1e-6f, dt());
        EXPECT_TRUE(close(download(gy), y, dt())) << "y";
        EXPECT_TRUE(close(download(grstd), rstd, DType::F32)) << "rstd";

        std::vector<float> dx(R * C), dw(C, 0.5f);
        cpu::rms_norm_bwd(dx.data(), nc.affine ? dw.data() : nullptr, dy.data(), x.data(), wp, rstd.data(), R, C);
        Tensor crstd = upload(rstd, DType::F32);
        Tensor gdx = upload(std::vector<float>(R * C, NAN), dt()), gdw = upload(std::vector<float>(C, 0.5f), DType::F32);
        cuda::rms_norm_bwd(exec(cuda::rms_norm_bwd_workspace(R, C)), gdx.raw(), nc.affine ? gdw.raw() : nullptr,
                           gdy.raw(), gx.raw(), nc.affine ? gw.raw() : nullptr, crstd.data<float>(), R, C, dt(),
                           DType::F32);
        EXPECT_TRUE(close(download(gdx), dx, dt(), 2.0)) << "dx";
        if (nc.affine) EXPECT_TRUE(close(download(gdw), dw, DType::F32, 3.0)) << "dw";
    }
}

TEST_P(CudaOps, GroupNorm) {
    // Small groups (one chunk each) and groups long enough to be split over several chunks whose borders fall
    // inside channels (3 channels of 131 x 129 = 50697 elements: four chunks).
    struct Case {
        int64_t B, C, G, S;
    };
    for (const Case c : {Case{2, 12, 3, 7 * 9}, Case{2, 6, 2, 131 * 129}}) {
        const int64_t n = c.B * c.C * c.S;
        const auto x = round_to(randn(n, 40, 2.0f, -0.3f), dt());
        const auto w = round_to(randn(c.C, 41, 0.3f, 1.0f), dt()), b = round_to(randn(c.C, 42), dt());
        std::vector<float> y(n);
        cpu::group_norm_fwd(y.data(), x.data(), w.data(), b.data(), c.B, c.C, c.S, c.G, 1e-6f);
        Tensor gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt());
        Tensor gy = upload(std::vector<float>(n, NAN), dt());
        cuda::group_norm_fwd(exec(cuda::group_norm_fwd_workspace(c.B, c.C, c.S, c.G)), gy.raw(), gx.raw(), gw.raw(),
                             gb.raw(), c.B, c.C, c.S, c.G, 1e-6f, dt());
        EXPECT_TRUE(close(download(gy), y, dt())) << "groups of " << c.C / c.G * c.S;
    }
}

// --- conv2d: 3x3 same, 3x3 stride 2 (the VAE's downsampler), 1x1, and a scratch too small for one image --------
TEST_P(CudaOps, Conv2d) {
    struct Case {
        int64_t k, stride, pad;
        bool bias, small_scratch;
    };
    const Case cases[] = {{3, 1, 1, true, false}, {3, 2, 1, false, false}, {1, 1, 0, true, false},
                          {3, 1, 1, true, true}, {4, 3, 2, true, false}};
    const int64_t B = 2, Ci = 5, H = 11, W = 13, Co = 7;
    for (const Case& c : cases) {
        SCOPED_TRACE(::testing::Message() << "k " << c.k << " stride " << c.stride << " pad " << c.pad << " small "
                                        << c.small_scratch);
        const int64_t Ho = (H + 2 * c.pad - c.k) / c.stride + 1, Wo = (W + 2 * c.pad - c.k) / c.stride + 1;
        const auto x = round_to(randn(B * Ci * H * W, 50), dt());
        const auto w = round_to(randn(Co * Ci * c.k * c.k, 51, 0.2f), dt()), b = round_to(randn(Co, 52), dt());
        std::vector<float> y(B * Co * Ho * Wo);
        cpu::conv2d_fwd(y.data(), x.data(), w.data(), c.bias ? b.data() : nullptr, B, Ci, H, W, Co, c.k, c.k,
                        c.stride, c.pad);
        Tensor gx = upload(x, dt()), gw = upload(w, dt()), gb = upload(b, dt());
        Tensor gy = upload(std::vector<float>(y.size(), NAN), dt());
        const size_t least = cuda::conv2d_fwd_min_workspace(Ci, c.k, c.k, dt());
        cuda::Exec ex = exec(c.small_scratch ? least : least * 16);
        if (c.small_scratch) ex.scratch_bytes = least;  // 64 pixels per GEMM: 143 pixels take three chunks
        cuda::conv2d_fwd(ex, gy.raw(), gx.raw(), gw.raw(), c.bias ? gb.raw() : nullptr, B, Ci, H, W, Co, c.k, c.k,
                         c.stride, c.pad, dt());
        EXPECT_TRUE(close(download(gy), y, dt()));
    }
}

// The batched transpose around cuDNN's convolutions: exact, with the bias added per output row, over sizes that
// leave partial tiles.
TEST_P(CudaOps, TransposeBatched) {
    const int64_t B = 3, R = 45, C = 70;
    const auto x = round_to(randn(B * R * C, 80), dt()), bias = round_to(randn(C, 81), dt());
    Tensor gx = upload(x, dt()), gb = upload(bias, dt());
    for (const bool with_bias : {false, true}) {
        std::vector<float> want(B * R * C);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t r = 0; r < R; ++r)
                for (int64_t c = 0; c < C; ++c)
                    want[(b * C + c) * R + r] = x[(b * R + r) * C + c] + (with_bias ? bias[c] : 0.0f);
        if (with_bias) want = round_to(want, dt());
        Tensor gy = upload(std::vector<float>(B * R * C, NAN), dt());
        cuda::transpose_batched(exec(), gy.raw(), gx.raw(), B, R, C, dt(), with_bias ? gb.raw() : nullptr);
        EXPECT_EQ(download(gy), want) << "bias " << with_bias;
    }
}

// --- activations -------------------------------------------------------------------------------------------
TEST_P(CudaOps, Activations) {
    const cpu::Activation acts[] = {cpu::Activation::SILU, cpu::Activation::GELU_TANH, cpu::Activation::GELU_ERF,
                                    cpu::Activation::QUICK_GELU};
    const int64_t n = 4099;
    const auto x = round_to(randn(n, 60, 3.0f), dt()), dy = round_to(randn(n, 61), dt());
    Tensor gx = upload(x, dt()), gdy = upload(dy, dt());
    for (cpu::Activation act : acts) {
        SCOPED_TRACE(::testing::Message() << "activation " << static_cast<int>(act));
        std::vector<float> y(n), dx(n);
        cpu::activation_fwd(y.data(), x.data(), n, act);
        cpu::activation_bwd(dx.data(), dy.data(), x.data(), n, act);
        Tensor gy = upload(std::vector<float>(n, NAN), dt()), gdx = upload(std::vector<float>(n, NAN), dt());
        cuda::activation_fwd(exec(), gy.raw(), gx.raw(), n, act, dt());
        cuda::activation_bwd(exec(), gdx.raw(), gdy.raw(), gx.raw(), n, act, dt());
        // expf/tanhf/erff on the GPU vs the C library: a few float32 ulps, hence 2x the f32 tolerance.
        EXPECT_TRUE(close(download(gy), y, dt(), 2.0)) << "fwd";
        EXPECT_TRUE(close(download(gdx), dx, dt(), 2.0)) << "bwd";
    }
}

TEST_P(CudaOps, ElementwiseAndStridedCopy) {
    const int64_t n = 1001;
    const auto a = round_to(randn(n, 70), dt()), b = round_to(randn(n, 71), dt());
    std::vector<float> sum(n), prod(n), sc(n);
    for (int64_t i = 0; i < n; ++i) {
        sum[i] = a[i] + b[i];
        prod[i] = a[i] * b[i];
        sc[i] = a[i] * -1.5f;
    }
    Tensor ga = upload(a, dt()), gb = upload(b, dt()), gy = upload(std::vector<float>(n, NAN), dt());
    cuda::binary(exec(), gy.raw(), ga.raw(), gb.raw(), n, cuda::Binary::ADD, dt());
    EXPECT_TRUE(close(download(gy), sum, dt()));
    cuda::binary(exec(), gy.raw(), ga.raw(), gb.raw(), n, cuda::Binary::MUL, dt());
    EXPECT_TRUE(close(download(gy), prod, dt()));
    cuda::scale(exec(), gy.raw(), ga.raw(), -1.5f, n, dt());
    EXPECT_TRUE(close(download(gy), sc, dt()));

    // A [7, 11, 13] tensor read through a permuted view into f32: exact (a copy and a widening conversion).
    const int64_t d0 = 7, d1 = 11, d2 = 13;
    const auto src = round_to(randn(d0 * d1 * d2, 72), dt());
    Tensor gsrc = upload(src, dt(), {d0, d1, d2});
    const Tensor view = gsrc.permute({2, 0, 1});  // [13, 7, 11]
    Tensor gdst = upload(std::vector<float>(d0 * d1 * d2, NAN), DType::F32, {d2, d0, d1});
    cuda::copy_strided(exec(), gdst.raw(), DType::F32, gdst.strides().data(), view.raw(), dt(), view.strides().data(),
                       view.shape().data(), 3);
    std::vector<float> ref(d0 * d1 * d2);
    for (int64_t i = 0; i < d2; ++i)
        for (int64_t j = 0; j < d0; ++j)
            for (int64_t k = 0; k < d1; ++k) ref[(i * d0 + j) * d1 + k] = src[(j * d1 + k) * d2 + i];
    EXPECT_EQ(download(gdst), ref);

    // Same-dtype copies the launcher collapses to rows: tokens [2, 7) of a [3, 9, 8] tensor into the middle of a
    // [3, 12, 8] one (a cat's step), and a broadcast row (stride 0), which is no 2-D copy. Exact.
    const auto big = round_to(randn(3 * 9 * 8, 73), dt());
    Tensor gbig = upload(big, dt(), {3, 9, 8});
    Tensor gcat = upload(std::vector<float>(3 * 12 * 8, NAN), dt(), {3, 12, 8});
    const Tensor from = gbig.slice(1, 2, 7), into = gcat.slice(1, 4, 9);  // [3, 5, 8] each
    cuda::copy_strided(exec(), into.raw(), dt(), into.strides().data(), from.raw(), dt(), from.strides().data(),
                       from.shape().data(), 3);
    const std::vector<float> got = download(gcat);
    for (int64_t b0 = 0; b0 < 3; ++b0)
        for (int64_t t = 0; t < 12; ++t)
            for (int64_t c = 0; c < 8; ++c) {
                const float v = got[(b0 * 12 + t) * 8 + c];
                if (t >= 4 && t < 9) {
                    EXPECT_EQ(v, big[(b0 * 9 + t - 2) * 8 + c]) << b0 << "," << t << "," << c;
                } else {
                    EXPECT_TRUE(std::isnan(v)) << "written outside the slice at " << b0 << "," << t << "," << c;
                }
            }
    const Tensor row = gbig.slice(0, 1, 2).view({9 * 8}).slice(0, 0, 8);  // [8]
    const int64_t bshape[2] = {5, 8}, bstrides[2] = {0, 1};
    Tensor grows = upload(std::vector<float>(5 * 8, NAN), dt(), {5, 8});
    cuda::copy_strided(exec(), grows.raw(), dt(), grows.strides().data(), row.raw(), dt(), bstrides, bshape, 2);
    const std::vector<float> rows = download(grows);
    for (int64_t r = 0; r < 5; ++r)
        for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(rows[r * 8 + c], big[9 * 8 + c]);
}

// --- attention -------------------------------------------------------------------------------------------
struct AttnCase {
    int64_t batch, heads, tq, tk, d;
    bool causal, bias, fused;  // fused: q, k, v interleaved in one [B, T, 3, H*D] buffer (row strides 3*H*D)
    bool shifted = false;      // q, k, v start one element past an aligned address (no 16-byte tile loads)
};
const AttnCase kAttnCases[] = {
    {2, 3, 77, 77, 64, false, false, false},  // SD3's head dim
    {1, 2, 19, 45, 16, true, false, false},   // causal with Tq != Tk (CLIP's mask is Tq == Tk)
    {2, 2, 33, 21, 8, false, true, false},    // T5-style additive bias
    {1, 4, 130, 130, 32, false, false, true},
    {2, 1, 200, 200, 64, true, false, true},  // several tiles of every kernel, fused QKV
    {1, 2, 70, 100, 64, false, true, false},  // head dim 64 with a bias and Tq != Tk (tensor-core tails)
    {1, 1, 45, 90, 64, true, false, false},
    {1, 2, 50, 66, 64, false, false, false, true},
};

TEST_P(CudaOps, Attention) {
    for (const AttnCase& c : kAttnCases) {
        SCOPED_TRACE(::testing::Message() << "B " << c.batch << " H " << c.heads << " Tq " << c.tq << " Tk " << c.tk
                                        << " D " << c.d << " causal " << c.causal << " bias " << c.bias << " fused "
                                        << c.fused);
        if (c.fused && c.tq != c.tk) continue;
        const int64_t HD = c.heads * c.d;
        const cpu::AttentionShape s{c.batch, c.heads, c.tq, c.tk, c.d, 1.0f / std::sqrt(float(c.d)), c.causal};
        const auto q = round_to(randn(c.batch * c.tq * HD, 80), dt());
        const auto k = round_to(randn(c.batch * c.tk * HD, 81), dt());
        const auto v = round_to(randn(c.batch * c.tk * HD, 82), dt());
        const auto dout = round_to(randn(c.batch * c.tq * HD, 83), dt());
        const auto bias = round_to(randn(c.heads * c.tq * c.tk, 84), dt());
        const float* bp = c.bias ? bias.data() : nullptr;
        std::vector<float> out(q.size()), lse(c.batch * c.heads * c.tq);
        cpu::attention_fwd(out.data(), lse.data(), q.data(), k.data(), v.data(), bp, s);
        // The backward of both sides starts from the same forward results: the CPU's, out rounded to dt.
        const auto out_r = round_to(out, dt());
        std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
        cpu::attention_bwd(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out_r.data(),
                           lse.data(), bp, s);

        // Device layout: separate dense buffers, or one interleaved buffer per tensor kind.
        const int64_t row = c.fused ? 3 * HD : HD;
        auto pack = [&](const std::vector<float>& a, const std::vector<float>& b2, const std::vector<float>& c2) {
            std::vector<float> f(c.batch * c.tq * 3 * HD);
            for (int64_t t = 0; t < c.batch * c.tq; ++t)
                for (int64_t e = 0; e < HD; ++e) {
                    f[t * 3 * HD + e] = a[t * HD + e];
                    f[t * 3 * HD + HD + e] = b2[t * HD + e];
                    f[t * 3 * HD + 2 * HD + e] = c2[t * HD + e];
                }
            return f;
        };
        auto unpack = [&](const std::vector<float>& f, int part) {
            std::vector<float> o(c.batch * c.tq * HD);
            for (int64_t t = 0; t < c.batch * c.tq; ++t)
                for (int64_t e = 0; e < HD; ++e) o[t * HD + e] = f[t * 3 * HD + part * HD + e];
            return o;
        };
        cuda::AttentionRows rows{row, row, row, row};
        Tensor gq, gk, gv, gdo, gout_in, gbias = upload(bias, dt());
        Tensor gqkv, gdoo, ggrad;
        const void *pq, *pk, *pv, *pdo, *pout_in;
        void *pout, *pdq, *pdk, *pdv;
        Tensor gout = upload(std::vector<float>(c.fused ? 3 * q.size() : q.size(), NAN), dt());
        Tensor glse = upload(std::vector<float>(lse.size(), NAN), DType::F32);
        if (c.fused) {
            gqkv = upload(pack(q, k, v), dt());
            gdoo = upload(pack(dout, out_r, out_r), dt());  // dout and the forward's out interleaved, same strides
            ggrad = upload(std::vector<float>(3 * q.size(), NAN), dt());
            const size_t es = dtype_size(dt());
            pq = gqkv.raw();
            pk = static_cast<const char*>(gqkv.raw()) + HD * es;
            pv = static_cast<const char*>(gqkv.raw()) + 2 * HD * es;
            pdo = gdoo.raw();
            pout_in = static_cast<const char*>(gdoo.raw()) + HD * es;
            pout = gout.raw();
            pdq = ggrad.raw();
            pdk = static_cast<char*>(ggrad.raw()) + HD * es;
            pdv = static_cast<char*>(ggrad.raw()) + 2 * HD * es;
        } else {
            rows = {};
            auto shifted = [&](const std::vector<float>& a) {
                std::vector<float> w(a.size() + 1, 0.0f);
                std::copy(a.begin(), a.end(), w.begin() + 1);
                return upload(w, dt());
            };
            gq = c.shifted ? shifted(q) : upload(q, dt());
            gk = c.shifted ? shifted(k) : upload(k, dt());
            gv = c.shifted ? shifted(v) : upload(v, dt());
            gdo = upload(dout, dt());
            gout_in = upload(out_r, dt());
            ggrad = upload(std::vector<float>(q.size() + 2 * k.size(), NAN), dt());
            const size_t es = dtype_size(dt());
            const size_t shift = c.shifted ? es : 0;
            pq = static_cast<const char*>(gq.raw()) + shift;
            pk = static_cast<const char*>(gk.raw()) + shift;
            pv = static_cast<const char*>(gv.raw()) + shift;
            pdo = gdo.raw();
            pout_in = gout_in.raw();
            pout = gout.raw();
            pdq = ggrad.raw();
            pdk = static_cast<char*>(ggrad.raw()) + q.size() * es;
            pdv = static_cast<char*>(ggrad.raw()) + (q.size() + k.size()) * es;
        }
        // The forward on CUDA cores, and on tensor cores where that path exists (head dim 64, 16-bit): there P is
        // rounded to dt before P·V (as FlashAttention does), a second rounding: twice the tolerance.
        for (bool tc : {false, true}) {
            cuda::Exec fx = exec();
            fx.tensor_core_attention = tc;
            fx.cudnn_attention = false;  // the own kernels here; cuDNN's: test_cuda_attention_cudnn.cpp
            if (tc && (dt() == DType::F32 || c.d != 64)) continue;
            SCOPED_TRACE(tc ? "tensor cores" : "CUDA cores");
            const size_t n_out = (c.fused ? 3 : 1) * q.size();
            Tensor poison = upload(std::vector<float>(n_out, NAN), dt());
            cuda::copy_strided(fx, gout.raw(), dt(), std::vector<int64_t>{1}.data(), poison.raw(), dt(),
                               std::vector<int64_t>{1}.data(), std::vector<int64_t>{static_cast<int64_t>(n_out)}.data(), 1);
            cuda::attention_fwd(fx, pout, glse.data<float>(), pq, pk, pv, c.bias ? gbias.raw() : nullptr, s, dt(), rows);
            const auto got_out = download(gout);
            EXPECT_TRUE(close(c.fused ? unpack(got_out, 0) : got_out, out, dt(), tc ? 2.0 : 1.0)) << "out";
            EXPECT_TRUE(close(download(glse), lse, DType::F32, tc ? 2.0 : 1.0)) << "lse";
        }

        Tensor clse = upload(lse, DType::F32);
        cuda::Exec bx = exec(cuda::attention_bwd_workspace(s, dt()));
        bx.cudnn_attention = false;
        cuda::attention_bwd(bx, pdq, pdk, pdv, pdo, pq, pk, pv, pout_in,
                            clse.data<float>(), c.bias ? gbias.raw() : nullptr, s, dt(), rows);
        const auto g = download(ggrad);
        std::vector<float> gdq, gdk, gdv;
        if (c.fused) {
            gdq = unpack(g, 0);
            gdk = unpack(g, 1);
            gdv = unpack(g, 2);
        } else {
            gdq.assign(g.begin(), g.begin() + q.size());
            gdk.assign(g.begin() + q.size(), g.begin() + q.size() + k.size());
            gdv.assign(g.begin() + q.size() + k.size(), g.end());
        }
        // Gradients sum Tk (dq) or Tq (dk, dv) terms of mixed sign: 2x the forward's tolerance.
        EXPECT_TRUE(close(gdq, dq, dt(), 2.0)) << "dq";
        EXPECT_TRUE(close(gdk, dk, dt(), 2.0)) << "dk";
        EXPECT_TRUE(close(gdv, dv, dt(), 2.0)) << "dv";
    }
}

// --- determinism: the same inputs give bit-identical gradients (no atomics anywhere) -------------------------
TEST_P(CudaOps, BackwardIsBitIdenticalAcrossRuns) {
    const int64_t R = 300, C = 257;
    const auto x = round_to(randn(R * C, 90), dt()), dy = round_to(randn(R * C, 91), dt());
    const auto w = round_to(randn(C, 92), dt());
    Tensor gx = upload(x, dt()), gdy = upload(dy, dt()), gw = upload(w, dt());
    std::vector<float> mean(R), rstd(R);
    Tensor gmean = upload(mean, DType::F32), grstd = upload(rstd, DType::F32);
    cuda::layer_norm_fwd(exec(), gx.raw(), gmean.data<float>(), grstd.data<float>(), gx.raw(), nullptr, nullptr, R, C,
                         1e-5f, dt());  // in place: only the statistics matter here
    std::vector<float> first;
    for (int run = 0; run < 2; ++run) {
        Tensor gdw = upload(std::vector<float>(C, 0.0f), DType::F32), gdb = upload(std::vector<float>(C, 0.0f), DType::F32);
        Tensor gdx = upload(std::vector<float>(R * C, 0.0f), dt());
        cuda::layer_norm_bwd(exec(cuda::layer_norm_bwd_workspace(R, C)), gdx.raw(), gdw.raw(), gdb.raw(), gdy.raw(),
                             gx.raw(), gw.raw(), gmean.data<float>(), grstd.data<float>(), R, C, dt(), DType::F32);
        Tensor glw = upload(std::vector<float>(C * C, 0.0f), DType::F32), glb = upload(std::vector<float>(C, 0.0f), DType::F32);
        cuda::linear_bwd(exec(cuda::linear_bwd_workspace(R, C)), nullptr, glw.raw(), glb.raw(), gdy.raw(), gx.raw(),
                         nullptr, R, C, C, dt(), DType::F32);
        std::vector<float> all = download(gdw);
        for (const Tensor& t : {gdb, gdx, glw, glb}) {
            const auto v = download(t);
            all.insert(all.end(), v.begin(), v.end());
        }
        if (run == 0)
            first = all;
        else
            EXPECT_TRUE(first == all) << "a rerun changed some gradient bits";
    }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CudaOps, ::testing::ValuesIn(kDTypes), dt_param_name);

}  // namespace
}  // namespace sd3::gputest
