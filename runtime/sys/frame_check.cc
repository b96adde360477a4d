#include "runtime/sys/frame_check.h"

#include "hugemm/page_size.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/format.h"

namespace hugemm::sys {

absl::StatusOr<FrameCheck> CheckFrames(Os& os, uintptr_t va, size_t frames, uint64_t recorded_pfn,
                                       size_t first_frame, size_t compound_frames,
                                       absl::string_view what, AbsentPage absent) {
  FrameCheck check;
  absl::StatusOr<std::vector<uint64_t>> pfns =
      ReadPfnRange(os, reinterpret_cast<const void*>(va), frames);
  if (!pfns.ok()) return pfns.status();
  uint64_t head = (*pfns)[0];
  if (head == kUnknownPfn && recorded_pfn != kUnknownPfn && absent == AbsentPage::kMismatch) {
    // Only device-DAX has leaves pagemap cannot show: anywhere else the frame is gone,
    // and a device handed the recorded one would reach memory that is no longer ours.
    check.mismatches.push_back(
        {va, hugemm::Format("PFN recorded 0x%x, pagemap shows no page (the kernel dropped it)",
                            recorded_pfn)});
    return check;
  }
  if (head == kUnknownPfn && recorded_pfn != kUnknownPfn) {
    check.pfns_hidden = true;  // hold the flags against what we recorded
    head = recorded_pfn;
  } else if (head != recorded_pfn) {
    check.mismatches.push_back(
        {va, hugemm::Format("PFN recorded 0x%x, pagemap says 0x%x", recorded_pfn, head)});
  }
  if (head == kUnknownPfn) return check;
  if (!check.pfns_hidden) {
    for (size_t j = 1; j < frames; ++j) {
      if ((*pfns)[j] != head + j) {
        check.mismatches.push_back(
            {va + j * kPageSize4K,
             hugemm::Format("frame %u of the %s has PFN 0x%x, expected 0x%x (not contiguous)", j,
                            what, (*pfns)[j], head + j)});
        return check;
      }
    }
  }
  if (compound_frames <= 1) return check;
  absl::StatusOr<std::vector<uint64_t>> flags = ReadKpageflags(os, head, frames);
  if (!flags.ok()) return check;  // not root: kpageflags is unreadable
  if ((*flags)[0] >> kKpfNoPage & 1) {
    check.flags_hidden = true;
    return check;
  }
  check.flags_checked = true;
  for (size_t j = 0; j < frames; ++j) {
    const bool want_head = first_frame + j == 0;
    if (!((*flags)[j] >> (want_head ? kKpfCompoundHead : kKpfCompoundTail) & 1)) {
      check.mismatches.push_back(
          {va + j * kPageSize4K,
           hugemm::Format("PFN 0x%x should be a compound %s of the %s folio (kpageflags 0x%x)",
                          head + j, want_head ? "head" : "tail",
                          PageSizeName(compound_frames * kPageSize4K), (*flags)[j])});
      break;
    }
  }
  return check;
}

}  // namespace hugemm::sys
