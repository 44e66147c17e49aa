// Tensor-level CUDA ops (tensor_ops.h): validation, device-side contiguous copies and result allocation
// around the launchers. Shape rules are ops.cpp's, so a model behaves the same on either device.
#include "ops/cuda/tensor_ops.h"

#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <cstdio>

#include "core/check.h"
#include "ops/cuda/attention_cudnn.h"
#include "ops/cuda/context.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/tensor_ops_model.h"

namespace sd3::cuda::tensor_ops {

namespace {

bool is_cuda(const Tensor& t) { return t.defined() && t.device().type == DeviceType::CUDA; }

void require(const Tensor& t, const Tensor& like, const char* what) {
    SD3_ASSERT(t.defined(), what, " is undefined");
    SD3_ASSERT(is_cuda(t) && t.device() == like.device(), what, " must be on ", like.device().str(), ", got ",
               t.describe());
    SD3_ASSERT(t.dtype() == like.dtype(), what, " must be ", dtype_name(like.dtype()), " like the input, got ",
               t.describe());
    SD3_ASSERT(t.dtype() == DType::F32 || t.dtype() == DType::BF16 || t.dtype() == DType::F16, what,
               ": CUDA ops take f32, bf16 or f16, got ", t.describe());
}

const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.raw() : nullptr; }
Tensor contig_or_empty(const Tensor& t) { return t.defined() ? contiguous(t) : Tensor(); }

Shape with_last(const Shape& s, int64_t last) {
    Shape out = s;
    out.back() = last;
    return out;
}

Context& ctx_of(const Tensor& t) { return Context::get(t.device().index); }

void copy_into(const Tensor& dst, const Tensor& src) {
    SD3_ASSERT(dst.shape() == src.shape(), "copy: shape ", src.describe(), " into ", dst.describe());
    Context& ctx = ctx_of(dst);
    copy_strided(ctx.exec(), dst.raw(), dst.dtype(), dst.strides().data(), src.raw(), src.dtype(),
                 src.strides().data(), dst.shape().data(), dst.dim());
}

}  // namespace

int device_count() { return cuda::device_count(); }
int sm_version(int index) { return Context::get(index).sm(); }

std::string describe(int index) {
    Context& ctx = Context::get(index);
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s (sm_%d, %.1f GiB)", ctx.name().c_str(), ctx.sm(),
                  static_cast<double>(ctx.total_memory()) / (1u << 30));
    return buf;
}

void synchronize(int index) { Context::get(index).synchronize(); }
MemoryStats memory_stats(int index) { return Context::get(index).memory_stats(); }
void reset_peak_memory(int index) { Context::get(index).reset_peak_memory(); }
void release_workspace(int index) { Context::get(index).release_scratch(); }
void set_deterministic_attention(int index, bool on) { Context::get(index).set_deterministic_attention(on); }
void set_conv_copy_limit(int index, size_t bytes) { Context::get(index).set_conv_copy_limit(bytes); }
void capture_begin(int index) { Context::get(index).begin_capture(); }
void* capture_end(int index) { return Context::get(index).end_capture(); }
void graph_launch(int index, void* graph) { Context::get(index).launch_graph(static_cast<cudaGraphExec_t>(graph)); }
void graph_destroy(int index, void* graph) { Context::get(index).destroy_graph(static_cast<cudaGraphExec_t>(graph)); }

void profiler_capture(bool on) {
    const cudaError_t err = on ? cudaProfilerStart() : cudaProfilerStop();
    SD3_ASSERT(err == cudaSuccess, "cudaProfiler", on ? "Start" : "Stop", " failed: ", cudaGetErrorString(err));
}

namespace {

// An uninitialized contiguous tensor of t's shape and dtype on `device`; out of memory is an error that says what
// was asked and what was free.
Result<Tensor> allocate_like(const Tensor& t, Device device) {
    auto storage = Storage::allocate(t.nbytes(), device);
    if (storage == nullptr) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return make_error(ErrorCode::OUT_OF_MEMORY, "out of GPU memory on ", device.str(), ": asked for ",
                          t.nbytes() >> 20, " MiB (", t.describe(), "), ", free_b >> 20, " MiB free of ",
                          total_b >> 20, " MiB; lower the batch size or resolution, or use --max-vram");
    }
    return Tensor::view_of(std::move(storage), 0, t.shape(), t.dtype());
}

}  // namespace

