// CUDA launchers mirroring ops/cpu/cpu_ops.h one for one (FlashInfer's shape, research/aesthetics.md §4):
// raw device pointers, sizes, a stream and a caller-given workspace; they never allocate and use no globals.
// Storage dtype `dt` is F32, BF16 or F16 for every tensor argument unless a comment says otherwise; math,
// norms, softmax and reductions run in float32. Saved statistics (mean, rstd, lse) are always float32.
// Reductions over rows (dw, db) are two-stage and ordered: bit-identical across runs (no atomics).
// This header pulls in no CUDA header, so host code can include it.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/quant_ops.h"

// The same typedefs as cuda_runtime_api.h / cublasLt.h, so this header needs neither.
typedef struct CUstream_st* cudaStream_t;
typedef struct cublasLtContext* cublasLtHandle_t;

namespace sd3::cuda {

namespace detail {
struct CudnnState;  // cuDNN's handle and graphs (attention, convolution) of one device (attention_cudnn.h)
}

using cpu::Activation;
using cpu::AttentionShape;

// Everything a launcher may use besides its operands. `scratch` is the launcher's workspace (each launcher
// with a *_workspace() function needs that many bytes of it); `blas_workspace` belongs to cuBLASLt alone.
struct Exec {
    cudaStream_t stream = nullptr;
    cublasLtHandle_t blas = nullptr;
    void* blas_workspace = nullptr;
    size_t blas_workspace_bytes = 0;
    void* scratch = nullptr;
    size_t scratch_bytes = 0;
    int sm = 0;  // the device's compute capability (10 * major + minor); picks kernels that need sm_80+
    // Attention forward at head dim 64 in bf16/f16 on sm_80+ on tensor cores (mma.sync); off: the f32
    // CUDA-core kernel everywhere (tests run both).
    bool tensor_core_attention = true;
    // Attention forward and backward through cuDNN's fused SDPA where it applies (bf16/f16, sm_80+, head dims
    // that are multiples of 8 up to 128, 16-byte aligned operands); off, or SD3_ATTENTION=own in the
    // environment, or no cuDNN (`dnn` null, or libcudnn.so.9 missing at run time): the own kernels.
    bool cudnn_attention = true;
    // cuDNN's attention backward: the deterministic algorithm (bit-identical reruns; it writes dP to the workspace
    // and forms dQ in a pass of its own) or, off, the one that sums dQ with atomics (rounding order varies).
    bool deterministic_attention = true;
    detail::CudnnState* dnn = nullptr;  // the device's (Context's)
};

// --- GEMM (cuBLASLt; a plain tiled kernel where cuBLASLt offers no algorithm) --------------------------------
// What the epilogue does with v = alpha * op(A)·op(B) + beta * C (+ bias), in float32 before C's one rounding
// (GELU is the tanh approximation): GELU stores GELU(v); GELU_AUX stores GELU(v) and v itself in `aux` (the
// pre-activation a backward needs); DGELU stores v * GELU'(aux) (the backward through a GELU whose pre-activation
// is aux; no bias). aux has C's dtype and layout (rows ldc apart).
enum class Epilogue { NONE, GELU, GELU_AUX, DGELU };

// C[M,N] = epilogue(alpha * op(A)·op(B) + beta * C (+ bias[N] per column)), row-major, strides lda/ldb/ldc in
// elements. A and B have dtype `ab`; C, bias and aux have dtype `c` (F32 accumulators beside BF16/F16 operands are
// allowed). F32 operands use true fp32 (TF32 off), so results match the CPU to about 1e-6 relative.
void gemm(const Exec& ex, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const void* A,
          int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, DType ab, DType c,
          const void* bias = nullptr, Epilogue epi = Epilogue::NONE, void* aux = nullptr);

// y[M,N] = epi(alpha·x[M,K]·w[N,K]ᵀ + b[N]) (b may be null): NONE, GELU or GELU_AUX (pre[M,N] gets the
// pre-activation). The fused GELU sees the float32 pre-activation, where the separate ops would round it to dt
// first.
void linear_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t M, int64_t K, int64_t N,
                DType dt, Epilogue epi = Epilogue::NONE, void* pre = nullptr, float alpha = 1.0f);
