#include "runtime/sys/files.h"

#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace hugemm::sys {

absl::StatusOr<std::string> ReadTrimmed(Os& os, const std::string& path) {
  absl::StatusOr<std::string> s = os.ReadFile(path);
  if (!s.ok()) return s.status();
  return std::string(absl::StripAsciiWhitespace(*s));
}

absl::StatusOr<int64_t> ReadInt(Os& os, const std::string& path) {
  absl::StatusOr<std::string> s = ReadTrimmed(os, path);
  if (!s.ok()) return s.status();
  int64_t value = 0;
  bool ok = false;
  if (absl::StartsWith(*s, "0x") || absl::StartsWith(*s, "0X")) {
    uint64_t u = 0;
    ok = absl::SimpleHexAtoi(s->substr(2), &u) && u <= INT64_MAX;
    value = static_cast<int64_t>(u);
  } else {
    ok = absl::SimpleAtoi(*s, &value);
  }
  if (!ok) {
    return absl::DataLossError(
        absl::StrCat("garbled ", path, ": expected an integer, found \"", s->substr(0, 40), "\""));
  }
  return value;
}

absl::StatusOr<int64_t> ReadCount(Os& os, const std::string& path) {
  absl::StatusOr<std::string> s = ReadTrimmed(os, path);
  if (!s.ok()) return s.status();
  uint64_t value = 0;
  if (!absl::SimpleAtoi(*s, &value)) {
    return absl::DataLossError(
        absl::StrCat("garbled ", path, ": expected a count, found \"", s->substr(0, 40), "\""));
  }
  return value > static_cast<uint64_t>(INT64_MAX) ? 0 : static_cast<int64_t>(value);
}

absl::StatusOr<bool> PathExists(Os& os, const std::string& path) {
  absl::StatusOr<struct stat> st = os.Stat(path);
  if (st.ok()) return true;
  const int err = ErrnoOf(st.status());
  if (err == ENOENT || err == ENOTDIR) return false;
  return st.status();
}

}  // namespace hugemm::sys