Result<Tensor> to_device(const Tensor& t_in, Device device) {
    SD3_ASSERT(device.type == DeviceType::CUDA, "to_device: ", device.str());
    if (is_cuda(t_in)) {
        if (t_in.device() == device) return contiguous(t_in);
        // Between GPUs: through the host (rare; peer copies can come later).
        return to_device(to_host(t_in), device);
    }
    Context& ctx = Context::get(device.index);
    const Tensor t = t_in.contiguous();
    SD3_ASSIGN_OR_RETURN(Tensor d, allocate_like(t, device));
    if (t.nbytes() > 0) {
        const cudaError_t err = cudaMemcpyAsync(d.raw(), t.raw(), t.nbytes(), cudaMemcpyHostToDevice, ctx.stream());
        SD3_ASSERT(err == cudaSuccess, "host-to-device copy failed: ", cudaGetErrorString(err));
        ctx.synchronize();  // the host buffer may be freed as soon as we return
    }
    return d;
}

Result<Tensor> upload_async(const Tensor& t_in, Device device) {
    Context& ctx = Context::get(device.index);
    const Tensor t = t_in.contiguous();
    SD3_ASSIGN_OR_RETURN(Tensor d, allocate_like(t, device));
    ctx.upload_async(d.raw(), t.raw(), t.nbytes());
    return d;
}

void* pinned_alloc(size_t bytes) {
    void* p = nullptr;
    if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    return p;
}

void pinned_free(void* p) { cudaFreeHost(p); }

int side_copy(const Tensor& dst, const Tensor& src) {
    SD3_ASSERT(is_cuda(dst) && dst.is_contiguous() && src.device().is_cpu() && src.is_contiguous() &&
                   src.nbytes() == dst.nbytes(),
               "side_copy of ", src.describe(), " into ", dst.describe());
    return ctx_of(dst).side_copy(dst.raw(), src.raw(), dst.nbytes());
}

void wait_side_copy(int index, int ticket) { Context::get(index).wait_side_copy(ticket); }

void upload_async_into(const Tensor& dst, const Tensor& host) {
    SD3_ASSERT(is_cuda(dst), "upload_async_into ", dst.describe());
    ctx_of(dst).upload_async(dst.raw(), host.raw(), host.nbytes());
}

int start_download(const Tensor& t) {
    SD3_ASSERT(is_cuda(t) && t.is_contiguous(), "start_download of ", t.describe());
    return ctx_of(t).start_download(t.raw(), t.nbytes());
}

void finish_download(const Tensor& t, int handle, const Tensor& host) {
    SD3_ASSERT(host.device().is_cpu() && host.is_contiguous() && host.nbytes() == t.nbytes(), "finish_download into ",
               host.describe());
    ctx_of(t).finish_download(handle, host.raw(), host.nbytes());
}

Tensor to_host(const Tensor& t_in) {
    SD3_ASSERT(is_cuda(t_in), "to_host of ", t_in.describe());
    const Tensor t = contiguous(t_in);
    Context& ctx = ctx_of(t);
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    if (t.nbytes() > 0) {
        const cudaError_t err = cudaMemcpyAsync(h.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, ctx.stream());
        SD3_ASSERT(err == cudaSuccess, "device-to-host copy failed: ", cudaGetErrorString(err));
    }
    ctx.synchronize();
    return h;
}

void copy(const Tensor& dst, const Tensor& src_in) {
    SD3_ASSERT(is_cuda(dst), "cuda copy into ", dst.describe());
    SD3_ASSERT(dst.shape() == src_in.shape(), "copy: ", src_in.describe(), " into ", dst.describe());
    Context& ctx = ctx_of(dst);
    const bool src_on_host = src_in.device().is_cpu();
    const Tensor src = src_on_host ? src_in.contiguous() : src_in;
    if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
        const cudaError_t err = cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(),
                                                src_on_host ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice,
                                                ctx.stream());
        SD3_ASSERT(err == cudaSuccess, "copy to the device failed: ", cudaGetErrorString(err));
        if (src_on_host) ctx.synchronize();  // the host buffer may be freed as soon as we return
        return;
    }
    // Another dtype or layout: the source goes up as stored (an allocation failure throws OutOfMemoryError like
    // any other), the device converts.
    Tensor staged = src;
    if (src_on_host) {
        staged = Tensor::empty(src.shape(), src.dtype(), dst.device());
        copy(staged, src);
    }
    copy_into(dst, staged);
}

Tensor contiguous(const Tensor& t) {
    SD3_ASSERT(is_cuda(t), "cuda contiguous of ", t.describe());
    if (t.is_contiguous()) return t;
    Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
    copy_into(out, t);
    return out;
}

