// The frozen weights of the blocks that do not fit a device's budget (`--max-vram`), brought in for each use
// (DESIGN.md "Memory"). At load each block is packed once into pinned host memory in the layout its device copy
// has (float weights already in the compute dtype, quantized ones as stored), so bringing it in is one copy on the
// device's copy queue (ops/device.h side_copy). The blocks take turns in two device slots, block k in slot k % 2:
// while one block's kernels run, the copy of the next fills the other slot. On the CPU the slots are host memory
// and the copies plain memcpys: the same path, testable without a GPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "nn/placement.h"

namespace sd3::nn {

class StreamedBlocks {
  public:
    explicit StreamedBlocks(const Placement& placement) : placement_(placement) {}
    // How many leading blocks stay resident under a budget of `budget` bytes: the most whose bytes, plus the slots
    // the rest take turns in (at most two, each the size of the largest of the rest), fit. SIZE_MAX: all of them.
    static size_t resident_count(const std::vector<size_t>& block_bytes, size_t budget);
    ~StreamedBlocks();  // waits for the copies in flight before the slots go
    StreamedBlocks(const StreamedBlocks&) = delete;
    StreamedBlocks& operator=(const StreamedBlocks&) = delete;

    // The streamed blocks of a model: blocks [first, end) packed through `place` (which adds one block's frozen
    // tensors to a placer) and the slots allocated; null when there are none.
    template <typename Block, typename Place>
    static Result<std::shared_ptr<StreamedBlocks>> pack(std::vector<Block>& blocks, size_t first,
                                                        const Placement& placement, Place place,
                                                        const char* model_name) {
        if (first >= blocks.size()) return std::shared_ptr<StreamedBlocks>();
        auto streamed = std::make_shared<StreamedBlocks>(placement);
        for (size_t i = first; i < blocks.size(); ++i) {
            WeightPlacer placer;
            place(placer, blocks[i]);
            streamed->add(placer);
        }
        SD3_TRY(streamed->allocate_slots(model_name));
        return streamed;
    }

    // Packs the next block (numbered in the order added): the placer's tensors (CPU) are written into pinned host
    // memory in place()'s layout and rebound to views of it, so the memory they came from is let go.
    void add(WeightPlacer& placer);
    // The device slots (one per block, at most two, each the size of the largest block), after the last add().
    // OUT_OF_MEMORY names the model and what to lower.
    Status allocate_slots(const char* model_name);

    // Block k's weights in its slot: rebinds the placer's tensors (block k's, enumerated as for add()) to their
    // views there, bringing the block in unless the slot still holds it; the device's later work waits for that
    // copy. Then starts bringing in block `next` (when it is a block other than k), to overlap the work queued
    // next. The views are valid until block k + 2 or k - 2 is bound.
    void bind(size_t k, WeightPlacer& placer, int64_t next);

    size_t size() const { return host_.size(); }
    size_t slot_bytes() const { return slot_bytes_; }
    size_t device_bytes() const { return slot_bytes_ * slots_.size(); }

  private:
    struct Slot {
        std::shared_ptr<Storage> storage;
        int64_t holds = -1;  // the block whose bytes are (or are being copied) here
        int ticket = -1;     // that copy, until the device's work waits for it
    };
    void bring_in(size_t k);  // queues block k's copy into its slot unless the slot holds it already

    Placement placement_;
    std::vector<std::shared_ptr<Storage>> host_;  // per block, its packed bytes
    std::vector<size_t> bytes_;                   // per block, the packed size
    std::vector<Slot> slots_;
    size_t slot_bytes_ = 0;
};

}  // namespace sd3::nn
