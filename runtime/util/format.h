// absl::StrFormat for paths that may meet an exhausted heap. abseil formats into a
// std::string from inside a function that must not throw, so a failed allocation there
// ends the program; Format has it write through a sink that catches the failure, and then
// throws std::bad_alloc itself, which the C API turns into -ENOMEM like any other. The
// format string is checked at compile time as StrFormat's is.
#ifndef HUGEMM_RUNTIME_UTIL_FORMAT_H_
#define HUGEMM_RUNTIME_UTIL_FORMAT_H_

#include <new>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace hugemm {
namespace util_internal {

// Appends to a string; after the heap has refused once, appends nothing more.
struct FormatOut {
  std::string* out;
  bool failed = false;

  friend void AbslFormatFlush(FormatOut* sink, absl::string_view piece) {
    if (sink->failed) return;
    try {
      sink->out->append(piece.data(), piece.size());
    } catch (const std::bad_alloc&) {
      sink->failed = true;
    }
  }
};

}  // namespace util_internal

// Hidden: an instance in a shared library is the library's own, never part of its API.
template <typename... Args>
[[nodiscard, gnu::visibility("hidden")]] std::string Format(const absl::FormatSpec<Args...>& format,
                                                            const Args&... args) {
  std::string out;
  util_internal::FormatOut sink{&out};
  absl::Format(&sink, format, args...);
  if (sink.failed) throw std::bad_alloc();
  return out;
}

// absl::StrAppendFormat the same way: on std::bad_alloc, `out` may hold part of the text.
template <typename... Args>
[[gnu::visibility("hidden")]] void AppendFormat(std::string* out,
                                                const absl::FormatSpec<Args...>& format,
                                                const Args&... args) {
  util_internal::FormatOut sink{out};
  absl::Format(&sink, format, args...);
  if (sink.failed) throw std::bad_alloc();
}

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_UTIL_FORMAT_H_