// dpre[M,K] = (dy[M,N]·w[N,K]) * GELU'(pre[M,K]): the input gradient of a linear layer whose input was GELU(pre),
// carried through that GELU in the GEMM's epilogue.
void linear_bwd_dgelu(const Exec& ex, void* dpre, const void* dy, const void* w, const void* pre, int64_t M,
                      int64_t K, int64_t N, DType dt);
// dx[M,K] = alpha·dy·w (overwrites, dtype dt); dw[N,K] += alpha·dyᵀ·x and db[N] += Σ_rows dy in dtype `grad_dt`
// (F32 for master gradients, or dt). Each output is skipped when null; db only with alpha 1.
size_t linear_bwd_workspace(int64_t M, int64_t N);
void linear_bwd(const Exec& ex, void* dx, void* dw, void* db, const void* dy, const void* x, const void* w, int64_t M,
                int64_t K, int64_t N, DType dt, DType grad_dt, float alpha = 1.0f);

// --- frozen weights stored quantized (DESIGN.md "Numerics"; formats and spec: ops/cpu/quant_ops.h) --------
// The view's data and scale point at device memory. Dequantized layer by layer for cuBLASLt.
// dst [w.rows, w.cols] in dtype dt: the CPU spec's dequantize_rows, then one rounding to dt.
void dequantize(const Exec& ex, void* dst, DType dt, const cpu::QuantWeightView& w);
// y[M, w.rows] = x[M, w.cols] · dequant(w)ᵀ + b: dequantizes into the scratch (rows*cols elements of dt), then
// linear_fwd (cpu::quant_linear_fwd's result, to the dtype's rounding). A weight stored in dt itself needs no
// scratch: the GEMM reads it in place.
size_t linear_fwd_quantized_workspace(const cpu::QuantWeightView& w, DType dt);
void linear_fwd_quantized(const Exec& ex, void* y, const void* x, const cpu::QuantWeightView& w, const void* b,
                          int64_t M, DType dt);

// --- norms ---------------------------------------------------------------------------------------------------
// w, b have dtype dt; mean, rstd float32 (may be null). Parameter gradients dw, db accumulate in `grad_dt`.
void layer_norm_fwd(const Exec& ex, void* y, float* mean, float* rstd, const void* x, const void* w, const void* b,
                    int64_t rows, int64_t cols, float eps, DType dt);
size_t layer_norm_bwd_workspace(int64_t rows, int64_t cols);
// dx_add (dtype dt, dx's shape; may be null) is added to dx in the same pass: a residual branch's gradient.
void layer_norm_bwd(const Exec& ex, void* dx, void* dw, void* db, const void* dy, const void* x, const void* w,
                    const float* mean, const float* rstd, int64_t rows, int64_t cols, DType dt, DType grad_dt,
                    const void* dx_add = nullptr);
void rms_norm_fwd(const Exec& ex, void* y, float* rstd, const void* x, const void* w, int64_t rows, int64_t cols,
                  float eps, DType dt);
size_t rms_norm_bwd_workspace(int64_t rows, int64_t cols);
void rms_norm_bwd(const Exec& ex, void* dx, void* dw, const void* dy, const void* x, const void* w, const float* rstd,
                  int64_t rows, int64_t cols, DType dt, DType grad_dt);
// GroupNorm over [batch, channels, spatial]; its scratch holds per-chunk partial sums.
size_t group_norm_fwd_workspace(int64_t batch, int64_t channels, int64_t spatial, int64_t groups);
void group_norm_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t batch,
                    int64_t channels, int64_t spatial, int64_t groups, float eps, DType dt);

// --- convolution (cuDNN, else im2col into the scratch in pixel chunks, then GEMM) ----------------------------
struct ConvShape {
    int64_t batch, cin, h, w, cout, kh, kw, stride, pad;
    auto operator<=>(const ConvShape&) const = default;
};
// Any scratch of at least conv2d_fwd_min_workspace() works; more scratch means fewer, larger GEMMs (and lets cuDNN
// run engines with bigger workspaces).
size_t conv2d_fwd_min_workspace(int64_t cin, int64_t kh, int64_t kw, DType dt);
void conv2d_fwd(const Exec& ex, void* y, const void* x, const void* w, const void* b, int64_t batch, int64_t cin,
                int64_t h, int64_t wd, int64_t cout, int64_t kh, int64_t kw, int64_t stride, int64_t pad, DType dt);

