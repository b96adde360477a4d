// The C API's pins and unpins over hugemm::Pinner: page arrays, folio spans and DMA
// segments out, each released its own way; C structs mirror the C++ ones bit for bit.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/hugemm.h"
#include "hugemm/runtime.h"
#include "runtime/api/c_bridge.h"

namespace {

using hugemm::c_api_internal::Fail;
using hugemm::c_api_internal::Ok;

// The C flags are the C++ ones bit for bit.
constexpr bool Same(unsigned c, hugemm::GupFlags cc) { return c == static_cast<uint32_t>(cc); }
static_assert(Same(HUGEMM_PIN, hugemm::kGupPin) && Same(HUGEMM_GET, hugemm::kGupGet) &&
              Same(HUGEMM_WRITE, hugemm::kGupWrite) &&
              Same(HUGEMM_LONGTERM, hugemm::kGupLongterm) &&
              Same(HUGEMM_FAST_ONLY, hugemm::kGupFastOnly) &&
              Same(HUGEMM_PARTIAL, hugemm::kGupPartial));
static_assert(sizeof(hugemm_page) == sizeof(hugemm::PageRef));
static_assert(sizeof(hugemm_folio_span) == sizeof(hugemm::FolioSpan));
static_assert(sizeof(hugemm_dma_segment) == sizeof(hugemm::DmaSegment));

hugemm::RefKind KindOf(unsigned flags) {
  return (flags & HUGEMM_GET) ? hugemm::RefKind::kGet : hugemm::RefKind::kPin;
}

// The pins' flags, and the unpins' (which take the pin's): the C++ rules, one check.
int CheckFlags(unsigned flags) {
  if (absl::Status st = hugemm::CheckGupFlags(static_cast<hugemm::GupFlags>(flags)); !st.ok()) {
    return Fail(st);
  }
  return 0;
}

constexpr uintptr_t kPageSize4KMask = hugemm::kPageSize4K - 1;

hugemm::PageRef PageOf(hugemm_page page) { return hugemm::PageRef::FromBits(page.bits); }

}  // namespace

