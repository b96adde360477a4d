// Holds an extent against what the live kernel says about it: smaps' KernelPageSize,
// the PFN of every 4K frame (pagemap) and the compound head / tail flags (kpageflags).
// Safe from any thread while the extent stays mapped.
#ifndef HUGEMM_KERNEL_CHECK_H_
#define HUGEMM_KERNEL_CHECK_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/backing.h"

namespace hugemm {

struct KernelCheck {
  size_t pages_checked = 0;
  size_t kernel_page_size = 0;  // from smaps
  bool pfns_checked = false;    // pagemap readable: PFN contiguity was checked
  bool flags_checked = false;   // kpageflags readable: head / tail was checked
  // Pages whose PFN the kernel does not show (pagemap has no PFN for PUD-mapped
  // device-DAX; kpageflags has no flags for ZONE_DEVICE pages on some kernels).
  size_t pfns_hidden = 0;
  size_t flags_hidden = 0;
  // One line per disagreement, naming the address and what differs. Empty = agrees.
  std::vector<std::string> mismatches;
  bool ok() const { return mismatches.empty(); }
};

// Checks every native page of `extent`, reading /proc through its backing's Os. An extent
// whose PFN list was dropped (Extent::ForgetPfns) is held against the kernel's own frames:
// contiguity and compound head / tail.
// Disagreements are data (KernelCheck::mismatches), not errors. Errors:
// FailedPrecondition for an extent that is not mapped, NotFound when smaps has no
// mapping at its address, and the OS's error when smaps or pagemap cannot be read at
// all (kpageflags that cannot be read only leaves flags_checked false).
[[nodiscard]] absl::StatusOr<KernelCheck> CheckAgainstKernel(const Extent& extent);

}  // namespace hugemm

#endif  // HUGEMM_KERNEL_CHECK_H_
