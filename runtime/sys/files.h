// Small readers for /proc and /sys files, through an Os. Errors name the file and say
// whether it was missing, unreadable or garbled, because a wrong sysfs tree is a common
// field problem.
#ifndef HUGEMM_RUNTIME_SYS_FILES_H_
#define HUGEMM_RUNTIME_SYS_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hugemm/os.h"

namespace hugemm::sys {

// Contents with surrounding whitespace removed.
[[nodiscard]] absl::StatusOr<std::string> ReadTrimmed(Os& os, const std::string& path);
// A file holding one decimal (or 0x-prefixed hex) integer, like sysfs attributes;
// DataLoss naming the file when it holds something else.
[[nodiscard]] absl::StatusOr<int64_t> ReadInt(Os& os, const std::string& path);
// A kernel counter printed from an unsigned long (a huge page pool's counts): as ReadInt,
// but a value past INT64_MAX is a count the kernel let wrap below zero for a moment (its
// resv_hugepages does while a private mapping's reservation is handed back) and reads 0.
[[nodiscard]] absl::StatusOr<int64_t> ReadCount(Os& os, const std::string& path);
// The "<key>:   N kB" line of a /proc file such as meminfo or a process's status, in
// bytes. NotFound when the file has no line for the key (some depend on the kernel's
// version and configuration: VmPin, Hugepagesize), DataLoss naming the file when the line
// holds anything but a number of kB.
[[nodiscard]] absl::StatusOr<uint64_t> ReadKibField(Os& os, const std::string& path,
                                                    absl::string_view key);
// Whether stat(2) finds the path: false on ENOENT or ENOTDIR, an error on any other
// failure (a file that may exist but cannot be looked at).
[[nodiscard]] absl::StatusOr<bool> PathExists(Os& os, const std::string& path);

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_FILES_H_
