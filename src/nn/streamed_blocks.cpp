// StreamedBlocks: packed host copies of non-resident blocks and the two device slots they take turns in.
#include "nn/streamed_blocks.h"

#include <algorithm>

#include "core/check.h"
#include "ops/device.h"

namespace sd3::nn {

size_t StreamedBlocks::resident_count(const std::vector<size_t>& block_bytes, size_t budget) {
    const size_t n = block_bytes.size();
    if (budget == SIZE_MAX) return n;
    for (size_t r = n; r > 0; --r) {
        size_t resident = 0, largest_streamed = 0;
        for (size_t i = 0; i < r; ++i) resident += block_bytes[i];
        for (size_t i = r; i < n; ++i) largest_streamed = std::max(largest_streamed, block_bytes[i]);
        if (resident + std::min<size_t>(n - r, 2) * largest_streamed <= budget) return r;
    }
    return 0;
}

StreamedBlocks::~StreamedBlocks() {
    // A prefetched copy nobody waited for may still be writing its slot: the device's queue waits for it, so the
    // slot's release (stream-ordered) comes after.
    for (Slot& s : slots_)
        if (s.ticket >= 0) wait_side_copy(placement_.device, s.ticket);
}

void StreamedBlocks::add(WeightPlacer& placer) {
    SD3_ASSERT(slots_.empty(), "StreamedBlocks::add after allocate_slots");
    const size_t bytes = placer.bytes(placement_.dtype);
    std::shared_ptr<Storage> host = allocate_pinned(std::max<size_t>(bytes, 1));
    placer.fill(host, placement_.dtype);
    host_.push_back(std::move(host));
    bytes_.push_back(bytes);
    slot_bytes_ = std::max(slot_bytes_, bytes);
}

Status StreamedBlocks::allocate_slots(const char* model_name) {
    if (!placement_.on_cpu()) synchronize(placement_.device);  // makes the device's context and its allocator
    const size_t n = std::min<size_t>(host_.size(), 2);
    for (size_t i = slots_.size(); i < n; ++i) {
        Slot s;
        s.storage = Storage::allocate(std::max<size_t>(slot_bytes_, 1), placement_.device);
        if (s.storage == nullptr) {
            const MemoryStats m = memory_stats(placement_.device);
            return make_error(ErrorCode::OUT_OF_MEMORY, "out of memory on ", placement_.device.str(),
                              " for the streamed blocks of the ", model_name, ": ", n, " slots of ",
                              slot_bytes_ >> 20, " MiB, ", m.free >> 20, " MiB free; lower --max-vram to leave "
                              "room for them, or use a smaller weight format (--base-dtype / --t5-dtype)");
        }
        slots_.push_back(std::move(s));
    }
    return {};
}

void StreamedBlocks::bring_in(size_t k) {
    Slot& s = slots_[k % slots_.size()];
    if (s.holds == static_cast<int64_t>(k)) return;
    // A prefetch left unused (its block was not bound next) still holds a ticket: spend it. The copy queue keeps
    // its order, so that copy lands before this one.
    if (s.ticket >= 0) wait_side_copy(placement_.device, s.ticket);
    const Shape shape{static_cast<int64_t>(bytes_[k])};
    s.ticket = side_copy(Tensor::view_of(s.storage, 0, shape, DType::U8), Tensor::view_of(host_[k], 0, shape, DType::U8));
    s.holds = static_cast<int64_t>(k);
}

void StreamedBlocks::bind(size_t k, WeightPlacer& placer, int64_t next) {
    SD3_ASSERT(k < host_.size() && !slots_.empty(), "StreamedBlocks::bind of block ", k, " of ", host_.size(),
               " (slots allocated: ", slots_.size(), ")");
    bring_in(k);
    Slot& s = slots_[k % slots_.size()];
    if (s.ticket >= 0) {
        wait_side_copy(placement_.device, s.ticket);
        s.ticket = -1;
    }
    placer.bind(s.storage, placement_.dtype);
    if (next >= 0 && next < static_cast<int64_t>(host_.size()) && next != static_cast<int64_t>(k) &&
        next % static_cast<int64_t>(slots_.size()) != static_cast<int64_t>(k % slots_.size()))
        bring_in(static_cast<size_t>(next));
}

}  // namespace sd3::nn
