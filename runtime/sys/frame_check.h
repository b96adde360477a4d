// Holds a range that should be physically contiguous frames against the kernel: the PFN
// of every 4K frame (pagemap) and the compound head / tail flags (kpageflags). Shared by
// the extent check (hugemm demo, backing tests) and the shadow table's verifier.
#ifndef HUGEMM_RUNTIME_SYS_FRAME_CHECK_H_
#define HUGEMM_RUNTIME_SYS_FRAME_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hugemm/os.h"

namespace hugemm::sys {

struct FrameMismatch {
  uintptr_t va = 0;
  std::string what;  // without the address
};

struct FrameCheck {
  std::vector<FrameMismatch> mismatches;
  // The kernel shows no PFN here (pagemap has none for PUD-mapped device-DAX): the
  // frames were held against the recorded PFN only.
  bool pfns_hidden = false;
  // kpageflags was read and describes these frames; head / tail were checked.
  bool flags_checked = false;
  // kpageflags has no struct page to describe (ZONE_DEVICE pages show KPF_NOPAGE).
  bool flags_hidden = false;
};

// What a page pagemap shows no frame for means.
enum class AbsentPage {
  kMismatch,  // the kernel dropped it (MADV_DONTNEED, a punched hole): a mismatch
  kHidden,    // maybe a leaf pagemap cannot show (PUD-mapped device-DAX): pfns_hidden
};

// [va, va + frames * 4K) should be frames recorded_pfn, recorded_pfn + 1, ... The first
// one is frame `first_frame` of a compound page of `compound_frames` frames (1 = no
// compound page: head / tail are not checked). `what` names the range in messages
// ("PMD leaf of 2M"). Errors only when pagemap cannot be read at all.
[[nodiscard]] absl::StatusOr<FrameCheck> CheckFrames(Os& os, uintptr_t va, size_t frames,
                                                     uint64_t recorded_pfn, size_t first_frame,
                                                     size_t compound_frames, absl::string_view what,
                                                     AbsentPage absent = AbsentPage::kHidden);

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_FRAME_CHECK_H_
