// What this machine offers hugemm: page sizes, huge page pools per NUMA node,
// hugetlbfs mounts, device-DAX devices and whether PFNs are readable, as data
// (`hugemm info` renders it).
#ifndef HUGEMM_SYSTEM_INFO_H_
#define HUGEMM_SYSTEM_INFO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/backing.h"
#include "hugemm/huge_pages.h"
#include "hugemm/os.h"

namespace hugemm {

struct SystemInfo {
  std::string sysfs_root;
  std::vector<int> nodes;
  size_t base_page_size = kPageSize4K;
  size_t default_huge_page_size = 0;
  std::vector<HugePagePool> pools;  // one per huge page size, ascending
  std::vector<HugetlbfsMount> hugetlbfs_mounts;
  std::vector<DaxDeviceInfo> dax_devices;
  std::string dax_error;  // why the DAX list is incomplete, if it is
  // One per dax_devices entry: its driver (DaxDeviceDriver; "" when none is bound or
  // sysfs cannot say), and OK when the devdax backing can use the device, else why not
  // (CheckDaxDeviceOpens: no driver, system-ram mode, not the character device...).
  struct DaxUse {
    std::string driver;
    absl::Status usable;
  };
  std::vector<DaxUse> dax_use;
  bool can_read_pfns = false;
  bool can_read_kpageflags = false;
  // No pool has a free page and none may overcommit: only the anon backing (4K pages) can
  // map memory now; a huge page backing's Map fails (ResourceExhausted), it does not fall
  // back.
  bool anon_fallback() const;
};

// Reads it all through `os`, sysfs under `sysfs_root`, and opens (then closes) each
// device-DAX device as the devdax backing would. A DAX listing that fails is
// recorded in dax_error; a kernel without huge pages, or mounts that cannot be read,
// leave those lists empty. An error only when `sysfs_root` does not exist (NotFound), or
// the nodes or a pool's counters cannot be read (the OS's error, naming the file) or are
// garbled (DataLoss). Safe from any thread.
[[nodiscard]] absl::StatusOr<SystemInfo> CollectSystemInfo(const std::string& sysfs_root = "/sys",
                                                           Os& os = Os::Default());

}  // namespace hugemm

#endif  // HUGEMM_SYSTEM_INFO_H_
