// cuDNN's fused flash attention (SDPA) behind attention_fwd / attention_bwd, and its convolutions behind
// conv2d_fwd: plain functions, so the heavy cudnn-frontend headers stay inside attention_cudnn.cpp. Without cuDNN at build time (SD3_HAVE_CUDNN unset)
// or at run time (libcudnn.so.9 not loadable) every function here declines and the own kernels run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_ops.h"

namespace sd3::cuda::detail {

// Per device: the cuDNN handle (made on first use, on the device's stream) and the built graphs. Null where
// cuDNN cannot serve (not built in, or sm < 80). Never freed: it lives as long as its Context, i.e. the process.
CudnnState* cudnn_state_create(int device, int sm, cudaStream_t stream);

// Runs the forward (backward) through cuDNN and returns true, or returns false without touching anything when
// cuDNN does not apply (Exec flag off, SD3_ATTENTION=own, dtype, sm, head dim, alignment, bias layout, graph not
// supported, too little scratch for even one head). `rows` are resolved (non-zero).
bool cudnn_attention_fwd(const Exec& ex, void* out, float* lse, const void* q, const void* k, const void* v,
                         const void* bias, const AttentionShape& s, DType dt, AttentionRows rows);
bool cudnn_attention_bwd(const Exec& ex, void* dq, void* dk, void* dv, const void* dout, const void* q,
                         const void* k, const void* v, const void* out, const float* lse, const void* bias,
                         const AttentionShape& s, DType dt, AttentionRows rows);

// Convolutions through cuDNN on channels-last operands: x [batch, h, w, cin], w [cout, kh, kw, cin],
// y [batch, ho, wo, cout], no bias. The workspace its graph needs, or -1 where cuDNN does not serve this one (dtype
// other than bf16/f16, sm < 80, no cuDNN, no engine within 256 MiB of workspace): then the im2col path runs.
int64_t cudnn_conv2d_nhwc_workspace(const Exec& ex, const ConvShape& c, DType dt);
// Runs it: the workspace above must be served, the scratch at least that, the operands 16-byte aligned.
void cudnn_conv2d_nhwc(const Exec& ex, void* y, const void* x, const void* w, const ConvShape& c, DType dt);

// What cuDNN did on the Exec's device (tests and sd3_gpu_bench): attention calls it served, the last call's graph
// workspace and chunk (batch elements, heads per graph execution), convolutions it served, and why the last
// declined graph was.
struct CudnnAttentionStats {
    int64_t calls = 0, workspace = 0, chunk_batch = 0, chunk_heads = 0, conv_calls = 0;
    std::string declined;
};
CudnnAttentionStats cudnn_attention_stats(const Exec& ex);

// Scratch worth reserving for cuDNN's workspace at this shape (0 where cuDNN cannot apply): an estimate of
// the backward's workspace (with the deterministic algorithm's dP) or the forward's statistics, capped
// (cudnn_workspace_cap()).
size_t cudnn_attention_workspace(bool backward, bool deterministic, const AttentionShape& s, DType dt);
// 512 MiB, or SD3_CUDNN_WORKSPACE_MB.
size_t cudnn_workspace_cap();

}  // namespace sd3::cuda::detail
