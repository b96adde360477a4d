#include "runtime/sys/files.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/sys/os.h"

namespace hugemm::sys {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus(errno ? errno : ENOENT, absl::StrCat("cannot read ", path));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return ErrnoStatus(errno ? errno : EIO, absl::StrCat("error reading ", path));
  return out.str();
}

absl::StatusOr<std::string> ReadTrimmed(const std::string& path) {
  absl::StatusOr<std::string> s = ReadFile(path);
  if (!s.ok()) return s.status();
  return std::string(absl::StripAsciiWhitespace(*s));
}

absl::StatusOr<int64_t> ReadInt(const std::string& path) {
  absl::StatusOr<std::string> s = ReadTrimmed(path);
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

absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return ErrnoStatus(errno, absl::StrCat("cannot list ", path));
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace hugemm::sys
