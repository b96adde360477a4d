// What the kernel says about our memory, read through an Os: PFNs from
// /proc/self/pagemap, page flags from /proc/kpageflags, and the VMA page size and flags
// from /proc/self/smaps.
#ifndef HUGEMM_RUNTIME_SYS_PAGEMAP_H_
#define HUGEMM_RUNTIME_SYS_PAGEMAP_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/os.h"

namespace hugemm::sys {

// A PFN we could not learn (no CAP_SYS_ADMIN, page not present). Never zero: PFN 0 is
// a real frame and a device handed it would write to it.
inline constexpr uint64_t kUnknownPfn = ~uint64_t{0};

// /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h).
inline constexpr int kKpfCompoundHead = 15;
inline constexpr int kKpfCompoundTail = 16;
inline constexpr int kKpfHuge = 17;
inline constexpr int kKpfNoPage = 20;

// The PFN of each of `count` pages starting at `addr`, `stride` bytes apart (one read
// of the pagemap per page). kUnknownPfn where the kernel hides it or the page is absent.
[[nodiscard]] absl::StatusOr<std::vector<uint64_t>> ReadPfns(Os& os, const void* addr, size_t count,
                                                             size_t stride);

// Flags of `count` consecutive PFNs from /proc/kpageflags (root only).
[[nodiscard]] absl::StatusOr<std::vector<uint64_t>> ReadKpageflags(Os& os, uint64_t pfn,
                                                                   size_t count);

// True when this process may read PFNs: it maps and touches a page and checks that the
// pagemap shows a non-zero PFN for it.
[[nodiscard]] bool CanReadPfns(Os& os);

// smaps' KernelPageSize of the VMA that holds `addr`, in bytes.
[[nodiscard]] absl::StatusOr<size_t> KernelPageSizeAt(Os& os, const void* addr);

// The PFN of each of `frames` consecutive 4K frames from `addr`, in one read of the
// pagemap. kUnknownPfn where the kernel hides it or the page is absent.
[[nodiscard]] absl::StatusOr<std::vector<uint64_t>> ReadPfnRange(Os& os, const void* addr,
                                                                 size_t frames);

// One VMA of /proc/self/smaps with its KernelPageSize.
struct Vma {
  uintptr_t start = 0;
  uintptr_t end = 0;
  size_t kernel_page_size = 0;
  std::string flags;  // smaps' VmFlags: "rd wr sh dc ht ..." ("dc": MADV_DONTFORK)
};
// Every VMA of this process, in address order, from one pass over smaps.
[[nodiscard]] absl::StatusOr<std::vector<Vma>> ReadVmas(Os& os);
// The VMA of `vmas` holding `addr`, or nullptr.
[[nodiscard]] const Vma* FindVma(const std::vector<Vma>& vmas, uintptr_t addr);

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_PAGEMAP_H_
