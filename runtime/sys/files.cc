#include "runtime/sys/files.h"

#include <cerrno>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

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

absl::StatusOr<uint64_t> ReadKibField(Os& os, const std::string& path, absl::string_view key) {
  absl::StatusOr<std::string> text = os.ReadFile(path);
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (!absl::ConsumePrefix(&line, key) || !absl::ConsumePrefix(&line, ":")) continue;
    absl::string_view value = absl::StripAsciiWhitespace(line);
    uint64_t kib = 0;
    if (!absl::ConsumeSuffix(&value, "kB") ||
        !absl::SimpleAtoi(absl::StripTrailingAsciiWhitespace(value), &kib) || kib > (~0ULL >> 10)) {
      return absl::DataLossError(absl::StrCat("garbled ", path, ": expected \"", key,
                                              ": <number> kB\", found \"", line.substr(0, 40),
                                              "\""));
    }
    return kib << 10;
  }
  return absl::NotFoundError(absl::StrCat(path, " has no ", key, " line"));
}

absl::StatusOr<bool> PathExists(Os& os, const std::string& path) {
  absl::StatusOr<struct stat> st = os.Stat(path);
  if (st.ok()) return true;
  const int err = ErrnoOf(st.status());
  if (err == ENOENT || err == ENOTDIR) return false;
  return st.status();
}

}  // namespace hugemm::sys
