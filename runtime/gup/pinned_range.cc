// PinnedRange: a pin that unpins itself.
#include <algorithm>
#include <limits>
#include <utility>

#include "hugemm/gup.h"
#include "runtime/gup/segments.h"
#include "runtime/util/format.h"

namespace hugemm {

PinnedRange::PinnedRange(PinnedRange&& other) noexcept
    : pinner_(std::exchange(other.pinner_, nullptr)),
      va_(other.va_),
      length_(other.length_),
      flags_(other.flags_),
      spans_(std::move(other.spans_)) {
  other.spans_.clear();
}

PinnedRange& PinnedRange::operator=(PinnedRange&& other) noexcept {
  if (this != &other) {
    Release();
    pinner_ = std::exchange(other.pinner_, nullptr);
    va_ = other.va_;
    length_ = other.length_;
    flags_ = other.flags_;
    spans_ = std::move(other.spans_);
    other.spans_.clear();
  }
  return *this;
}

RefKind PinnedRange::kind() const {
  return HasAny(flags_, kGupPin) ? RefKind::kPin : RefKind::kGet;
}

size_t PinnedRange::page_count() const {
  size_t n = 0;
  for (const FolioSpan& s : spans_) n += s.pages;
  return n;
}

size_t PinnedRange::Pages(absl::Span<PageRef> out) const {
  size_t n = 0;
  for (const FolioSpan& s : spans_) {
    if (!PageRef::Encodable(s.folio)) break;  // no entry could name it
    for (uint32_t i = 0; i < s.pages && n < out.size(); ++i) {
      out[n++] = PageRef(s.folio, s.first_page + i, kind());
    }
  }
  return n;
}

absl::StatusOr<std::vector<DmaSegment>> PinnedRange::Segments(uint64_t max_segment,
                                                              const DmaAddressSpace* space) const {
  absl::StatusOr<uint64_t> max = gup_internal::NormalizeMaxSegment(max_segment);
  if (!max.ok()) return max.status();
  const uintptr_t lo = va_, hi = va_ + length_;
  // Count, then write: one allocation of the exact size.
  std::vector<DmaSegment> out;
  for (int pass = 0; pass < 2; ++pass) {
    gup_internal::SegmentWriter w(pass == 0 ? nullptr : out.data(),
                                  pass == 0 ? std::numeric_limits<size_t>::max() : out.size(),
                                  *max);
    uintptr_t va = lo & ~uintptr_t{kPageSize4K - 1};
    for (const FolioSpan& s : spans_) {
      if (space != nullptr) {
        const uintptr_t end = va + (uintptr_t{s.pages} << kPageShift);
        bool unmapped = false;
        uintptr_t at = va;
        if (!w.AddIn(*space, std::max(va, lo), std::min(end, hi), &unmapped, &at)) {
          return absl::FailedPreconditionError(hugemm::Format(
              "segments of [0x%x, +%u): 0x%x has no address in the device's address space", lo,
              length_, at));
        }
        va = end;
        continue;
      }
      if (s.folio->head_pfn == kUnknownPfn) {
        return absl::FailedPreconditionError(hugemm::Format(
            "segments of [0x%x, +%u): the PFN of 0x%x is unknown (pagemap hid it when the "
            "memory was mapped: reading PFNs needs CAP_SYS_ADMIN)",
            lo, length_, va));
      }
      w.AddPages(s.folio, s.first_page, s.pages, va, lo, hi);
      va += uintptr_t{s.pages} << kPageShift;
    }
    if (pass == 0) out.resize(w.count());
  }
  return out;
}

void PinnedRange::Release() {
  if (pinner_ == nullptr) return;
  pinner_->UnpinFolios(spans_, kind(), HasAny(flags_, kGupWrite));
  spans_.clear();
  pinner_ = nullptr;
}

}  // namespace hugemm
