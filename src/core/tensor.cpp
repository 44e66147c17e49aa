// Tensor storage, views and CPU copies.
#include "core/tensor.h"

#include <cstdlib>
#include <sstream>

#include "core/check.h"

namespace sd3 {

namespace {
DeviceAllocator g_allocators[2] = {};

// Calls f(src_offset, dst_index) for every element of a strided tensor in row-major order.
template <typename F>
void for_each_offset(const Shape& shape, const std::vector<int64_t>& strides, F&& f) {
    const int nd = static_cast<int>(shape.size());
    const int64_t n = shape_numel(shape);
    if (n == 0) return;
    std::vector<int64_t> idx(nd, 0);
    int64_t off = 0;
    for (int64_t i = 0; i < n; ++i) {
        f(off, i);
        for (int d = nd - 1; d >= 0; --d) {
            if (++idx[d] < shape[d]) {
                off += strides[d];
                break;
            }
            off -= strides[d] * (shape[d] - 1);
            idx[d] = 0;
        }
    }
}
}  // namespace

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

std::string shape_str(const Shape& shape) {
    std::ostringstream os;
    os << "[";
    for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
    os << "]";
    return os.str();
}

int64_t shape_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

std::vector<int64_t> contiguous_strides(const Shape& shape) {
    std::vector<int64_t> strides(shape.size());
    int64_t s = 1;
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
        strides[d] = s;
        s *= shape[d];
    }
    return strides;
}

void register_device_allocator(DeviceType type, DeviceAllocator allocator) {
    g_allocators[static_cast<int>(type)] = allocator;
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
    const size_t alloc_bytes = bytes == 0 ? 1 : bytes;
    if (device.is_cpu()) {
        // 256-byte alignment, as cudaMalloc gives, so planned offsets stay aligned on every device.
        void* p = std::aligned_alloc(256, (alloc_bytes + 255) / 256 * 256);
        SD3_ASSERT(p != nullptr, "host allocation of ", bytes, " bytes failed");
        return std::make_shared<Storage>(p, bytes, device, [](void* q) { std::free(q); });
    }
    const DeviceAllocator& a = g_allocators[static_cast<int>(device.type)];
    SD3_ASSERT(a.alloc != nullptr, "no allocator registered for ", device.str());
    void* p = a.alloc(alloc_bytes, device.index);
    if (p == nullptr) return nullptr;
    const int index = device.index;
    auto free_fn = a.free;
    return std::make_shared<Storage>(p, bytes, device, [free_fn, index](void* q) { free_fn(q, index); });
}

OutOfMemoryError::OutOfMemoryError(const std::string& device, size_t asked, size_t free, size_t total,
                                   const std::string& what)
    : std::runtime_error("out of memory on " + device + ": " + what + " needs " + std::to_string(asked >> 20) +
                         " MiB, " + std::to_string(free >> 20) + " MiB of " + std::to_string(total >> 20) +
                         " MiB are free") {}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
    for (int64_t s : shape) SD3_ASSERT(s >= 0, "negative dimension in ", shape_str(shape));
    auto storage = Storage::allocate(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
    if (storage == nullptr) {
        const DeviceAllocator& a = g_allocators[static_cast<int>(device.type)];
        const MemoryStats m = a.stats != nullptr ? a.stats(device.index) : MemoryStats{};
        throw OutOfMemoryError(device.str(), static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), m.free,
                               m.total, "a " + std::string(dtype_name(dtype)) + shape_str(shape) + " tensor");
    }
    return view_of(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
    Tensor t = empty(shape, dtype);
    std::memset(t.raw(), 0, t.nbytes());
    return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
    Tensor t = empty(shape, dtype);
    t.fill(value);
    return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& values) {
    SD3_ASSERT(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ", values.size(),
               " values for shape ", shape_str(shape));
    Tensor t = empty(shape, DType::F32);
    std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
    return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keepalive) {
    auto storage = std::make_shared<Storage>(data, static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device,
                                             [keepalive](void*) {});
    return view_of(std::move(storage), 0, shape, dtype);
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape, DType dtype) {
    Tensor t;
    t.storage_ = std::move(storage);
    t.offset_bytes_ = offset_bytes;
    t.dtype_ = dtype;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    SD3_ASSERT(offset_bytes + t.nbytes() <= t.storage_->bytes() || t.numel() == 0, "view past the end of its storage");
    return t;
}

bool Tensor::is_contiguous() const {
    // Row-major without gaps; a dimension of size 1 is never stepped over, so its stride does not matter (a
    // token range of a batch of one is contiguous).
    int64_t expected = 1;
    for (int d = dim() - 1; d >= 0; --d) {
        if (shape_[d] == 1) continue;
        if (strides_[d] != expected) return numel() == 0;
        expected *= shape_[d];
    }
    return true;
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
    d = wrap_dim(d);
    SD3_ASSERT(d >= 0 && d < dim() && 0 <= start && start <= end && end <= shape_[d], "slice [", start, ", ", end,
               ") of dim ", d, " of ", describe());
    Tensor t = *this;
    t.offset_bytes_ += static_cast<size_t>(start * strides_[d]) * dtype_size(dtype_);
    t.shape_[d] = end - start;
    return t;
}

