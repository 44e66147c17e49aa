// Device moves (ops/device.h): the CPU side here, the CUDA side in ops/cuda/tensor_ops.cpp when it is built.
#include "ops/device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/check.h"
#ifdef SD3_HAVE_CUDA
#include "ops/cuda/tensor_ops.h"
#endif

namespace sd3 {

namespace {
[[maybe_unused]] Status no_cuda() {
    return make_error(ErrorCode::UNSUPPORTED,
                      "this sd3tune was built without the CUDA backend; use --device cpu or rebuild with nvcc");
}
}  // namespace

bool cuda_available() {
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::device_count() > 0;
#else
    return false;
#endif
}

Result<Device> parse_device(std::string_view text) {
    if (text == "cpu") return kCPU;
    int index = 0;
    if (text.rfind("cuda:", 0) == 0) {
        const std::string num(text.substr(5));
        char* end = nullptr;
        const long v = std::strtol(num.c_str(), &end, 10);
        if (num.empty() || *end != '\0' || v < 0)
            return make_error(ErrorCode::INVALID_ARGUMENT, "device '", text, "': expected cpu, cuda or cuda:N");
        index = static_cast<int>(v);
    } else if (text != "cuda") {
        return make_error(ErrorCode::INVALID_ARGUMENT, "device '", text, "': expected cpu, cuda or cuda:N");
    }
#ifdef SD3_HAVE_CUDA
    const int n = cuda::tensor_ops::device_count();
    if (index >= n)
        return make_error(ErrorCode::NOT_FOUND, "device ", text, ": this machine has ", n,
                          " CUDA device(s); use --device cpu or a smaller index");
    return Device{DeviceType::CUDA, index};
#else
    return no_cuda();
#endif
}

std::string device_description(Device device) {
    if (device.is_cpu()) return "cpu";
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::describe(device.index);
#else
    return device.str() + " (not built)";
#endif
}

void copy_into(const Tensor& dst, const Tensor& src) {
    SD3_ASSERT(dst.shape() == src.shape(), "copy_into: ", src.describe(), " into ", dst.describe());
    if (dst.device().is_cpu()) {
        Tensor d = dst;
        d.copy_from(to_host(src));
        return;
    }
#ifdef SD3_HAVE_CUDA
    cuda::tensor_ops::copy(dst, src);
#else
    SD3_ASSERT(false, "a CUDA tensor in a build without CUDA");
#endif
}

std::shared_ptr<Storage> allocate_pinned(size_t bytes) {
#ifdef SD3_HAVE_CUDA
    if (cuda::tensor_ops::device_count() > 0) {
        if (void* p = cuda::tensor_ops::pinned_alloc(std::max<size_t>(bytes, 1)); p != nullptr)
            return std::make_shared<Storage>(p, bytes, kCPU, [](void* q) { cuda::tensor_ops::pinned_free(q); });
    }
#endif
    return Storage::allocate(bytes, kCPU);
}

int side_copy(const Tensor& dst, const Tensor& src) {
    SD3_ASSERT(src.device().is_cpu() && src.is_contiguous() && dst.is_contiguous() && src.nbytes() == dst.nbytes(),
               "side_copy of ", src.describe(), " into ", dst.describe());
    if (dst.device().is_cpu()) {
        std::memcpy(dst.raw(), src.raw(), src.nbytes());
        return -1;
    }
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::side_copy(dst, src);
#else
    SD3_ASSERT(false, "a CUDA tensor in a build without CUDA");
    return -1;
#endif
}

void wait_side_copy(Device device, int ticket) {
    if (device.is_cpu() || ticket < 0) return;
#ifdef SD3_HAVE_CUDA
    cuda::tensor_ops::wait_side_copy(device.index, ticket);
#endif
}

Tensor host_f32(const Tensor& t) {
    if (t.device().is_cpu()) return t.dtype() == DType::F32 ? t.contiguous() : t.to(DType::F32);
    return to_host(convert(t, DType::F32));
}

MemoryStats memory_stats(Device device) {
    if (device.is_cpu()) return {};
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::memory_stats(device.index);
#else
    return {};
#endif
}

void reset_peak_memory(Device device) {
#ifdef SD3_HAVE_CUDA
    if (!device.is_cpu()) cuda::tensor_ops::reset_peak_memory(device.index);
#else
    (void)device;
#endif
}

void release_workspace(Device device) {
#ifdef SD3_HAVE_CUDA
    if (!device.is_cpu()) cuda::tensor_ops::release_workspace(device.index);
#else
    (void)device;
#endif
}

void set_deterministic_attention(Device device, bool on) {
#ifdef SD3_HAVE_CUDA
    if (!device.is_cpu()) cuda::tensor_ops::set_deterministic_attention(device.index, on);
#else
    (void)device, (void)on;
#endif
}

void set_conv_copy_limit(Device device, size_t bytes) {
#ifdef SD3_HAVE_CUDA
    if (!device.is_cpu()) cuda::tensor_ops::set_conv_copy_limit(device.index, bytes);
#else
    (void)device, (void)bytes;
#endif
}

DeviceGraph::~DeviceGraph() {
#ifdef SD3_HAVE_CUDA
    if (graph_ != nullptr) cuda::tensor_ops::graph_destroy(device_.index, graph_);
#endif
}

Status DeviceGraph::run(const std::function<Status()>& body) {
    const int call = calls_++;
#ifdef SD3_HAVE_CUDA
    if (!device_.is_cpu() && !record_failed_) {
        if (graph_ != nullptr) {
            cuda::tensor_ops::graph_launch(device_.index, graph_);
            return {};
        }
        if (call == 1) {
            cuda::tensor_ops::capture_begin(device_.index);
            Status st;
            try {
                st = body();
            } catch (...) {
                cuda::tensor_ops::graph_destroy(device_.index, cuda::tensor_ops::capture_end(device_.index));
                throw;
            }
            graph_ = cuda::tensor_ops::capture_end(device_.index);
            if (!st.ok()) {
                cuda::tensor_ops::graph_destroy(device_.index, graph_);
                graph_ = nullptr;
                return st;
            }
            if (graph_ != nullptr) {
                cuda::tensor_ops::graph_launch(device_.index, graph_);
                return {};
            }
            record_failed_ = true;  // nothing recorded ran: run it as it is
        }
    }
#else
    (void)call;
#endif
    return body();
}

void profiler_capture(bool on) {
#ifdef SD3_HAVE_CUDA
    cuda::tensor_ops::profiler_capture(on);
#else
    (void)on;
#endif
}

Result<Tensor> to_device(const Tensor& t, Device device) {
    SD3_ASSERT(t.defined(), "to_device of an undefined tensor");
    if (t.device() == device && t.is_contiguous()) return t;
    if (device.is_cpu()) return to_host(t);
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::to_device(t, device);
#else
    return no_cuda();
#endif
}

Result<Tensor> upload_async(const Tensor& t, Device device) {
    SD3_ASSERT(t.defined() && t.device().is_cpu(), "upload_async takes a CPU tensor");
    if (device.is_cpu()) return t;
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::upload_async(t, device);
#else
    return no_cuda();
#endif
}

void upload_async_into(const Tensor& dst, const Tensor& host) {
    SD3_ASSERT(host.device().is_cpu() && host.is_contiguous() && dst.is_contiguous() && dst.dtype() == host.dtype() &&
                   dst.shape() == host.shape(),
               "upload_async_into of ", host.describe(), " into ", dst.describe());
    if (dst.device().is_cpu()) {
        std::memcpy(dst.raw(), host.raw(), host.nbytes());
        return;
    }
#ifdef SD3_HAVE_CUDA
    cuda::tensor_ops::upload_async_into(dst, host);
#endif
}

PendingDownload download_async(const Tensor& t) {
    SD3_ASSERT(t.defined(), "download_async of an undefined tensor");
    PendingDownload d;
    d.source_ = t;
#ifdef SD3_HAVE_CUDA
    if (!t.device().is_cpu()) {
        d.source_ = cuda::tensor_ops::contiguous(t);
        d.handle_ = cuda::tensor_ops::start_download(d.source_);
    }
#endif
    return d;
}

Tensor PendingDownload::wait() {
    SD3_ASSERT(source_.defined(), "PendingDownload::wait without a download");
    Tensor out = source_;
#ifdef SD3_HAVE_CUDA
    if (handle_ >= 0) {
        out = Tensor::empty(source_.shape(), source_.dtype());
        cuda::tensor_ops::finish_download(source_, handle_, out);
        handle_ = -1;
    }
#endif
    source_ = Tensor();
    return out;
}

Tensor to_host(const Tensor& t) {
    SD3_ASSERT(t.defined(), "to_host of an undefined tensor");
    if (t.device().is_cpu()) return t;
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::to_host(t);
#else
    SD3_ASSERT(false, "a CUDA tensor in a build without CUDA");
    return {};
#endif
}

Tensor convert(const Tensor& t, DType dtype) {
    if (t.dtype() == dtype) return t;
    if (t.device().is_cpu()) return t.to(dtype);
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::convert(t, dtype);
#else
    SD3_ASSERT(false, "a CUDA tensor in a build without CUDA");
    return {};
#endif
}

void synchronize(Device device) {
#ifdef SD3_HAVE_CUDA
    if (!device.is_cpu()) cuda::tensor_ops::synchronize(device.index);
#endif
}

DType half_dtype(Device device) {
    if (device.is_cpu()) return DType::F32;
    const char* force = std::getenv("SD3_FORCE_FP16");
    if (force != nullptr && std::string(force) == "1") return DType::F16;
#ifdef SD3_HAVE_CUDA
    return cuda::tensor_ops::sm_version(device.index) >= 80 ? DType::BF16 : DType::F16;
#else
    return DType::F16;
#endif
}

}  // namespace sd3