// --- element-wise --------------------------------------------------------------------------------------------
// out[b, c, r] = in[b, r, c] (+ bias[c] when given), a tiled transpose of each of `batch` [rows, cols] matrices:
// NCHW <-> channels-last around the cuDNN convolutions.
void transpose_batched(const Exec& ex, void* out, const void* in, int64_t batch, int64_t rows, int64_t cols, DType dt,
                       const void* col_bias = nullptr);
// The sampler's step in place: x[i] += dt * v[i], v guided from [uncond n | cond n] first when cfg
// (ops/cpu/sampling_ops.h, bit for bit).
void guided_euler_step(const Exec& ex, float* x, const float* v, int64_t n, bool cfg, float guidance_scale, float dt);
void activation_fwd(const Exec& ex, void* y, const void* x, int64_t n, Activation act, DType dt);
void activation_bwd(const Exec& ex, void* dx, const void* dy, const void* x, int64_t n, Activation act, DType dt);
enum class Binary { ADD, MUL };
void binary(const Exec& ex, void* y, const void* a, const void* b, int64_t n, Binary op, DType dt);
void scale(const Exec& ex, void* y, const void* x, float s, int64_t n, DType dt);
// Copies a strided tensor (up to 8 dimensions, strides in elements) into another, converting dtype (any float
// dtype of dtype.h except F64 on either side).
constexpr int kMaxDims = 8;
void copy_strided(const Exec& ex, void* dst, DType dst_dt, const int64_t* dst_strides, const void* src, DType src_dt,
                  const int64_t* src_strides, const int64_t* shape, int ndim);

// --- attention (flash: online softmax, the [Tq, Tk] matrix never exists) ------------------------------------
// Head dims 8, 16, 32 and 64. In bf16/f16 on sm_80+ both directions run through cuDNN's fused SDPA where it is
// present (Exec::cudnn_attention; its backward deterministic unless Exec::deterministic_attention is off);
// otherwise the own kernels, always deterministic: the forward at head dim 64 in bf16/f16 on sm_80+ on tensor
// cores (P is rounded to the storage dtype before P·V, as FlashAttention does), the rest on CUDA cores in f32.
// lse is the natural log-sum-exp of each query's scaled (+bias) scores, cuDNN's "Stats" convention too, so either
// backward takes either forward's lse.
// Row strides (elements between consecutive tokens) let q, k, v live interleaved
// in one fused QKV buffer; gradients use the strides of their inputs (dq: q_row, dk: k_row, dv: v_row,
// dout: o_row). Zero means dense (heads * head_dim). bias [H, Tq, Tk] has dtype dt; lse [B, H, Tq] float32.
struct AttentionRows {
    int64_t q_row = 0, k_row = 0, v_row = 0, o_row = 0;
};
bool attention_supported(int64_t head_dim);
void attention_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                   const void* bias, const AttentionShape& s, DType dt, AttentionRows rows = {});
// Scratch bytes attention_fwd / attention_bwd want in `Exec::scratch`: the own kernels' (the backward's one float
// per query row) or, where cuDNN may run (16-bit dt), an estimate of its workspace capped at 512 MiB
// (SD3_CUDNN_WORKSPACE_MB overrides; the backward's `deterministic` as the Exec's that will run it). With less,
// cuDNN runs over chunks of batch and heads, or the own kernels do.
size_t attention_fwd_workspace(const AttentionShape& s, DType dt = DType::BF16);
size_t attention_bwd_workspace(const AttentionShape& s, DType dt = DType::BF16, bool deterministic = true);
void attention_bwd(const Exec& ex, void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                   const void* v, const void* out, const float* lse, const void* bias, const AttentionShape& s,
                   DType dt, AttentionRows rows = {});
// Whether cuDNN's attention can run on this Exec's device (loads libcudnn.so.9 and makes the handle on first
// call), and in words which cuDNN serves or why none does.
bool cudnn_attention_available(const Exec& ex);
const char* cudnn_attention_info(const Exec& ex);

}  // namespace sd3::cuda
