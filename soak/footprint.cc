#include "soak/footprint.h"

#include <dirent.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/sys/files.h"

namespace hugemm::soak {
namespace {

std::set<int> OpenFds() {
  std::set<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  const int own = dirfd(dir);  // the listing's own descriptor is no one's
  while (const dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && fd != own) fds.insert(static_cast<int>(fd));
  }
  closedir(dir);
  return fds;
}

// Lines of /proc/self/maps backed by huge pages hugemm may have made.
std::set<std::string> HugeMappings() {
  std::set<std::string> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (absl::StrContains(line, "/memfd:hugemm-") || absl::StrContains(line, "anon_hugepage") ||
        absl::StrContains(line, "/dev/hugepages")) {
      // The address range and the path: offsets and inodes say nothing about a leak.
      const size_t range_end = line.find(' ');
      const size_t path = line.find('/');
      out.insert(absl::StrCat(line.substr(0, range_end), " ",
                              path == std::string::npos ? "" : line.substr(path)));
    }
  }
  return out;
}

int64_t VmPinKb() {
  absl::StatusOr<uint64_t> bytes = sys::ReadKibField(Os::Default(), "/proc/self/status", "VmPin");
  return bytes.ok() ? static_cast<int64_t>(*bytes >> 10) : -1;
}

template <typename T>
std::string Minus(const std::set<T>& a, const std::set<T>& b) {
  std::set<T> out;
  for (const T& x : a) {
    if (!b.contains(x)) out.insert(x);
  }
  return absl::StrJoin(out, ", ");
}

}  // namespace

ProcessFootprint ProcessFootprint::Now(bool mappings) {
  ProcessFootprint f{.fds = OpenFds(), .vm_pin_kb = VmPinKb()};
  if (mappings) f.huge_mappings = HugeMappings();
  return f;
}

std::string ProcessFootprint::Diff(const ProcessFootprint& later) const {
  std::string out;
  auto note = [&](const char* what, const std::string& items) {
    if (!items.empty()) absl::StrAppend(&out, out.empty() ? "" : "; ", what, " ", items);
  };
  note("descriptors opened:", Minus(later.fds, fds));
  note("descriptors closed:", Minus(fds, later.fds));
  note("huge page mappings made:", Minus(later.huge_mappings, huge_mappings));
  note("huge page mappings gone:", Minus(huge_mappings, later.huge_mappings));
  if (later.vm_pin_kb != vm_pin_kb) {
    absl::StrAppend(&out, out.empty() ? "" : "; ", "VmPin ", vm_pin_kb, " kB -> ", later.vm_pin_kb,
                    " kB");
  }
  return out;
}

}  // namespace hugemm::soak
