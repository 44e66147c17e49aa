// SD3_ASSERT: invariants that only a bug can break. Prints file:line and the message, then aborts.
// User and I/O errors never come here; they are Statuses (core/status.h).
#pragma once

#include "core/status.h"

namespace sd3::detail {
[[noreturn]] void assert_fail(const char* file, int line, const char* cond, const std::string& message);
}

#define SD3_ASSERT(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) ::sd3::detail::assert_fail(__FILE__, __LINE__, #cond, ::sd3::str_cat("" __VA_OPT__(, ) __VA_ARGS__)); \
    } while (0)
