// What this machine offers hugemm: page sizes, huge page pools per NUMA node,
// hugetlbfs mounts, device-DAX devices and whether PFNs are readable, as data
// (`hugemm info` renders it).
#ifndef HUGEMM_SYSTEM_INFO_H_
#define HUGEMM_SYSTEM_INFO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/backing.h"

namespace hugemm {

struct NodePool {
  int node = 0;
  int64_t nr = 0;       // nr_hugepages on this node
  int64_t free = 0;     // free_hugepages
  int64_t surplus = 0;  // surplus_hugepages
};

struct HugePagePool {
  size_t page_size = 0;
  int64_t nr = 0;
  int64_t free = 0;
  int64_t resv = 0;  // promised to mappings, not yet faulted in
  int64_t surplus = 0;
  int64_t overcommit = 0;  // nr_overcommit_hugepages
  std::vector<NodePool> nodes;
};

struct HugetlbfsMount {
  std::string path;
  size_t page_size = 0;
};

struct SystemInfo {
  std::string sysfs_root;
  std::vector<int> nodes;
  size_t base_page_size = kPageSize4K;
  size_t default_huge_page_size = 0;
  std::vector<HugePagePool> pools;  // one per huge page size, ascending
  std::vector<HugetlbfsMount> hugetlbfs_mounts;
  std::vector<DaxDeviceInfo> dax_devices;
  std::string dax_error;  // why the DAX list is incomplete, if it is
  bool can_read_pfns = false;
  bool can_read_kpageflags = false;
  // No pool has a free page and none may overcommit: everything falls back to anon 4K.
  bool anon_fallback() const;
};

absl::StatusOr<SystemInfo> CollectSystemInfo(const std::string& sysfs_root = "/sys");

}  // namespace hugemm

#endif  // HUGEMM_SYSTEM_INFO_H_
