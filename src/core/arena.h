// Arena: planned memory (DESIGN.md "Memory"). A plan lists every buffer a phase needs (name, shape, dtype) before
// anything is allocated; the arena then takes ONE allocation of the plan's size on a device and hands out
// tensors as views into it, so a training step allocates nothing. `describe()` prints the plan at start-up.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace sd3 {

class MemoryPlan {
  public:
    static constexpr size_t kAlignment = 256;  // covers vector loads and cuBLASLt's pointer alignment rules

    // Reserves a buffer; returns its index for Arena::tensor().
    size_t add(const std::string& name, const Shape& shape, DType dtype);
    size_t total_bytes() const { return total_; }
    size_t size() const { return entries_.size(); }
    // "activations: 12 buffers, 1.2 GiB (largest: blocks.0.attn 256 MiB, ...)"
    std::string describe(const std::string& title, int largest = 5) const;

    struct Entry {
        std::string name;
        Shape shape;
        DType dtype;
        size_t offset;
        size_t bytes;
    };
    const std::vector<Entry>& entries() const { return entries_; }

  private:
    std::vector<Entry> entries_;
    size_t total_ = 0;
};

class Arena {
  public:
    // One allocation of plan.total_bytes() on `device`; OUT_OF_MEMORY (saying how much was asked) on failure.
    static Result<Arena> allocate(const MemoryPlan& plan, Device device);

    // The view for buffer `index` of the plan.
    Tensor tensor(size_t index) const;
    Tensor tensor(const std::string& name) const;
    size_t bytes() const { return storage_ ? storage_->bytes() : 0; }

  private:
    MemoryPlan plan_;
    std::shared_ptr<Storage> storage_;
};

std::string format_bytes(double bytes);  // "1.5 GiB"

}  // namespace sd3
