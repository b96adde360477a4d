// Small readers for /proc and /sys files. Errors name the file and say whether it was
// missing, unreadable or garbled, because a wrong sysfs tree is a common field problem.
#ifndef HUGEMM_RUNTIME_SYS_FILES_H_
#define HUGEMM_RUNTIME_SYS_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hugemm::sys {

// Whole file contents.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// Contents with surrounding whitespace removed.
absl::StatusOr<std::string> ReadTrimmed(const std::string& path);
// A file holding one decimal (or 0x-prefixed hex) integer, like sysfs attributes.
absl::StatusOr<int64_t> ReadInt(const std::string& path);
// Names in a directory (no "." or ".."), sorted.
absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path);
bool PathExists(const std::string& path);

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_FILES_H_
