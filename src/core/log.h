// Logging with levels, to stderr. The one place library code may write text; tools/ sets the level.
#pragma once

#include "core/status.h"

namespace sd3 {

enum class LogLevel { DEBUG = 0, INFO = 1, WARN = 2, ERROR = 3, QUIET = 4 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_write(LogLevel level, const std::string& message);

template <typename... Args>
void log_debug(const Args&... args) {
    if (log_level() <= LogLevel::DEBUG) log_write(LogLevel::DEBUG, str_cat(args...));
}
template <typename... Args>
void log_info(const Args&... args) {
    if (log_level() <= LogLevel::INFO) log_write(LogLevel::INFO, str_cat(args...));
}
template <typename... Args>
void log_warn(const Args&... args) {
    if (log_level() <= LogLevel::WARN) log_write(LogLevel::WARN, str_cat(args...));
}
template <typename... Args>
void log_error(const Args&... args) {
    if (log_level() <= LogLevel::ERROR) log_write(LogLevel::ERROR, str_cat(args...));
}

}  // namespace sd3
