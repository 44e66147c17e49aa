// Tensor: a typed, strided view into shared storage on a device (DESIGN.md "Numerics": PyTorch's dimension order).
// Views (slice, select, permute, reshape of contiguous data) share storage and copy nothing; the storage lives
// as long as any view of it. Strides are in elements. Shapes are written [B, C, H, W] / [B, T, C] as in PyTorch.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace sd3 {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
    DeviceType type = DeviceType::CPU;
    int index = 0;
    bool is_cpu() const { return type == DeviceType::CPU; }
    bool operator==(const Device&) const = default;
    std::string str() const;
};
inline constexpr Device kCPU{};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "[2, 16, 8, 8]"
int64_t shape_numel(const Shape& shape);

// Owns (or borrows) one block of device memory. A borrowed block keeps its owner alive through `keepalive`.
class Storage {
  public:
    using Deleter = std::function<void(void*)>;
    Storage(void* data, size_t bytes, Device device, Deleter deleter)
        : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}
    ~Storage() {
        if (deleter_) deleter_(data_);
    }
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;

    void* data() const { return data_; }
    size_t bytes() const { return bytes_; }
    Device device() const { return device_; }

    static std::shared_ptr<Storage> allocate(size_t bytes, Device device);

  private:
    void* data_;
    size_t bytes_;
    Device device_;
    Deleter deleter_;
};

// Bytes of a device's memory pool (ops/device.h memory_stats): in use now, the most in use since the last reset,
// reserved by the pool, and free/total as the driver reports them.
struct MemoryStats {
    size_t in_use = 0, peak = 0, reserved = 0, free = 0, total = 0;
    // What new tensors can still get: the driver's free memory plus what the pool holds unused.
    size_t available() const { return free + (reserved - in_use); }
};

// Device allocators other than the CPU's are registered by their backend (ops/cuda) at start-up.
struct DeviceAllocator {
    void* (*alloc)(size_t bytes, int device_index);  // returns nullptr when out of memory
    void (*free)(void* ptr, int device_index);
    MemoryStats (*stats)(int device_index);
};
void register_device_allocator(DeviceType type, DeviceAllocator allocator);

// Thrown when a device allocation fails (a GPU out of memory): unwinds whatever was being built, and the command
// line turns it into a message saying what was asked, what was free and which options lower the need.
class OutOfMemoryError : public std::runtime_error {
  public:
    OutOfMemoryError(const std::string& device, size_t asked, size_t free, size_t total, const std::string& what);
};

class Tensor {
  public:
    Tensor() = default;

    static Tensor empty(const Shape& shape, DType dtype, Device device = kCPU);
    static Tensor zeros(const Shape& shape, DType dtype = DType::F32);  // CPU
    static Tensor full(const Shape& shape, double value, DType dtype = DType::F32);  // CPU
    // CPU f32 tensor holding `values` (size must equal the shape's element count).
    static Tensor from_vector(const Shape& shape, const std::vector<float>& values);
    // A view over memory owned elsewhere; `keepalive` (may be null) is held as long as the view lives.
    static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device,
                         std::shared_ptr<void> keepalive = nullptr);
    // A view into `storage` at `offset_bytes`, contiguous.
    static Tensor view_of(std::shared_ptr<Storage> storage, size_t offset_bytes, const Shape& shape, DType dtype);

    bool defined() const { return storage_ != nullptr; }
    DType dtype() const { return dtype_; }
    Device device() const { return storage_ ? storage_->device() : kCPU; }
    const Shape& shape() const { return shape_; }
    const std::vector<int64_t>& strides() const { return strides_; }
    int dim() const { return static_cast<int>(shape_.size()); }
    int64_t size(int d) const { return shape_[wrap_dim(d)]; }
    int64_t stride(int d) const { return strides_[wrap_dim(d)]; }
    int64_t numel() const { return shape_numel(shape_); }
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
    bool is_contiguous() const;
    const std::shared_ptr<Storage>& storage() const { return storage_; }

    void* raw() const { return static_cast<char*>(storage_->data()) + offset_bytes_; }
    template <typename T>
    T* data() const {
        return static_cast<T*>(raw());
    }

    // --- views (no copy) ---
    Tensor slice(int d, int64_t start, int64_t end) const;  // [start, end) along d
    Tensor select(int d, int64_t index) const;              // removes dimension d
    Tensor permute(const std::vector<int>& order) const;
    Tensor transpose(int d0, int d1) const;
    Tensor unsqueeze(int d) const;
    // Same elements, new shape; requires contiguous data. One dimension may be -1.
    Tensor view(const Shape& shape) const;

    // --- copies ---
    Tensor contiguous() const;     // itself when already contiguous
    Tensor clone() const;          // always a fresh contiguous copy
    Tensor to(DType dtype) const;  // CPU: converts (rounding as dtype.h); itself when the dtype matches
    Tensor reshape(const Shape& shape) const { return contiguous().view(shape); }
    // Copies `src` (same shape, any strides and dtype) into this tensor's elements. CPU only.
    void copy_from(const Tensor& src);
    void fill(double value);

    // Element access for tests and small CPU code (any dtype, converted to double).
    double item_at(const std::vector<int64_t>& index) const;
    std::vector<float> to_float_vector() const;

    std::string describe() const;  // "bf16[2, 16, 8, 8] cpu"

  private:
    int wrap_dim(int d) const { return d < 0 ? d + dim() : d; }

    std::shared_ptr<Storage> storage_;
    size_t offset_bytes_ = 0;
    DType dtype_ = DType::F32;
    Shape shape_;
    std::vector<int64_t> strides_;
};

std::vector<int64_t> contiguous_strides(const Shape& shape);

}  // namespace sd3
