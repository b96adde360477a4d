// The kernel's huge page pools and hugetlbfs mounts, as data: what sysfs and
// /proc/mounts say, read through an Os (runtime/sys/hugepages.h) and shown by
// `hugemm info` (system_info.h).
#ifndef HUGEMM_HUGE_PAGES_H_
#define HUGEMM_HUGE_PAGES_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hugemm {

// One NUMA node's share of a pool (<sysfs>/devices/system/node/nodeN/hugepages/...).
struct NodePool {
  int node = 0;
  int64_t nr = 0;       // nr_hugepages on this node
  int64_t free = 0;     // free_hugepages
  int64_t surplus = 0;  // surplus_hugepages
};

// One pool of huge pages of one size (<sysfs>/kernel/mm/hugepages/hugepages-<kB>kB).
struct HugePagePool {
  size_t page_size = 0;
  int64_t nr = 0;          // nr_hugepages: pages the pool holds
  int64_t free = 0;        // free_hugepages: not faulted in by anyone
  int64_t resv = 0;        // resv_hugepages: promised to mappings, not yet faulted in
  int64_t surplus = 0;     // surplus_hugepages: taken beyond nr through overcommit
  int64_t overcommit = 0;  // nr_overcommit_hugepages
  std::vector<NodePool> nodes;
};

// A mounted hugetlbfs file system (a line of /proc/mounts).
struct HugetlbfsMount {
  std::string path;
  size_t page_size = 0;   // its pagesize= option, or the default huge page size
  size_t size_limit = 0;  // its size= option in bytes (what it may hold in all), 0 = none
};

}  // namespace hugemm

#endif  // HUGEMM_HUGE_PAGES_H_
