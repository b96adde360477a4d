#include "hugemm/kernel_check.h"

#include "runtime/sys/frame_check.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/format.h"

namespace hugemm {

absl::StatusOr<KernelCheck> CheckAgainstKernel(const Extent& extent) {
  KernelCheck check;
  if (!extent.mapped()) return absl::FailedPreconditionError("extent is not mapped");
  Os& os = extent.backing()->os();
  const size_t page = extent.page_size();
  const size_t frames = page / kPageSize4K;

  absl::StatusOr<size_t> kps = sys::KernelPageSizeAt(os, extent.data());
  if (!kps.ok()) return kps.status();
  check.kernel_page_size = *kps;
  if (*kps != page) {
    check.mismatches.push_back(hugemm::Format("%p: kernel maps %s pages, extent has %s",
                                              extent.data(), PageSizeName(*kps),
                                              PageSizeName(page)));
  }
  check.pfns_checked = sys::CanReadPfns(os);
  const std::string what = PageSizeName(page) + " page";
  for (size_t i = 0; i < extent.page_count(); ++i) {
    ++check.pages_checked;
    if (!check.pfns_checked) continue;
    const auto va = reinterpret_cast<uintptr_t>(extent.data() + i * page);
    uint64_t recorded = extent.pfn(i);
    if (extent.pfns().empty()) {
      // The owner dropped the list (Extent::ForgetPfns): the kernel's frames are held
      // against themselves, contiguity and head / tail.
      absl::StatusOr<std::vector<uint64_t>> head =
          sys::ReadPfnRange(os, reinterpret_cast<const void*>(va), 1);
      if (!head.ok()) return head.status();
      recorded = (*head)[0];
      if (recorded == kUnknownPfn && extent.kind() != BackingKind::kDevDax) {
        check.mismatches.push_back(
            hugemm::Format("0x%x: pagemap shows no page (the kernel dropped it)", va));
        continue;
      }
    }
    absl::StatusOr<sys::FrameCheck> fc =
        sys::CheckFrames(os, va, frames, recorded, 0, frames, what,
                         extent.kind() == BackingKind::kDevDax ? sys::AbsentPage::kHidden
                                                               : sys::AbsentPage::kMismatch);
    if (!fc.ok()) return fc.status();
    if (recorded != kUnknownPfn && recorded % frames != 0) {
      check.mismatches.push_back(hugemm::Format("0x%x: head PFN 0x%x is not %s-aligned", va,
                                                recorded, PageSizeName(page)));
    }
    for (const sys::FrameMismatch& m : fc->mismatches) {
      check.mismatches.push_back(hugemm::Format("0x%x: %s", m.va, m.what));
    }
    check.pfns_hidden += fc->pfns_hidden;
    check.flags_hidden += fc->flags_hidden;
    check.flags_checked |= fc->flags_checked;
  }
  return check;
}

}  // namespace hugemm
