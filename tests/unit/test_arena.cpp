// MemoryPlan/Arena: aligned, non-overlapping views into one allocation.
#include <gtest/gtest.h>

#include "core/arena.h"

using namespace sd3;

TEST(Arena, PlanAlignsAndSums) {
    MemoryPlan plan;
    const size_t a = plan.add("a", {3}, DType::F32);       // 12 bytes at 0
    const size_t b = plan.add("b", {2, 5}, DType::BF16);   // 20 bytes at 256
    EXPECT_EQ(plan.entries()[a].offset, 0u);
    EXPECT_EQ(plan.entries()[b].offset, MemoryPlan::kAlignment);
    EXPECT_EQ(plan.total_bytes(), MemoryPlan::kAlignment + 20);
    EXPECT_NE(plan.describe("test").find("2 buffers"), std::string::npos);
}

TEST(Arena, ViewsShareOneAllocationWithoutOverlap) {
    MemoryPlan plan;
    plan.add("x", {4, 4}, DType::F32);
    plan.add("y", {100}, DType::F32);
    auto arena = Arena::allocate(plan, kCPU);
    ASSERT_TRUE(arena.ok());
    Tensor x = arena->tensor("x"), y = arena->tensor(1);
    EXPECT_EQ(x.storage(), y.storage());
    x.fill(1);
    y.fill(2);
    for (float v : x.to_float_vector()) EXPECT_EQ(v, 1);
    EXPECT_EQ(y.shape(), (Shape{100}));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(y.raw()) % MemoryPlan::kAlignment, 0u);
}

TEST(Arena, FormatBytes) {
    EXPECT_EQ(format_bytes(512), "512 B");
    EXPECT_EQ(format_bytes(1536), "1.5 KiB");
    EXPECT_EQ(format_bytes(3.0 * (1 << 30)), "3.0 GiB");
}
