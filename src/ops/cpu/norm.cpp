// LayerNorm, RMSNorm and GroupNorm on the CPU; statistics accumulate in double so the spec is tighter than
// any float32 kernel it checks.
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace sd3::cpu {

void layer_norm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t rows,
                    int64_t cols, float eps) {
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        double m = 0;
        for (int64_t c = 0; c < cols; ++c) m += xr[c];
        m /= static_cast<double>(cols);
        double v = 0;
        for (int64_t c = 0; c < cols; ++c) v += (xr[c] - m) * (xr[c] - m);
        v /= static_cast<double>(cols);
        const double rs = 1.0 / std::sqrt(v + eps);
        float* yr = y + r * cols;
        for (int64_t c = 0; c < cols; ++c) {
            float n = static_cast<float>((xr[c] - m) * rs);
            if (w != nullptr) n *= w[c];
            if (b != nullptr) n += b[c];
            yr[c] = n;
        }
        if (mean != nullptr) mean[r] = static_cast<float>(m);
        if (rstd != nullptr) rstd[r] = static_cast<float>(rs);
    }
}

void layer_norm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, const float* mean,
                    const float* rstd, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        const float* gr = dy + r * cols;
        const double m = mean[r], rs = rstd[r];
        double sum_g = 0, sum_gx = 0;
        for (int64_t c = 0; c < cols; ++c) {
            const double xhat = (xr[c] - m) * rs;
            const double g = w != nullptr ? gr[c] * w[c] : gr[c];
            sum_g += g;
            sum_gx += g * xhat;
            if (dw != nullptr) dw[c] += static_cast<float>(gr[c] * xhat);
            if (db != nullptr) db[c] += gr[c];
        }
        const double mg = sum_g / cols, mgx = sum_gx / cols;
        if (dx == nullptr) continue;
        for (int64_t c = 0; c < cols; ++c) {
            const double xhat = (xr[c] - m) * rs;
            const double g = w != nullptr ? gr[c] * w[c] : gr[c];
            dx[r * cols + c] = static_cast<float>(rs * (g - mg - xhat * mgx));
        }
    }
}

void rms_norm_fwd(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t cols, float eps) {
#pragma omp parallel for
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        double ss = 0;
        for (int64_t c = 0; c < cols; ++c) ss += static_cast<double>(xr[c]) * xr[c];
        // T5LayerNorm: variance in fp32, then x * rsqrt(var + eps), then * weight.
        const float rs = 1.0f / std::sqrt(static_cast<float>(ss / cols) + eps);
        for (int64_t c = 0; c < cols; ++c) {
            const float n = xr[c] * rs;
            y[r * cols + c] = w != nullptr ? w[c] * n : n;
        }
        if (rstd != nullptr) rstd[r] = rs;
    }
}

void rms_norm_bwd(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                  int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        const float* gr = dy + r * cols;
        const double rs = rstd[r];
        double dot = 0;
        for (int64_t c = 0; c < cols; ++c) {
            const double g = w != nullptr ? gr[c] * w[c] : gr[c];
            dot += g * xr[c];
            if (dw != nullptr) dw[c] += static_cast<float>(gr[c] * xr[c] * rs);
        }
        if (dx == nullptr) continue;
        const double k = dot * rs * rs * rs / cols;
        for (int64_t c = 0; c < cols; ++c) {
            const double g = w != nullptr ? gr[c] * w[c] : gr[c];
            dx[r * cols + c] = static_cast<float>(rs * g - xr[c] * k);
        }
    }
}

void group_norm_fwd(float* y, const float* x, const float* w, const float* b, int64_t batch, int64_t channels,
                    int64_t spatial, int64_t groups, float eps) {
    const int64_t cpg = channels / groups;
    const int64_t n = cpg * spatial;
#pragma omp parallel for collapse(2)
    for (int64_t bi = 0; bi < batch; ++bi) {
        for (int64_t g = 0; g < groups; ++g) {
            const float* xg = x + (bi * channels + g * cpg) * spatial;
            float* yg = y + (bi * channels + g * cpg) * spatial;
            double m = 0;
            for (int64_t i = 0; i < n; ++i) m += xg[i];
            m /= static_cast<double>(n);
            double v = 0;
            for (int64_t i = 0; i < n; ++i) v += (xg[i] - m) * (xg[i] - m);
            v /= static_cast<double>(n);
            const double rs = 1.0 / std::sqrt(v + eps);
            for (int64_t c = 0; c < cpg; ++c) {
                const int64_t ch = g * cpg + c;
                for (int64_t s = 0; s < spatial; ++s) {
                    const int64_t i = c * spatial + s;
                    yg[i] = static_cast<float>((xg[i] - m) * rs) * w[ch] + b[ch];
                }
            }
        }
    }
}

}  // namespace sd3::cpu