extern "C" {

long hugemm_pin_pages(hugemm_runtime* rt, const void* addr, size_t npages, unsigned flags,
                      hugemm_page* pages) try {
  HUGEMM_C_CHECK(rt != nullptr && (pages != nullptr || npages == 0),
                 "hugemm_pin_pages: NULL runtime or pages");
  if (int rc = CheckFlags(flags)) return rc;
  absl::StatusOr<size_t> n =
      rt->rt->pinner().PinPages(addr, npages, static_cast<hugemm::GupFlags>(flags),
                                absl::MakeSpan(reinterpret_cast<hugemm::PageRef*>(pages), npages));
  if (!n.ok()) return Fail(__func__, n.status());
  Ok();
  return static_cast<long>(*n);
}
HUGEMM_C_CATCH

long hugemm_pin_folios(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       hugemm_folio_span* spans, size_t cap) try {
  HUGEMM_C_CHECK(rt != nullptr && (spans != nullptr || length == 0),
                 "hugemm_pin_folios: NULL runtime or spans");
  if (spans == nullptr) cap = 0;
  if (int rc = CheckFlags(flags)) return rc;
  absl::StatusOr<size_t> n =
      rt->rt->pinner().PinFolios(addr, length, static_cast<hugemm::GupFlags>(flags),
                                 absl::MakeSpan(reinterpret_cast<hugemm::FolioSpan*>(spans), cap));
  if (!n.ok()) return Fail(__func__, n.status());
  Ok();
  return static_cast<long>(*n);
}
HUGEMM_C_CATCH

long hugemm_pin_segments(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                         uint64_t max_segment, hugemm_dma_segment* segments, size_t cap) try {
  HUGEMM_C_CHECK(rt != nullptr && (segments != nullptr || length == 0),
                 "hugemm_pin_segments: NULL runtime or segments");
  if (segments == nullptr) cap = 0;
  if (int rc = CheckFlags(flags)) return rc;
  std::vector<hugemm::FolioSpan> pinned;
  absl::StatusOr<size_t> n = rt->rt->pinner().PinSegments(
      addr, length, static_cast<hugemm::GupFlags>(flags), max_segment,
      absl::MakeSpan(reinterpret_cast<hugemm::DmaSegment*>(segments), cap), &pinned);
  if (!n.ok()) return Fail(__func__, n.status());
  if (!pinned.empty()) {
    try {
      rt->segment_pins.Add({reinterpret_cast<uintptr_t>(addr), length, KindOf(flags)}, pinned);
    } catch (...) {
      // No record, no pin: the segments are not the caller's to unpin.
      (void)rt->rt->pinner().UnpinFolios(pinned, KindOf(flags));
      throw;
    }
  }
  Ok();
  return static_cast<long>(*n);
}
HUGEMM_C_CATCH

long hugemm_unpin_pages(hugemm_runtime* rt, const hugemm_page* pages, size_t n, int dirty) try {
  HUGEMM_C_CHECK(rt != nullptr && (pages != nullptr || n == 0),
                 "hugemm_unpin_pages: NULL runtime or pages");
  size_t refused = 0;
  const size_t done = rt->rt->pinner().UnpinPages(
      absl::MakeConstSpan(reinterpret_cast<const hugemm::PageRef*>(pages), n), dirty != 0,
      &refused);
  if (refused != 0) {
    return Fail(EFAULT, absl::StrCat("hugemm_unpin_pages: ", refused, " run(s) of entries (", done,
                                     " given back) name a folio that holds fewer "
                                     "references of their kind than they have entries (never "
                                     "pinned, or unpinned already): those were not unpinned"));
  }
  Ok();
  return static_cast<long>(done);
}
HUGEMM_C_CATCH

long hugemm_unpin_folios(hugemm_runtime* rt, const hugemm_folio_span* spans, size_t n,
                         unsigned flags, int dirty) try {
  HUGEMM_C_CHECK(rt != nullptr && (spans != nullptr || n == 0),
                 "hugemm_unpin_folios: NULL runtime or spans");
  if (int rc = CheckFlags(flags)) return rc;
  size_t refused = 0;
  const size_t done = rt->rt->pinner().UnpinFolios(
      absl::MakeConstSpan(reinterpret_cast<const hugemm::FolioSpan*>(spans), n), KindOf(flags),
      dirty != 0, &refused);
  if (refused != 0) {
    return Fail(EFAULT, absl::StrCat("hugemm_unpin_folios: ", refused, " span(s) (", done,
                                     " given back) name a folio that holds fewer ",
                                     (flags & HUGEMM_PIN) != 0 ? "pins" : "references",
                                     " than they give back (never pinned, unpinned already, "
                                     "or pinned as the other kind): those were not unpinned"));
  }
  Ok();
  return static_cast<long>(done);
}
HUGEMM_C_CATCH

int hugemm_unpin_range(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       int dirty) try {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_unpin_range: NULL runtime");
  HUGEMM_C_CHECK(length > 0, "hugemm_unpin_range: empty range");
  HUGEMM_C_CHECK(length <= UINTPTR_MAX - reinterpret_cast<uintptr_t>(addr) - kPageSize4KMask,
                 "hugemm_unpin_range: the range wraps the address space");
  if (int rc = CheckFlags(flags)) return rc;
  const hugemm::RefKind kind = KindOf(flags);
  std::vector<hugemm::FolioSpan> logged;
  if (rt->segment_pins.Take({reinterpret_cast<uintptr_t>(addr), length, kind}, &logged)) {
    rt->rt->pinner().UnpinFolios(logged, kind, dirty != 0);
    return Ok();
  }
  // By the table, leaving each folio what the records hold on it (and, for a GET, its
  // owner's reference: PinnerOptions::owner_refs).
  const hugemm::c_api_internal::SegmentPins& records = rt->segment_pins;
  if (absl::Status st = rt->rt->pinner().UnpinRange(
          addr, length, kind, dirty != 0,
          [&records, kind](const hugemm::Folio* f) { return records.Held(f, kind); });
      !st.ok()) {
    return Fail(__func__, st);
  }
  return Ok();
}
HUGEMM_C_CATCH

void* hugemm_page_folio(hugemm_page page) { return PageOf(page).folio(); }
uint32_t hugemm_page_index(hugemm_page page) { return PageOf(page).index(); }
// An entry no pin wrote (zero, e.g. a zeroed array) names no folio: NULL and no PFN.
void* hugemm_page_address(hugemm_page page) {
  return PageOf(page).folio() == nullptr ? nullptr : PageOf(page).address();
}
uint64_t hugemm_page_pfn(hugemm_page page) {
  return PageOf(page).folio() == nullptr ? UINT64_MAX : PageOf(page).pfn();
}

}  // extern "C"
