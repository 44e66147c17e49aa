// Error-code names, message formatting, the assert handler and the logger.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/check.h"
#include "core/log.h"
#include "core/status.h"

namespace sd3 {

const char* error_code_name(ErrorCode code) {
    switch (code) {
        case ErrorCode::OK: return "ok";
        case ErrorCode::INVALID_ARGUMENT: return "invalid argument";
        case ErrorCode::NOT_FOUND: return "not found";
        case ErrorCode::IO_ERROR: return "I/O error";
        case ErrorCode::CORRUPT_FILE: return "corrupt file";
        case ErrorCode::UNSUPPORTED: return "unsupported";
        case ErrorCode::OUT_OF_MEMORY: return "out of memory";
        case ErrorCode::INTERNAL: return "internal error";
    }
    return "unknown";
}

namespace detail {
void assert_fail(const char* file, int line, const char* cond, const std::string& message) {
    std::fprintf(stderr, "sd3tune: internal error at %s:%d: assertion `%s` failed%s%s\n", file, line, cond,
                 message.empty() ? "" : ": ", message.c_str());
    std::abort();
}
}  // namespace detail

namespace {
std::atomic<LogLevel> g_level{LogLevel::INFO};
std::mutex g_log_mutex;
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_write(LogLevel level, const std::string& message) {
    static const char* const kPrefix[] = {"debug: ", "", "warning: ", "error: ", ""};
    std::lock_guard<std::mutex> lock(g_log_mutex);
    std::fprintf(stderr, "%s%s\n", kPrefix[static_cast<int>(level)], message.c_str());
}

std::string format_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
    return buf;
}

}  // namespace sd3
