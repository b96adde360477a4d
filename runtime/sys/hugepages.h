// The kernel's huge page pools and hugetlbfs mounts, read from sysfs and /proc/mounts.
#ifndef HUGEMM_RUNTIME_SYS_HUGEPAGES_H_
#define HUGEMM_RUNTIME_SYS_HUGEPAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/system_info.h"

namespace hugemm::sys {

using hugemm::HugePagePool;
using hugemm::HugetlbfsMount;
using hugemm::NodePool;

// Huge page sizes this kernel supports, ascending (from <sysfs>/kernel/mm/hugepages).
absl::StatusOr<std::vector<size_t>> HugePageSizes(const std::string& sysfs_root = "/sys");
// One pool's counters, globally and per NUMA node.
absl::StatusOr<HugePagePool> ReadHugePagePool(size_t page_size,
                                              const std::string& sysfs_root = "/sys");
// Online NUMA nodes (<sysfs>/devices/system/node/nodeN); {0} on a kernel without NUMA.
std::vector<int> OnlineNodes(const std::string& sysfs_root = "/sys");
// Mounted hugetlbfs file systems with their page size.
absl::StatusOr<std::vector<HugetlbfsMount>> HugetlbfsMounts(
    const std::string& mounts_file = "/proc/mounts");
// The default huge page size (Hugepagesize in /proc/meminfo); 0 if none.
size_t DefaultHugePageSize();

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_HUGEPAGES_H_
