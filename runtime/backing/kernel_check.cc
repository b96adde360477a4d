#include "hugemm/kernel_check.h"

#include "absl/strings/str_format.h"
#include "runtime/sys/pagemap.h"

namespace hugemm {

absl::StatusOr<KernelCheck> CheckAgainstKernel(const Extent& extent) {
  KernelCheck check;
  if (!extent.mapped()) return absl::FailedPreconditionError("extent is not mapped");
  const size_t page = extent.page_size();
  const size_t frames = page / kPageSize4K;

  absl::StatusOr<size_t> kps = sys::KernelPageSizeAt(extent.data());
  if (!kps.ok()) return kps.status();
  check.kernel_page_size = *kps;
  if (*kps != page) {
    check.mismatches.push_back(absl::StrFormat("%p: kernel maps %s pages, extent has %s",
                                               extent.data(), PageSizeName(*kps),
                                               PageSizeName(page)));
  }
  check.pfns_checked = sys::CanReadPfns();
  for (size_t i = 0; i < extent.page_count(); ++i) {
    const std::byte* va = extent.data() + i * page;
    ++check.pages_checked;
    if (!check.pfns_checked) continue;
    absl::StatusOr<std::vector<uint64_t>> pfns = sys::ReadPfns(va, frames, kPageSize4K);
    if (!pfns.ok()) return pfns.status();
    uint64_t head = (*pfns)[0];
    if (head == kUnknownPfn && extent.pfn(i) != kUnknownPfn) {
      // The kernel hides this page's frames; hold the rest against the recorded PFN.
      ++check.pfns_hidden;
      head = extent.pfn(i);
    } else if (head != extent.pfn(i)) {
      check.mismatches.push_back(
          absl::StrFormat("%p: pagemap PFN 0x%x, recorded 0x%x", va, head, extent.pfn(i)));
    }
    if (head == kUnknownPfn) continue;
    if (head % frames != 0) {
      check.mismatches.push_back(
          absl::StrFormat("%p: head PFN 0x%x is not %s-aligned", va, head, PageSizeName(page)));
    }
    for (size_t j = 1; j < frames && (*pfns)[0] != kUnknownPfn; ++j) {
      if ((*pfns)[j] != head + j) {
        check.mismatches.push_back(
            absl::StrFormat("%p: frame %u has PFN 0x%x, expected 0x%x (not contiguous)",
                            va + j * kPageSize4K, j, (*pfns)[j], head + j));
        break;
      }
    }
    if (frames == 1) continue;
    absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(head, frames);
    if (!flags.ok()) continue;  // not root: kpageflags is unreadable
    if ((*flags)[0] >> sys::kKpfNoPage & 1) {
      ++check.flags_hidden;  // no struct page the kernel will describe
      continue;
    }
    check.flags_checked = true;
    if (!((*flags)[0] >> sys::kKpfCompoundHead & 1)) {
      check.mismatches.push_back(absl::StrFormat(
          "%p: PFN 0x%x is not a compound head (kpageflags 0x%x)", va, head, (*flags)[0]));
    }
    for (size_t j = 1; j < frames; ++j) {
      if (!((*flags)[j] >> sys::kKpfCompoundTail & 1)) {
        check.mismatches.push_back(
            absl::StrFormat("%p: PFN 0x%x is not a compound tail (kpageflags 0x%x)",
                            va + j * kPageSize4K, head + j, (*flags)[j]));
        break;
      }
    }
  }
  return check;
}

}  // namespace hugemm
