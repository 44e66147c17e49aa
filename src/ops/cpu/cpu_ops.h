// The CPU specification of every numeric operation: plain loops over raw float32 pointers (GEMMs through
// OpenBLAS), each with an explicit backward. CUDA launchers in ops/cuda/ take the same arguments and are tested
// against these. Gradient convention (DESIGN.md "Numerics"): parameter gradients (dw, db) accumulate (+=);
// activation gradients (dx) overwrite (=) unless the function says otherwise.
#pragma once

#include <cstdint>

namespace sd3::cpu {

// C[M,N] = alpha * op(A) · op(B) + beta * C, row-major; op(X) = Xᵀ when trans_X. lda/ldb/ldc are row strides.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// y[M,N] = alpha · x[M,K] · w[N,K]ᵀ + b[N] (b may be null), PyTorch's nn.Linear at alpha 1.
void linear_fwd(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t K, int64_t N,
                float alpha = 1.0f);
// dx[M,K] = alpha·dy·w (overwrites; skipped when null); dw[N,K] += alpha·dyᵀ·x; db[N] += alpha·Σ_rows dy (each
// skipped when null).
void linear_bwd(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M, int64_t K,
                int64_t N, float alpha = 1.0f);

// LayerNorm over the last `cols` of each row, biased variance: y = (x - mean) * rstd * w + b.
// w and b may be null (no affine). mean and rstd [rows] are saved for the backward (may be null).
void layer_norm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t rows,
                    int64_t cols, float eps);
// dx overwrites; dw, db accumulate (skipped when null).
void layer_norm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, const float* mean,
                    const float* rstd, int64_t rows, int64_t cols);

// RMSNorm (T5LayerNorm, SD3.5 qk-norm): y = x * rsqrt(mean(x²) + eps) * w (w may be null). rstd saved (may be null).
void rms_norm_fwd(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t cols, float eps);
void rms_norm_bwd(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                  int64_t rows, int64_t cols);

// GroupNorm on [B, C, HW] with per-channel affine w, b [C].
void group_norm_fwd(float* y, const float* x, const float* w, const float* b, int64_t batch, int64_t channels,
                    int64_t spatial, int64_t groups, float eps);

// 2-D convolution, NCHW input [B, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] (may be null),
// output [B, Cout, Ho, Wo] with Ho = (H + 2*pad - kh) / stride + 1.
void conv2d_fwd(float* y, const float* x, const float* w, const float* b, int64_t batch, int64_t cin, int64_t h,
                int64_t wd, int64_t cout, int64_t kh, int64_t kw, int64_t stride, int64_t pad);

enum class Activation {
    SILU,        // x * sigmoid(x)
    GELU_TANH,   // PyTorch gelu(approximate="tanh"); also T5's gelu_new, identical in float32
    GELU_ERF,    // PyTorch gelu (exact)
    QUICK_GELU,  // x * sigmoid(1.702 x), CLIP-L
};
void activation_fwd(float* y, const float* x, int64_t n, Activation act);
// dx = dy * act'(x) (overwrites).
void activation_bwd(float* dx, const float* dy, const float* x, int64_t n, Activation act);

// Multi-head scaled-dot-product attention. q [B, Tq, H*D], k and v [B, Tk, H*D] (head h in columns
// [h*D, (h+1)*D)), out [B, Tq, H*D]. Optional additive bias [H, Tq, Tk] (T5's position bias) and causal mask
// (key j > query i excluded). lse [B, H, Tq] (may be null) saves the log-sum-exp of each score row for backward.
struct AttentionShape {
    int64_t batch, heads, q_len, kv_len, head_dim;
    float scale;
    bool causal = false;
};
void attention_fwd(float* out, float* lse, const float* q, const float* k, const float* v, const float* bias,
                   const AttentionShape& s);
// dq, dk, dv overwrite. Needs the forward's out and lse.
void attention_bwd(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                   const float* out, const float* lse, const float* bias, const AttentionShape& s);

}  // namespace sd3::cpu