Tensor Tensor::select(int d, int64_t index) const {
    d = wrap_dim(d);
    Tensor t = slice(d, index, index + 1);
    t.shape_.erase(t.shape_.begin() + d);
    t.strides_.erase(t.strides_.begin() + d);
    return t;
}

Tensor Tensor::permute(const std::vector<int>& order) const {
    SD3_ASSERT(static_cast<int>(order.size()) == dim(), "permute needs ", dim(), " dimensions");
    Tensor t = *this;
    for (int i = 0; i < dim(); ++i) {
        t.shape_[i] = shape_[order[i]];
        t.strides_[i] = strides_[order[i]];
    }
    return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
    std::vector<int> order(dim());
    for (int i = 0; i < dim(); ++i) order[i] = i;
    std::swap(order[wrap_dim(d0)], order[wrap_dim(d1)]);
    return permute(order);
}

Tensor Tensor::unsqueeze(int d) const {
    if (d < 0) d += dim() + 1;
    Tensor t = *this;
    const int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
    t.shape_.insert(t.shape_.begin() + d, 1);
    t.strides_.insert(t.strides_.begin() + d, stride);
    return t;
}

Tensor Tensor::view(const Shape& shape) const {
    SD3_ASSERT(is_contiguous(), "view of a non-contiguous tensor ", describe());
    Shape s = shape;
    int64_t known = 1;
    int infer = -1;
    for (int i = 0; i < static_cast<int>(s.size()); ++i) {
        if (s[i] == -1) {
            SD3_ASSERT(infer < 0, "view: two -1 dimensions");
            infer = i;
        } else {
            known *= s[i];
        }
    }
    if (infer >= 0) s[infer] = known == 0 ? 0 : numel() / known;
    SD3_ASSERT(shape_numel(s) == numel(), "view ", shape_str(shape), " of ", describe());
    Tensor t = *this;
    t.shape_ = s;
    t.strides_ = contiguous_strides(s);
    return t;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
    SD3_ASSERT(device().is_cpu(), "clone of a device tensor goes through the backend");
    Tensor t = empty(shape_, dtype_);
    t.copy_from(*this);
    return t;
}

Tensor Tensor::to(DType dtype) const {
    if (dtype == dtype_) return *this;
    Tensor t = empty(shape_, dtype);
    t.copy_from(*this);
    return t;
}

void Tensor::copy_from(const Tensor& src) {
    SD3_ASSERT(device().is_cpu() && src.device().is_cpu(), "copy_from is for CPU tensors");
    SD3_ASSERT(src.shape_ == shape_, "copy_from: shape ", shape_str(src.shape_), " into ", shape_str(shape_));
    if (is_contiguous() && src.is_contiguous()) {
        convert_elements(src.raw(), src.dtype_, raw(), dtype_, numel());
        return;
    }
    // Gather src into contiguous order, then scatter into our strides.
    Tensor packed = empty(shape_, src.dtype_);
    const size_t es = dtype_size(src.dtype_);
    const char* s = static_cast<const char*>(src.raw());
    char* p = static_cast<char*>(packed.raw());
    for_each_offset(shape_, src.strides_, [&](int64_t off, int64_t i) { std::memcpy(p + i * es, s + off * es, es); });
    if (is_contiguous()) {
        convert_elements(packed.raw(), src.dtype_, raw(), dtype_, numel());
        return;
    }
    Tensor converted = packed.to(dtype_);
    const size_t ed = dtype_size(dtype_);
    char* d = static_cast<char*>(raw());
    const char* c = static_cast<const char*>(converted.raw());
    for_each_offset(shape_, strides_, [&](int64_t off, int64_t i) { std::memcpy(d + off * ed, c + i * ed, ed); });
}

void Tensor::fill(double value) {
    SD3_ASSERT(device().is_cpu(), "fill is for CPU tensors");
    Tensor one = empty({1}, dtype_);
    store_from_double(one.raw(), dtype_, 0, value);
    const size_t es = dtype_size(dtype_);
    char* d = static_cast<char*>(raw());
    for_each_offset(shape_, strides_, [&](int64_t off, int64_t) { std::memcpy(d + off * es, one.raw(), es); });
}

double Tensor::item_at(const std::vector<int64_t>& index) const {
    SD3_ASSERT(static_cast<int>(index.size()) == dim(), "item_at needs ", dim(), " indices");
    int64_t off = 0;
    for (int i = 0; i < dim(); ++i) {
        SD3_ASSERT(index[i] >= 0 && index[i] < shape_[i], "index out of range");
        off += index[i] * strides_[i];
    }
    return load_as_double(raw(), dtype_, off);
}

std::vector<float> Tensor::to_float_vector() const {
    Tensor f = contiguous().to(DType::F32);
    const float* p = f.data<float>();
    return std::vector<float>(p, p + f.numel());
}

std::string Tensor::describe() const {
    return str_cat(dtype_name(dtype_), shape_str(shape_), " ", device().str());
}

}  // namespace sd3
