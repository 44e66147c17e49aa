// Status and Result<T>: how library code reports user and I/O errors (DESIGN.md "Conventions").
// A Status carries a code and a message that says what was wrong and what to do; Result<T> is a value or a
// Status. Invariant violations are not Statuses: they go through SD3_ASSERT (core/check.h).
#pragma once

#include <cassert>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

namespace sd3 {

enum class ErrorCode {
    OK,
    INVALID_ARGUMENT,  // the user asked for something impossible (flag, shape, combination)
    NOT_FOUND,         // a file, folder, tensor or key is missing
    IO_ERROR,          // the operating system refused a read or write
    CORRUPT_FILE,      // a file exists but its contents violate its format
    UNSUPPORTED,       // valid input we do not handle (yet)
    OUT_OF_MEMORY,
    INTERNAL,
};

const char* error_code_name(ErrorCode code);

class [[nodiscard]] Status {
  public:
    Status() = default;
    Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

    static Status ok_status() { return {}; }
    bool ok() const { return code_ == ErrorCode::OK; }
    ErrorCode code() const { return code_; }
    const std::string& message() const { return message_; }

    // Prepends where the error happened ("reading model/vae/config.json: ...").
    Status with_context(const std::string& context) const {
        if (ok()) return *this;
        return Status(code_, context + ": " + message_);
    }

  private:
    ErrorCode code_ = ErrorCode::OK;
    std::string message_;
};

// Concatenates any streamable values into one string: str_cat("got ", n, " tensors").
template <typename... Args>
std::string str_cat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}

// A byte count for people: "512 B", "1.5 KiB", "3.0 GiB".
std::string format_bytes(double bytes);

template <typename... Args>
Status make_error(ErrorCode code, const Args&... args) {
    return Status(code, str_cat(args...));
}

template <typename T>
class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::move(value)) {}
    Result(Status status) : v_(std::move(status)) { assert(!std::get<Status>(v_).ok()); }

    bool ok() const { return std::holds_alternative<T>(v_); }
    const Status& status() const {
        static const Status kOk;
        return ok() ? kOk : std::get<Status>(v_);
    }
    T& value() & { return std::get<T>(v_); }
    const T& value() const& { return std::get<T>(v_); }
    T&& value() && { return std::get<T>(std::move(v_)); }
    T& operator*() & { return value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

  private:
    std::variant<T, Status> v_;
};

}  // namespace sd3

#define SD3_CONCAT_INNER(a, b) a##b
#define SD3_CONCAT(a, b) SD3_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function if it failed.
#define SD3_TRY(expr)                                  \
    do {                                               \
        ::sd3::Status sd3_try_status_ = (expr);        \
        if (!sd3_try_status_.ok()) return sd3_try_status_; \
    } while (0)

// `SD3_ASSIGN_OR_RETURN(auto x, make_x());` declares x from a Result or returns its error.
#define SD3_ASSIGN_OR_RETURN(lhs, expr) SD3_ASSIGN_OR_RETURN_IMPL(SD3_CONCAT(sd3_result_, __LINE__), lhs, expr)
#define SD3_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
    auto tmp = (expr);                            \
    if (!tmp.ok()) return tmp.status();           \
    lhs = std::move(tmp).value()
