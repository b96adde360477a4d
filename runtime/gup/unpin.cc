// Unpinning: by page array, by spans, or by a walk of the range that was pinned.
#include "runtime/gup/unpin.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_format.h"
#include "hugemm/gup.h"

namespace hugemm {
namespace gup_internal {
namespace {

// Longest run of page-array entries given back in one operation: far beyond any folio,
// short of what could overflow an order-0 folio's biased count.
constexpr size_t kMaxUnpinRun = size_t{1} << 20;

}  // namespace

size_t UnpinPageRefs(absl::Span<const PageRef> refs, bool dirty, RefGranularity granularity) {
  // A plain pointer: this loop is the hot path of unpin.
  const PageRef* pages = refs.data();
  const size_t n = refs.size();
  size_t ops = 0;
  if (granularity == RefGranularity::kPage) {
    for (size_t i = 0; i < n; ++i) {
      if (pages[i].folio() == nullptr) continue;
      FolioUngrab(pages[i].folio(), 1, pages[i].kind(), dirty);
      ++ops;
    }
    return ops;
  }
  for (size_t i = 0; i < n;) {
    Folio* folio = pages[i].folio();
    const RefKind kind = pages[i].kind();
    // Same folio and kind: the same bits above the page index.
    const uint64_t key = pages[i].bits() >> PageRef::kFolioShift;
    size_t j = i + 1;
    while (j < n && j - i < kMaxUnpinRun && (pages[j].bits() >> PageRef::kFolioShift) == key &&
           pages[j].kind() == kind) {
      ++j;
    }
    if (folio != nullptr) {
      FolioUngrab(folio, static_cast<int32_t>(j - i), kind, dirty);
      ++ops;
    }
    i = j;
  }
  return ops;
}

size_t UnpinSpans(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty) {
  size_t ops = 0;
  for (const FolioSpan& s : spans) {
    if (s.folio == nullptr || s.pages == 0) continue;
    FolioUngrab(s.folio, static_cast<int32_t>(s.pages), kind, dirty);
    ++ops;
  }
  return ops;
}

}  // namespace gup_internal

size_t Pinner::UnpinPages(absl::Span<const PageRef> pages, bool dirty) const {
  return gup_internal::UnpinPageRefs(pages, dirty, options_.granularity);
}

size_t Pinner::UnpinFolios(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty) const {
  return gup_internal::UnpinSpans(spans, kind, dirty);
}

absl::Status Pinner::UnpinRange(const void* va, size_t length, RefKind kind, bool dirty) const {
  const auto lo = reinterpret_cast<uintptr_t>(va);
  const uintptr_t mask = kPageSize4K - 1;
  if (lo + length < lo || lo + length > std::numeric_limits<uintptr_t>::max() - mask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("range [0x%x, +%u) wraps the address space", lo, length));
  }
  if (length == 0) return absl::OkStatus();
  const uintptr_t start = lo & ~mask;
  const uintptr_t end = (lo + length + mask) & ~mask;
  const void* p = reinterpret_cast<const void*>(start);
  // First make sure every page is still mapped: a hole means the contract was broken and
  // nothing can be given back safely.
  uintptr_t covered = start;
  table_.Walk(p, end - start, [&](const LogicalLeaf& l) {
    if (std::max(l.va, start) == covered) covered = std::min(l.va + l.bytes, end);
  });
  if (covered < end) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "unpin [0x%x, +%u pages): 0x%x is no longer mapped; nothing unpinned (unpin by spans)",
        start, (end - start) >> kPageShift, covered));
  }
  Folio* run = nullptr;
  size_t run_pages = 0;
  auto flush = [&] {
    if (run != nullptr) FolioUngrab(run, static_cast<int32_t>(run_pages), kind, dirty);
  };
  table_.Walk(p, end - start, [&](const LogicalLeaf& l) {
    const size_t pages = (std::min(l.va + l.bytes, end) - std::max(l.va, start)) >> kPageShift;
    if (l.folio == run) {
      run_pages += pages;
      return;
    }
    flush();
    run = l.folio;
    run_pages = pages;
  });
  flush();
  return absl::OkStatus();
}

bool Pinner::MaybeDmaPinned(const void* va) const {
  ReadSection rs;
  std::optional<Translation> t = table_.Translate(va);
  return t.has_value() && FolioMaybeDmaPinned(t->folio);
}

}  // namespace hugemm
