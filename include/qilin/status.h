// Status and Result<T>: the error tier for everything a user or a file can get wrong.
// Broken invariants use QILIN_ASSERT (src/core/assert.h) instead and abort.
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <variant>

namespace qilin {

class Status {
 public:
  Status() = default;
  static Status ok() { return Status(); }
  static Status error(std::string message) {
    Status s;
    s.ok_ = false;
    s.message_ = std::move(message);
    return s;
  }
  bool is_ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const std::string& message() const { return message_; }

 private:
  bool ok_ = true;
  std::string message_;
};

// printf-style convenience for building error messages that name the field and value.
template <typename... Args>
Status errorf(const char* fmt, Args... args) {
  char buf[1024];
  std::snprintf(buf, sizeof(buf), fmt, args...);
  return Status::error(buf);
}
inline Status errorf(const char* msg) { return Status::error(msg); }

template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}           // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}     // NOLINT: implicit by design
  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }
  Status status() const { return is_ok() ? Status::ok() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace qilin

namespace qilin {
inline Status to_status(const Status& s) { return s; }
template <typename T>
Status to_status(const Result<T>& r) { return r.status(); }
}  // namespace qilin

// Propagate a failed Status/Result from an expression.
#define QILIN_TRY(expr)                                 \
  do {                                                  \
    auto&& _qilin_s = (expr);                           \
    if (!_qilin_s) return ::qilin::to_status(_qilin_s); \
  } while (0)
