// Holding the shadow against the live kernel, leaf by leaf.
#include <vector>

#include "absl/strings/str_format.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/sys/pagemap.h"

namespace hugemm {

absl::StatusOr<VerifyReport> PageTable::Verify(const void* va, size_t length) const {
  if (geometry_.page_shift != kPageShift) {
    return absl::FailedPreconditionError(
        absl::StrFormat("verify: %s is not this machine's geometry", geometry_.name));
  }
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas();
  if (!vmas.ok()) return vmas.status();
  std::vector<LogicalLeaf> leaves;
  Walk(va, length, [&](const LogicalLeaf& l) { leaves.push_back(l); });

  VerifyReport report;
  report.pfns_checked = sys::CanReadPfns();
  bool flags_readable = true;
  auto mismatch = [&](uintptr_t at, std::string what) {
    report.mismatches.push_back({at, absl::StrFormat("0x%x: %s", at, what)});
  };
  for (const LogicalLeaf& l : leaves) {
    ++report.leaves_checked[l.bytes];
    const std::string leaf_name =
        absl::StrFormat("%s%s leaf of %s", l.cont ? "contiguous " : "",
                        geometry_.LevelName(l.level), PageSizeName(l.bytes));
    const sys::Vma* vma = sys::FindVma(*vmas, l.va);
    if (vma == nullptr) {
      mismatch(l.va, absl::StrFormat("the kernel maps nothing here, shadow has a %s", leaf_name));
      continue;
    }
    if (vma->kernel_page_size != l.bytes) {
      mismatch(l.va, absl::StrFormat("kernel maps %s pages, shadow has a %s",
                                     PageSizeName(vma->kernel_page_size), leaf_name));
    }
    if (!report.pfns_checked) continue;
    const Folio* folio = l.folio;
    const size_t frames = l.bytes / kPageSize4K;
    const uintptr_t folio_va = l.va & ~(folio->size() - 1);
    const size_t first_frame = (l.va - folio_va) / kPageSize4K;
    absl::StatusOr<std::vector<uint64_t>> pfns =
        sys::ReadPfnRange(reinterpret_cast<const void*>(l.va), frames);
    if (!pfns.ok()) return pfns.status();
    const uint64_t recorded =
        folio->head_pfn == kUnknownPfn ? kUnknownPfn : folio->head_pfn + first_frame;
    if ((*pfns)[0] != recorded) {
      mismatch(l.va, absl::StrFormat("PFN recorded 0x%x, pagemap says 0x%x", recorded, (*pfns)[0]));
    }
    if ((*pfns)[0] == kUnknownPfn) continue;
    bool contiguous = true;
    for (size_t j = 1; j < frames && contiguous; ++j) {
      if ((*pfns)[j] != (*pfns)[0] + j) {
        contiguous = false;
        mismatch(l.va + j * kPageSize4K,
                 absl::StrFormat("frame %u of the %s has PFN 0x%x, expected 0x%x (not "
                                 "contiguous)",
                                 j, leaf_name, (*pfns)[j], (*pfns)[0] + j));
      }
    }
    if (!contiguous || folio->order == 0 || !flags_readable) continue;
    absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags((*pfns)[0], frames);
    if (!flags.ok()) {
      flags_readable = false;
      continue;
    }
    report.flags_checked = true;
    for (size_t j = 0; j < frames; ++j) {
      const bool want_head = first_frame + j == 0;
      const int bit = want_head ? sys::kKpfCompoundHead : sys::kKpfCompoundTail;
      if (!((*flags)[j] >> bit & 1)) {
        mismatch(l.va + j * kPageSize4K,
                 absl::StrFormat("PFN 0x%x should be a compound %s of the %s folio "
                                 "(kpageflags 0x%x)",
                                 (*pfns)[0] + j, want_head ? "head" : "tail",
                                 PageSizeName(folio->size()), (*flags)[j]));
        break;
      }
    }
  }
  return report;
}

}  // namespace hugemm
