// mtrec: the one exception type and the checks that raise it.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mtrec {

// Every failed check throws mtrec::Error. The message always starts with the
// operation ("Linear::forward") and states the expected and the actual value.
class Error : public std::runtime_error {
 public:
  Error(std::string op, const std::string& what)
      : std::runtime_error(op + ": " + what), op_(std::move(op)) {}
  const std::string& op() const noexcept { return op_; }

 private:
  std::string op_;
};

namespace detail {
inline void append_all(std::ostringstream&) {}
template <class A, class... R>
inline void append_all(std::ostringstream& os, const A& a, const R&... rest) {
  os << a;
  append_all(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces and throws.
// `op` is a C string so that a passing check never allocates.
template <class... Parts>
[[noreturn]] inline void fail(const char* op, const Parts&... parts) {
  std::ostringstream os;
  detail::append_all(os, parts...);
  throw Error(op, os.str());
}

// check(cond, op, pieces...) — throws Error(op, pieces) when cond is false.
template <class... Parts>
inline void check(bool cond, const char* op, const Parts&... parts) {
  if (!cond) fail(op, parts...);
}

}  // namespace mtrec
