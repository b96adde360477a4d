// The pin benchmark's buffer (pin_target.h).
#include "perf/pin_target.h"

#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hugemm/backing.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::perf {
namespace {

absl::StatusOr<PinTarget> ResolveFile(const PinBenchConfig& c) {
  const std::string& path = c.file;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("-f ", path, ": ", why));
  };
  PinTarget t;
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  if (exists && S_ISCHR(st.st_mode)) {
    // The buffer is whole pages of the device's alignment: the size rounds up to them,
    // and a --page-size of another size is a contradiction, as for a hugetlbfs mount.
    absl::StatusOr<DaxDeviceInfo> device = ReadDaxDevice(path);
    if (!device.ok()) return bad(device.status().message());
    if (c.page_size != 0 && c.page_size != device->align) {
      return bad(absl::StrCat(path, " has alignment ", PageSizeName(device->align), ", not ",
                              PageSizeName(c.page_size)));
    }
    t.buffer.backing = BackingKind::kDevDax;
    t.buffer.devdax_path = path;
    t.buffer.page_size = device->align;
    return t;
  }
  if (exists && !S_ISREG(st.st_mode)) return bad("neither a device nor a regular file");
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const std::string name = path.substr(slash == std::string::npos ? 0 : slash + 1);
  char real[PATH_MAX];
  if (name.empty() || ::realpath(dir.empty() ? "/" : dir.c_str(), real) == nullptr) {
    return bad("neither a device nor a file in a hugetlbfs mount");
  }
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(Os::Default());
  if (!mounts.ok()) return bad(mounts.status().message());
  const HugetlbfsMount* mount = nullptr;
  for (const HugetlbfsMount& m : *mounts) {
    if (m.path == real) mount = &m;
  }
  if (mount == nullptr) {
    // A directory below a mount: the buffer's file is named in the mount itself (a plain
    // name, as BufferOptions::file_name takes it).
    for (const HugetlbfsMount& m : *mounts) {
      if (absl::StartsWith(real, m.path == "/" ? m.path : absl::StrCat(m.path, "/"))) {
        return bad(absl::StrCat("a file directly in the hugetlbfs mount ", m.path,
                                " is needed, not in a directory below it (", real, ")"));
      }
    }
    return bad("neither a device nor a file in a hugetlbfs mount");
  }
  if (c.page_size != 0 && c.page_size != mount->page_size) {
    return bad(absl::StrCat(mount->path, " has ", PageSizeName(mount->page_size), " pages, not ",
                            PageSizeName(c.page_size)));
  }
  t.buffer.backing = BackingKind::kHugetlbfs;
  t.buffer.hugetlbfs_mount = mount->path;
  t.buffer.file_name = name;
  t.buffer.page_size = mount->page_size;
  if (!exists) t.created = absl::StrCat(mount->path, "/", name);
  return t;
}

}  // namespace

// The buffer a config maps: what -f names, else the backing and page size asked for.
absl::StatusOr<PinTarget> ResolvePinTarget(const PinBenchConfig& c) {
  if (!c.file.empty()) {
    absl::StatusOr<PinTarget> t = ResolveFile(c);
    // -f decides the backing; a --backing that names another is a contradiction, not a
    // preference (hugetlb, the default, is what -H names and -H excludes -f).
    if (t.ok() && c.backing != BackingKind::kHugetlb && c.backing != t->buffer.backing) {
      return absl::InvalidArgumentError(absl::StrCat("--backing ", BackingKindName(c.backing),
                                                     ": -f ", c.file, " is ",
                                                     BackingKindName(t->buffer.backing)));
    }
    return t;
  }
  if (c.backing == BackingKind::kDevDax) {
    return absl::InvalidArgumentError("--backing devdax needs -f /dev/daxX.Y");
  }
  PinTarget t;
  t.buffer.backing = c.backing;
  t.buffer.page_size = c.page_size;
  if (c.backing == BackingKind::kAnon) {
    if (c.page_size != 0 && c.page_size != kPageSize4K) {
      return absl::InvalidArgumentError(absl::StrCat("--page-size ", PageSizeName(c.page_size),
                                                     ": the anon backing has 4K pages only"));
    }
    t.buffer.page_size = kPageSize4K;
  }
  if (c.backing != BackingKind::kAnon && c.page_size == kPageSize4K) {
    return absl::InvalidArgumentError(absl::StrCat("--page-size 4K: the ",
                                                   BackingKindName(c.backing),
                                                   " backing has huge pages only; 4K pages are "
                                                   "--backing anon"));
  }
  if (c.backing != BackingKind::kDevDax && t.buffer.page_size == 0) {
    t.buffer.page_size = kPageSize2M;
  }
  return t;
}

RemoveCreated::~RemoveCreated() {
  if (!path_.empty()) ::unlink(path_.c_str());
}

}  // namespace hugemm::perf
