// The kernel's huge page pools and hugetlbfs mounts, read through an Os from sysfs,
// /proc/mounts and /proc/meminfo.
#ifndef HUGEMM_RUNTIME_SYS_HUGEPAGES_H_
#define HUGEMM_RUNTIME_SYS_HUGEPAGES_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/huge_pages.h"
#include "hugemm/os.h"

namespace hugemm::sys {

using hugemm::HugePagePool;
using hugemm::HugetlbfsMount;
using hugemm::NodePool;

// Huge page sizes this kernel supports, ascending (from <sysfs>/kernel/mm/hugepages).
[[nodiscard]] absl::StatusOr<std::vector<size_t>> HugePageSizes(Os& os,
                                                                const std::string& sysfs_root);
// One pool's counters, globally and per NUMA node.
[[nodiscard]] absl::StatusOr<HugePagePool> ReadHugePagePool(Os& os, size_t page_size,
                                                            const std::string& sysfs_root = "/sys");
// Online NUMA nodes (<sysfs>/devices/system/node/nodeN); {0} on a kernel without NUMA
// (no such directory). Any other failure to list it is an error.
[[nodiscard]] absl::StatusOr<std::vector<int>> OnlineNodes(Os& os, const std::string& sysfs_root);
// Mounted hugetlbfs file systems with their page size; each path as the file system has
// it (the "\040" /proc/mounts writes for a space read back as a space).
[[nodiscard]] absl::StatusOr<std::vector<HugetlbfsMount>> HugetlbfsMounts(
    Os& os, const std::string& mounts_file = "/proc/mounts");
// The default huge page size (Hugepagesize in /proc/meminfo); 0 if none.
[[nodiscard]] size_t DefaultHugePageSize(Os& os);

// The counts people ask for after "cannot allocate", for errors: "2M pool: 5 free,
// 0 reserved, of 8", or with node >= 0 that node's own "2M pool on node 1: 0 free of 7"
// (sysfs keeps no per-node reservations). Empty when they cannot be read.
[[nodiscard]] std::string DescribePool(Os& os, size_t page_size, int node,
                                       const std::string& sysfs_root = "/sys");

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_HUGEPAGES_H_
