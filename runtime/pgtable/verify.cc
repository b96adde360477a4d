// Holding the shadow against the live kernel, leaf by leaf.
#include <limits>
#include <string>
#include <vector>

#include "hugemm/geometry.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/kernel_prot.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/sys/frame_check.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/format.h"

namespace hugemm {
namespace {

std::string PfnName(uint64_t pfn) {
  return pfn == kUnknownPfn ? "no PFN" : hugemm::Format("PFN 0x%x", pfn);
}

}  // namespace

absl::StatusOr<VerifyReport> PageTable::Verify(const void* va, size_t length) const {
  if (absl::Status st = CheckMachineGeometry("verify"); !st.ok()) return st;
  const auto lo = reinterpret_cast<uintptr_t>(va);
  if (length > std::numeric_limits<uintptr_t>::max() - lo) {
    return absl::InvalidArgumentError(
        hugemm::Format("verify [%p, +%u): the range wraps the address space", va, length));
  }
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas(os_);
  if (!vmas.ok()) return vmas.status();
  // One read section over the walk and every check of its leaves: a writer that unmaps
  // one of them meanwhile drops the folio's mapping references (and its owner may free the
  // descriptor) only after this section ends (Reclaim).
  pgtable_internal::ReadLock section;
  std::vector<LogicalLeaf> leaves;
  Walk(va, length, [&](const LogicalLeaf& l) { leaves.push_back(l); });

  VerifyReport report;
  report.pfns_checked = sys::CanReadPfns(os_);
  auto mismatch = [&](uintptr_t at, std::string what) {
    report.mismatches.push_back({at, hugemm::Format("0x%x: %s", at, what)});
  };
  for (const LogicalLeaf& l : leaves) {
    ++report.leaves_checked[l.bytes];
    const std::string leaf_name =
        hugemm::Format("%s%s leaf of %s", l.cont ? "contiguous " : "", geometry_.LevelName(l.level),
                       PageSizeName(l.bytes));
    const sys::Vma* vma = sys::FindVma(*vmas, l.va);
    if (vma == nullptr) {
      mismatch(l.va, hugemm::Format("the kernel maps nothing here, shadow has a %s", leaf_name));
      continue;
    }
    // A device must never get more than the program has: a leaf wider than its VMA
    // (made read-only by mprotect after it was registered) would take a WRITE pin.
    const Prot kernel_prot = pgtable_internal::KernelProt(vma->flags);
    if (HasAny(l.prot & ~kernel_prot, kProtRead | kProtWrite | kProtExec)) {
      mismatch(l.va, hugemm::Format("the kernel maps %s, shadow has a %s %s",
                                    pgtable_internal::ProtLetters(kernel_prot),
                                    pgtable_internal::ProtLetters(l.prot), leaf_name));
    }
    const Folio* folio = l.folio;
    // A folio carved from a kernel page (an allocation smaller than the huge page it came
    // from) is mapped inside that page by its natural leaves (PTEs for a 16K folio); a leaf
    // smaller than that (a split) or larger than the kernel's page is not the kernel's
    // mapping.
    const size_t kernel_page = vma->kernel_page_size;
    bool carved = false;
    if (folio->size() < kernel_page) {
      absl::StatusOr<LeafUnit> unit = NaturalUnit(geometry_, folio->size());
      carved = unit.ok() && unit->leaf_bytes == l.bytes;
    }
    if (kernel_page != l.bytes && !carved) {
      mismatch(l.va, hugemm::Format("kernel maps %s pages, shadow has a %s",
                                    PageSizeName(kernel_page), leaf_name));
    }
    // The frame words PFN translation reads must say what the folio says.
    const size_t entry_bytes = geometry_.entry_bytes(l.level);
    for (uintptr_t e = l.va; e < l.va + l.bytes; e += entry_bytes) {
      const uint64_t recorded = RecordedPfn(e);
      const uint64_t expected = pgtable_internal::PfnAt(folio, e);
      if (recorded != expected) {
        mismatch(e, hugemm::Format("the %s's frame word records %s, its folio says %s", leaf_name,
                                   PfnName(recorded), PfnName(expected)));
      }
    }
    if (!report.pfns_checked) continue;
    const uintptr_t folio_va = l.va & ~(folio->size() - 1);
    const size_t first_frame = (l.va - folio_va) / kPageSize4K;
    // The kernel's compound page is its own page: a carved folio's frames are inside one.
    const size_t compound = carved ? kernel_page : folio->size();
    absl::StatusOr<sys::FrameCheck> fc =
        sys::CheckFrames(os_, l.va, l.bytes / kPageSize4K, folio->page_pfn(first_frame),
                         (l.va & (compound - 1)) / kPageSize4K, compound / kPageSize4K, leaf_name,
                         folio->backing == BackingKind::kDevDax ? sys::AbsentPage::kHidden
                                                                : sys::AbsentPage::kMismatch);
    if (!fc.ok()) return fc.status();
    for (const sys::FrameMismatch& m : fc->mismatches) mismatch(m.va, m.what);
    report.pfns_hidden += fc->pfns_hidden;
    report.flags_checked |= fc->flags_checked;
  }
  return report;
}

}  // namespace hugemm