Tensor convert(const Tensor& t, DType dtype) {
    SD3_ASSERT(is_cuda(t), "cuda convert of ", t.describe());
    if (t.dtype() == dtype) return t;
    Tensor out = Tensor::empty(t.shape(), dtype, t.device());
    copy_into(out, t);
    return out;
}

namespace {
Tensor linear_with(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, Epilogue epi, Tensor* pre,
                   float alpha = 1.0f) {
    require(x_in, x_in, "linear input");
    require(w_in, x_in, "linear weight");
    const Tensor x = contiguous(x_in), w = contiguous(w_in), b = contig_or_empty(b_in);
    const int64_t K = x.size(-1), N = w.size(0);
    SD3_ASSERT(w.dim() == 2 && w.size(1) == K, "linear: input ", x.describe(), " vs weight ", w.describe());
    if (b.defined()) {
        require(b, x, "linear bias");
        SD3_ASSERT(b.numel() == N, "linear: bias ", b.describe(), " for ", N, " outputs");
    }
    Tensor y = Tensor::empty(with_last(x.shape(), N), x.dtype(), x.device());
    if (pre != nullptr) *pre = Tensor::empty(y.shape(), y.dtype(), y.device());
    linear_fwd(ctx_of(x).exec(), y.raw(), x.raw(), w.raw(), ptr_or_null(b), x.numel() / K, K, N, x.dtype(), epi,
               pre != nullptr ? pre->raw() : nullptr, alpha);
    return y;
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b, float alpha) {
    return linear_with(x, w, b, Epilogue::NONE, nullptr, alpha);
}
Tensor linear_gelu_tanh(const Tensor& x, const Tensor& w, const Tensor& b, Tensor* pre) {
    return linear_with(x, w, b, pre != nullptr ? Epilogue::GELU_AUX : Epilogue::GELU, pre);
}

Tensor layer_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, float eps) {
    require(x_in, x_in, "layer_norm input");
    if (w_in.defined()) require(w_in, x_in, "layer_norm weight");
    if (b_in.defined()) require(b_in, x_in, "layer_norm bias");
    const Tensor x = contiguous(x_in), w = contig_or_empty(w_in), b = contig_or_empty(b_in);
    const int64_t cols = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    layer_norm_fwd(ctx_of(x).exec(), y.raw(), nullptr, nullptr, x.raw(), ptr_or_null(w), ptr_or_null(b),
                   x.numel() / cols, cols, eps, x.dtype());
    return y;
}

Tensor rms_norm(const Tensor& x_in, const Tensor& w_in, float eps) {
    require(x_in, x_in, "rms_norm input");
    if (w_in.defined()) require(w_in, x_in, "rms_norm weight");
    const Tensor x = contiguous(x_in), w = contig_or_empty(w_in);
    const int64_t cols = x.size(-1);
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    rms_norm_fwd(ctx_of(x).exec(), y.raw(), nullptr, x.raw(), ptr_or_null(w), x.numel() / cols, cols, eps,
                 x.dtype());
    return y;
}

