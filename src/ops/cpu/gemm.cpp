// GEMM and nn.Linear on the CPU, through OpenBLAS (row-major CBLAS).
#include <cblas.h>

#include <cstring>

#include "ops/cpu/cpu_ops.h"

namespace sd3::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
                static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

void linear_fwd(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t K, int64_t N,
                float alpha) {
    if (b != nullptr) {
        for (int64_t i = 0; i < M; ++i) std::memcpy(y + i * N, b, static_cast<size_t>(N) * sizeof(float));
    }
    gemm(false, true, M, N, K, alpha, x, K, w, K, b != nullptr ? 1.0f : 0.0f, y, N);
}

void linear_bwd(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t M, int64_t K,
                int64_t N, float alpha) {
    if (dx != nullptr) gemm(false, false, M, K, N, alpha, dy, N, w, K, 0.0f, dx, K);
    if (dw != nullptr) gemm(true, false, N, K, M, alpha, dy, N, x, K, 1.0f, dw, K);
    if (db != nullptr) {
        for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) db[j] += alpha * dy[i * N + j];
    }
}

}  // namespace sd3::cpu
