#include "hugemm/system_info.h"

#include "absl/strings/str_cat.h"
#include "runtime/sys/files.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/pagemap.h"

namespace hugemm {

bool SystemInfo::anon_fallback() const {
  for (const HugePagePool& p : pools) {
    if (p.free > 0 || p.overcommit > p.surplus) return false;
  }
  return true;
}

absl::StatusOr<SystemInfo> CollectSystemInfo(const std::string& sysfs_root, Os& os) {
  SystemInfo info;
  info.sysfs_root = sysfs_root;
  // Without a root every read below would find nothing, which reads as a machine
  // without NUMA, huge pages or devices rather than as the wrong path.
  absl::StatusOr<bool> root = sys::PathExists(os, sysfs_root);
  if (!root.ok()) return root.status();
  if (!*root) {
    return absl::NotFoundError(
        absl::StrCat("system info: sysfs root \"", sysfs_root, "\" does not exist"));
  }
  absl::StatusOr<std::vector<int>> nodes = sys::OnlineNodes(os, sysfs_root);
  if (!nodes.ok()) return nodes.status();
  info.nodes = std::move(*nodes);
  info.default_huge_page_size = sys::DefaultHugePageSize(os);
  absl::StatusOr<std::vector<size_t>> sizes = sys::HugePageSizes(os, sysfs_root);
  if (sizes.ok()) {
    for (size_t s : *sizes) {
      absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(os, s, sysfs_root);
      if (!pool.ok()) return pool.status();
      info.pools.push_back(std::move(*pool));
    }
  }
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os);
  if (mounts.ok()) info.hugetlbfs_mounts = std::move(*mounts);
  absl::StatusOr<std::vector<DaxDeviceInfo>> dax = ListDaxDevices(sysfs_root, os);
  if (dax.ok()) {
    info.dax_devices = std::move(*dax);
    for (const DaxDeviceInfo& d : info.dax_devices) {
      absl::StatusOr<std::string> driver = DaxDeviceDriver(d.name, sysfs_root, os);
      info.dax_use.push_back({driver.value_or(""), CheckDaxDeviceOpens(d, sysfs_root, os)});
    }
  } else {
    info.dax_error = std::string(dax.status().message());
  }
  info.can_read_pfns = sys::CanReadPfns(os);
  info.can_read_kpageflags = sys::ReadKpageflags(os, 0, 1).ok();
  return info;
}

}  // namespace hugemm
