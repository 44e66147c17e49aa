// Timings of the CUDA launchers at SD3-Medium shapes (not a test: `sd3_gpu_bench`, run by hand or by
// tests/gpu/run_gpu.sh on the GPU machine). Median of repeated launches between stream synchronizations,
// after a warm-up; rates use the usual FLOP counts (2·M·N·K for a GEMM, 4·B·H·Tq·Tk·D for attention forward,
// 2.5x that for its backward) and bytes read + written once for the memory-bound ops.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"

using namespace sd3;

namespace {

const Device kGPU{DeviceType::CUDA, 0};

Tensor random_on_gpu(int64_t n, DType dt, uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(gen);
    return to_device(Tensor::from_vector({n}, v).to(dt), kGPU).value();
}

// Median seconds per call of f over `reps` timed runs of `inner` calls each.
double time_it(const std::function<void()>& f, int inner = 5, int reps = 5) {
    f();
    synchronize(kGPU);
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto a = std::chrono::steady_clock::now();
        for (int i = 0; i < inner; ++i) f();
        synchronize(kGPU);
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count() / inner);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

const char* name(DType dt) { return dt == DType::F32 ? "f32" : dt == DType::BF16 ? "bf16" : "f16"; }

}  // namespace

int main() {
    if (!cuda_available()) {
        std::printf("no CUDA device\n");
        return 0;
    }
    std::printf("%s\n", device_description(kGPU).c_str());
    cuda::Context& ctx = cuda::Context::get(0);

    // GEMMs of the MMDiT at 512², batch 4: tokens 4 * 1178, hidden 1536, MLP 6144.
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
        const int64_t M = 4 * 1178, K = 1536, N = 6144;
        Tensor x = random_on_gpu(M * K, dt, 1), w = random_on_gpu(N * K, dt, 2), b = random_on_gpu(N, dt, 3);
        Tensor y = random_on_gpu(M * N, dt, 4);
        const cuda::Exec ex = ctx.exec();
        const double s = time_it([&] { cuda::linear_fwd(ex, y.raw(), x.raw(), w.raw(), b.raw(), M, K, N, dt); });
        std::printf("linear_fwd %-4s M=%ld K=%ld N=%ld: %8.3f ms  %6.1f TFLOP/s\n", name(dt), (long)M, (long)K,
                    (long)N, s * 1e3, 2.0 * M * N * K / s / 1e12);
    }
    // A LoRA adapter's six GEMMs on a 1536-wide layer at 512², batch 4 (M = 4096 image tokens), as nn/linear.cpp
    // issues them: bf16 activations, float32 master gradients. Each is memory-bound: the rate is the bytes of the
    // wide operands (x, dy: read; y, dx: read and written) over the time.
    {
        const DType dt = DType::BF16;
        const int64_t M = 4096, D = 1536;
        Tensor x = random_on_gpu(M * D, dt, 30), y = random_on_gpu(M * D, dt, 31);
        for (const int64_t r : {4, 16, 64}) {
            Tensor A = random_on_gpu(r * D, dt, 32), B = random_on_gpu(D * r, dt, 33), h = random_on_gpu(M * r, dt, 34);
            Tensor dA = random_on_gpu(r * D, DType::F32, 35), dB = random_on_gpu(D * r, DType::F32, 36);
            const cuda::Exec ex = ctx.exec();
            const double wide = static_cast<double>(M * D) * 2;
            struct Case {
                const char* what;
                double bytes;
                std::function<void()> f;
            };
            const Case cases[] = {
                {"h = x·Aᵀ", wide, [&] { cuda::gemm(ex, false, true, M, r, D, 1.0f, x.raw(), D, A.raw(), D, 0.0f, h.raw(), r, dt, dt); }},
                {"y += s·h·Bᵀ", 2 * wide, [&] { cuda::gemm(ex, false, true, M, D, r, 0.5f, h.raw(), r, B.raw(), r, 1.0f, y.raw(), D, dt, dt); }},
                {"dh = s·dy·B", wide, [&] { cuda::gemm(ex, false, false, M, r, D, 0.5f, y.raw(), D, B.raw(), r, 0.0f, h.raw(), r, dt, dt); }},
                {"dB += s·dyᵀ·h", wide, [&] { cuda::gemm(ex, true, false, D, r, M, 0.5f, y.raw(), D, h.raw(), r, 1.0f, dB.raw(), r, dt, DType::F32); }},
                {"dA += dhᵀ·x", wide, [&] { cuda::gemm(ex, true, false, r, D, M, 1.0f, h.raw(), r, x.raw(), D, 1.0f, dA.raw(), D, dt, DType::F32); }},
                {"dx += dh·A", 2 * wide, [&] { cuda::gemm(ex, false, false, M, D, r, 1.0f, h.raw(), r, A.raw(), D, 1.0f, x.raw(), D, dt, dt); }},
            };
            for (const Case& c : cases) {
                const double t = time_it(c.f, 20, 5);
                std::printf("lora r=%-3ld %-14s M=%ld D=%ld: %7.1f us  %6.0f GB/s\n", (long)r, c.what, (long)M, (long)D,
                            t * 1e6, c.bytes / t / 1e9);
            }
        }
    }
    // Attention: training at 512² (B 4, T 1178) and 1024² (B 1, T 4250), generation at 1024² (B 2 for CFG);
    // 24 heads of 64. The own kernels (tensor-core and CUDA-core forward, CUDA-core backward) against cuDNN's fused
    // SDPA, its backward deterministic and with atomics.
    std::printf("attention backends: %s\n", cuda::cudnn_attention_info(ctx.exec()));
    for (DType dt : {DType::BF16}) {  // the own kernels compute in f32 whatever the storage: one dtype tells
        for (auto [B, T] : {std::pair<int64_t, int64_t>{4, 1178}, {1, 4250}, {2, 4250}}) {
            const int64_t H = 24, D = 64, n = B * T * H * D;
            const cuda::AttentionShape s{B, H, T, T, D, 0.125f, false};
            Tensor q = random_on_gpu(n, dt, 5), k = random_on_gpu(n, dt, 6), v = random_on_gpu(n, dt, 7);
            Tensor o = random_on_gpu(n, dt, 8), dout = random_on_gpu(n, dt, 9), dq = random_on_gpu(n, dt, 10);
            Tensor dk = random_on_gpu(n, dt, 11), dv = random_on_gpu(n, dt, 12);
            Tensor lse = random_on_gpu(B * H * T, DType::F32, 13);
            const cuda::Exec ex =
                ctx.exec(std::max(cuda::attention_bwd_workspace(s, dt), cuda::attention_fwd_workspace(s, dt)));
            cuda::Exec ex_own = ex;
            ex_own.cudnn_attention = false;
            cuda::Exec ex_cc = ex_own;
            ex_cc.tensor_core_attention = false;
            const double flops = 4.0 * B * H * T * T * D;
            auto fwd = [&](const cuda::Exec& e) {
                cuda::attention_fwd(e, o.raw(), lse.data<float>(), q.raw(), k.raw(), v.raw(), nullptr, s, dt);
            };
            auto bwd = [&](const cuda::Exec& e) {
                cuda::attention_bwd(e, dq.raw(), dk.raw(), dv.raw(), dout.raw(), q.raw(), k.raw(), v.raw(), o.raw(),
                                    lse.data<float>(), nullptr, s, dt);
            };
            // The own forward first: its lse is what the backwards read (cuDNN's forward writes the same).
            const double tf = time_it([&] { fwd(ex_own); }, 2, 3);
            const double tf_cc = time_it([&] { fwd(ex_cc); }, 1, 3);
            const double tb = time_it([&] { bwd(ex_own); }, 1, 3);
            std::printf("attention %-4s B=%ld T=%ld H=24 D=64, own: fwd tensor cores %7.2f ms (%5.1f TFLOP/s), CUDA "
                        "cores %7.2f ms (%5.1f); bwd (CUDA cores) %7.2f ms (%5.1f)\n",
                        name(dt), (long)B, (long)T, tf * 1e3, flops / tf / 1e12, tf_cc * 1e3, flops / tf_cc / 1e12,
                        tb * 1e3, 2.5 * flops / tb / 1e12);
            if (!cuda::cudnn_attention_available(ex)) continue;
            const auto calls = cuda::detail::cudnn_attention_stats(ex).calls;
            const double cf = time_it([&] { fwd(ex); }, 2, 3);  // the first call builds the graph: the warm-up
            const auto st_f = cuda::detail::cudnn_attention_stats(ex);
            const double cb = time_it([&] { bwd(ex); }, 2, 3);
            const auto st_b = cuda::detail::cudnn_attention_stats(ex);
            cuda::Exec ex_atomic = ex;
            ex_atomic.deterministic_attention = false;
            const double cb_atomic = time_it([&] { bwd(ex_atomic); }, 2, 3);
            const auto st_atomic = cuda::detail::cudnn_attention_stats(ex);
            std::printf("attention %-4s B=%ld T=%ld H=24 D=64, cuDNN: fwd %7.2f ms (%5.1f TFLOP/s, workspace %.1f MiB); "
                        "bwd deterministic %7.2f ms (%5.1f, workspace %.1f MiB per %ldx%ld chunk, scratch %.0f MiB); "
                        "bwd with atomics %7.2f ms (%5.1f, workspace %.1f MiB per %ldx%ld chunk); "
                        "fwd+bwd %.2f ms vs own %.2f ms (%.1fx)%s\n",
                        name(dt), (long)B, (long)T, cf * 1e3, flops / cf / 1e12, st_f.workspace / 1048576.0, cb * 1e3,
                        2.5 * flops / cb / 1e12, st_b.workspace / 1048576.0, (long)st_b.chunk_batch,
                        (long)st_b.chunk_heads, ex.scratch_bytes / 1048576.0, cb_atomic * 1e3,
                        2.5 * flops / cb_atomic / 1e12, st_atomic.workspace / 1048576.0, (long)st_atomic.chunk_batch,
                        (long)st_atomic.chunk_heads, (cf + cb) * 1e3, (tf + tb) * 1e3,
                        (tf + tb) / (cf + cb), st_b.calls > calls ? "" : " [cuDNN declined: own kernels timed]");
        }
    }
    // Memory-bound ops on [4*1178, 1536] bf16.
    {
        const DType dt = DType::BF16;
        const int64_t R = 4 * 1178, C = 1536;
        Tensor x = random_on_gpu(R * C, dt, 14), y = random_on_gpu(R * C, dt, 15), w = random_on_gpu(C, dt, 16);
        Tensor st = random_on_gpu(2 * R, DType::F32, 17);
        const cuda::Exec ex = ctx.exec(cuda::layer_norm_bwd_workspace(R, C));
        const double bytes = 2.0 * R * C * 2;
        const double tl = time_it([&] {
            cuda::layer_norm_fwd(ex, y.raw(), st.data<float>(), st.data<float>() + R, x.raw(), w.raw(), w.raw(), R, C,
                                 1e-6f, dt);
        });
        const double ta = time_it([&] { cuda::activation_fwd(ex, y.raw(), x.raw(), R * C, cuda::Activation::GELU_TANH, dt); });
        std::printf("layer_norm_fwd bf16 %ldx%ld: %.3f ms (%.0f GB/s)   gelu_tanh: %.3f ms (%.0f GB/s)\n", (long)R,
                    (long)C, tl * 1e3, bytes / tl / 1e9, ta * 1e3, bytes / ta / 1e9);
    }
    // A VAE decoder conv at 1024² output: 128 -> 128 channels, 3x3, 1024x1024, batch 1.
    {
        const DType dt = DType::BF16;
        const int64_t C = 128, H = 1024;
        Tensor x = random_on_gpu(C * H * H, dt, 18), w = random_on_gpu(C * C * 9, dt, 19), b = random_on_gpu(C, dt, 20);
        Tensor y = random_on_gpu(C * H * H, dt, 21);
        const cuda::Exec ex = ctx.exec(256u << 20);
        const double t = time_it([&] { cuda::conv2d_fwd(ex, y.raw(), x.raw(), w.raw(), b.raw(), 1, C, H, H, C, 3, 3, 1, 1, dt); },
                                 1, 3);
        std::printf("conv2d bf16 128->128 3x3 1024x1024: %.2f ms (%.1f TFLOP/s)\n", t * 1e3,
                    2.0 * C * C * 9 * H * H / t / 1e12);
    }
    return 0;
}