Tensor group_norm(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, int64_t groups, float eps) {
    require(x_in, x_in, "group_norm input");
    require(w_in, x_in, "group_norm weight");
    require(b_in, x_in, "group_norm bias");
    const Tensor x = contiguous(x_in), w = contiguous(w_in), b = contiguous(b_in);
    SD3_ASSERT(x.dim() >= 2 && x.size(1) % groups == 0, "group_norm: ", x.describe(), " with ", groups, " groups");
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    const int64_t spatial = x.numel() / (x.size(0) * x.size(1));
    group_norm_fwd(ctx_of(x).exec(group_norm_fwd_workspace(x.size(0), x.size(1), spatial, groups)), y.raw(), x.raw(),
                   w.raw(), b.raw(), x.size(0), x.size(1), spatial, groups, eps, x.dtype());
    return y;
}

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& b_in, int64_t stride, int64_t pad) {
    require(x_in, x_in, "conv2d input");
    require(w_in, x_in, "conv2d weight");
    if (b_in.defined()) require(b_in, x_in, "conv2d bias");
    const Tensor x = contiguous(x_in), w = contiguous(w_in), b = contig_or_empty(b_in);
    SD3_ASSERT(x.dim() == 4 && w.dim() == 4 && w.size(1) == x.size(1), "conv2d: input ", x.describe(), " weight ",
               w.describe());
    const int64_t ho = (x.size(2) + 2 * pad - w.size(2)) / stride + 1;
    const int64_t wo = (x.size(3) + 2 * pad - w.size(3)) / stride + 1;
    const Shape y_shape{x.size(0), w.size(0), ho, wo};
    Context& ctx = ctx_of(x);
    const ConvShape shape{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), stride, pad};
    // cuDNN on channels-last copies: x and w transposed in, the result transposed out with the bias added. The
    // copies cost memory: convolutions whose input and output together pass the context's limit (by default
    // 512 MiB: the 256-channel ones of a 1024² decode) keep im2col, whose scratch is capped; 1x1 convolutions
    // need no im2col at all.
    const bool pointwise = shape.kh == 1 && shape.kw == 1 && stride == 1 && pad == 0;
    const size_t io_bytes = x.nbytes() + static_cast<size_t>(shape_numel(y_shape)) * dtype_size(x.dtype());
    const int64_t ws = pointwise || io_bytes > ctx.conv_copy_limit()
                           ? -1
                           : detail::cudnn_conv2d_nhwc_workspace(ctx.exec(), shape, x.dtype());
    if (ws >= 0) {
        const int64_t n = shape.batch, taps = shape.kh * shape.kw;
        Tensor yt = Tensor::empty({n, ho * wo, shape.cout}, x.dtype(), x.device());
        {
            Tensor xt = Tensor::empty({n, shape.h * shape.w, shape.cin}, x.dtype(), x.device());
            Tensor wt = Tensor::empty({shape.cout, taps, shape.cin}, x.dtype(), x.device());
            transpose_batched(ctx.exec(), xt.raw(), x.raw(), n, shape.cin, shape.h * shape.w, x.dtype());
            transpose_batched(ctx.exec(), wt.raw(), w.raw(), shape.cout, shape.cin, taps, x.dtype());
            detail::cudnn_conv2d_nhwc(ctx.exec(static_cast<size_t>(ws)), yt.raw(), xt.raw(), wt.raw(), shape,
                                      x.dtype());
        }  // the input copies go (stream-ordered) before the output is allocated
        Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());
        transpose_batched(ctx.exec(), y.raw(), yt.raw(), n, ho * wo, shape.cout, x.dtype(), ptr_or_null(b));
        return y;
    }
    Tensor y = Tensor::empty(y_shape, x.dtype(), x.device());
    // Scratch for im2col: the whole column matrix of one image, capped at 256 MiB (then pixel chunks).
    const size_t full = static_cast<size_t>(w.size(1) * w.size(2) * w.size(3) * ho * wo) * dtype_size(x.dtype());
    const size_t least = conv2d_fwd_min_workspace(w.size(1), w.size(2), w.size(3), x.dtype());
    const size_t want = full < (256u << 20) ? full : (least > (256u << 20) ? least : (256u << 20));
    conv2d_fwd(ctx.exec(want), y.raw(), x.raw(), w.raw(), ptr_or_null(b), x.size(0), x.size(1), x.size(2),
               x.size(3), w.size(0), w.size(2), w.size(3), stride, pad, x.dtype());
    return y;
}

Tensor activation(const Tensor& x_in, cpu::Activation act) {
    require(x_in, x_in, "activation input");
    const Tensor x = contiguous(x_in);
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    activation_fwd(ctx_of(x).exec(), y.raw(), x.raw(), x.numel(), act, x.dtype());
    return y;
}

void activation_(Tensor& x, cpu::Activation act) {
    require(x, x, "activation input");
    activation_fwd(ctx_of(x).exec(), x.raw(), x.raw(), x.numel(), act, x.dtype());  // element-wise: aliasing is safe
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, int64_t heads, float scale_, bool causal,
                 const Tensor& bias_in) {
    require(q_in, q_in, "attention q");
    require(k_in, q_in, "attention k");
    require(v_in, q_in, "attention v");
    if (bias_in.defined()) require(bias_in, q_in, "attention bias");
    const Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in), bias = contig_or_empty(bias_in);
    SD3_ASSERT(q.dim() == 3 && k.dim() == 3 && v.shape() == k.shape() && q.size(0) == k.size(0) &&
                   q.size(2) == k.size(2) && q.size(2) % heads == 0,
               "attention: q ", q.describe(), " k ", k.describe(), " v ", v.describe(), " heads ", heads);
    AttentionShape s{q.size(0), heads, q.size(1), k.size(1), q.size(2) / heads, scale_, causal};
    if (bias.defined()) SD3_ASSERT(bias.numel() == heads * s.q_len * s.kv_len, "attention bias ", bias.describe());
    // Head dims without a flash kernel (the VAE's 512, 80, ...): chunked GEMM + softmax (tensor_ops_model.h).
    if (!attention_supported(s.head_dim)) return attention_chunked(q, k, v, heads, scale_, causal, bias, nullptr);
    Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
    // Exactly the shape's workspace, so whether cuDNN runs (and how it chunks) never depends on the scratch's history.
    const size_t ws = attention_fwd_workspace(s, q.dtype());
    Exec ex = ctx_of(q).exec(ws);
    ex.scratch_bytes = ws;
    attention_fwd(ex, out.raw(), nullptr, q.raw(), k.raw(), v.raw(), ptr_or_null(bias), s, q.dtype());
    return out;
}

namespace {
Tensor binary_op(const Tensor& a_in, const Tensor& b_in, Binary op, const char* name) {
    require(a_in, a_in, name);
    require(b_in, a_in, name);
    const Tensor a = contiguous(a_in), b = contiguous(b_in);
    SD3_ASSERT(a.shape() == b.shape(), name, ": ", a.describe(), " vs ", b.describe());
    Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
    binary(ctx_of(a).exec(), y.raw(), a.raw(), b.raw(), a.numel(), op, a.dtype());
    return y;
}
}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary_op(a, b, Binary::ADD, "add"); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_op(a, b, Binary::MUL, "mul"); }

Tensor scale(const Tensor& a_in, float s) {
    require(a_in, a_in, "scale");
    const Tensor a = contiguous(a_in);
    Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
    cuda::scale(ctx_of(a).exec(), y.raw(), a.raw(), s, a.numel(), a.dtype());
    return y;
}

Tensor cat(const std::vector<Tensor>& parts, int dim) {
    SD3_ASSERT(!parts.empty(), "cat of nothing");
    const int nd = parts[0].dim();
    if (dim < 0) dim += nd;
    Shape shape = parts[0].shape();
    shape[dim] = 0;
    for (const Tensor& p : parts) {
        require(p, parts[0], "cat part");
        SD3_ASSERT(p.dim() == nd, "cat: rank mismatch");
        shape[dim] += p.size(dim);
    }
    Tensor out = Tensor::empty(shape, parts[0].dtype(), parts[0].device());
    int64_t at = 0;
    for (const Tensor& p : parts) {
        copy_into(out.slice(dim, at, at + p.size(dim)), p);
        at += p.size(dim);
    }
    return out;
}

void guided_euler_step_(Tensor& latents, const Tensor& v_in, bool cfg, float guidance_scale, float dt) {
    require(v_in, latents, "denoising step velocity");
    const Tensor v = contiguous(v_in);
    guided_euler_step(ctx_of(latents).exec(), latents.data<float>(), v.data<float>(), latents.numel(), cfg,
                      guidance_scale, dt);
}

namespace {
bool on_device(const void* p) {
    if (p == nullptr) return false;
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}
}  // namespace

Tensor linear_quantized(const Tensor& x_in, const cpu::QuantWeightView& w, const Tensor& b_in) {
    require(x_in, x_in, "linear_quantized input");
    if (b_in.defined()) require(b_in, x_in, "linear_quantized bias");
    SD3_ASSERT(on_device(w.data) && (w.scale == nullptr || on_device(w.scale)),
               "linear_quantized: the ", cpu::quant_format_name(w.format),
               " weight must be in GPU memory for an input on ", x_in.device().str());
    const Tensor x = contiguous(x_in), b = contig_or_empty(b_in);
    const int64_t K = x.size(-1);
    SD3_ASSERT(w.cols == K, "linear_quantized: input ", x.describe(), " vs weight [", w.rows, ", ", w.cols, "]");
    if (b.defined()) SD3_ASSERT(b.numel() == w.rows, "linear_quantized: bias ", b.describe(), " for ", w.rows);
    Tensor y = Tensor::empty(with_last(x.shape(), w.rows), x.dtype(), x.device());
    linear_fwd_quantized(ctx_of(x).exec(linear_fwd_quantized_workspace(w, x.dtype())), y.raw(), x.raw(), w,
                         ptr_or_null(b), x.numel() / K, x.dtype());
    return y;
}

Tensor dequantize_weight(const cpu::QuantWeightView& w, DType dtype, Device device) {
    SD3_ASSERT(on_device(w.data) && (w.scale == nullptr || on_device(w.scale)), "dequantize_weight: the ",
               cpu::quant_format_name(w.format), " weight must be in GPU memory");
    Tensor out = Tensor::empty({w.rows, w.cols}, dtype, device);
    dequantize(Context::get(device.index).exec(), out.raw(), dtype, w);
    return out;
}

}  // namespace sd3::cuda::tensor_ops
