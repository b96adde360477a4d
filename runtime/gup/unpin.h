// Giving references back, for Pinner's unpins and for a failed pin's undo.
#ifndef HUGEMM_RUNTIME_GUP_UNPIN_H_
#define HUGEMM_RUNTIME_GUP_UNPIN_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "hugemm/folio.h"
#include "hugemm/gup.h"
#include "hugemm/pgtable.h"

namespace hugemm::gup_internal {

// unpin_user_pages_dirty_lock: one FolioUngrab per run of entries on the same folio with
// the same kind (per entry in kPage granularity); dirty marks each folio once, before its
// references drop. Null folios are skipped. Returns the reference operations done; a run
// whose folio holds fewer references of its kind is refused (FolioUngrab) and counted in
// `*refused` (when not null).
size_t UnpinPageRefs(absl::Span<const PageRef> pages, bool dirty, RefGranularity granularity,
                     size_t* refused = nullptr);
// One FolioUngrab per span of `kind`. Returns the reference operations done, and the
// spans refused in `*refused` (when not null).
size_t UnpinSpans(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty,
                  size_t* refused = nullptr);
// Whether `folio` holds `pages` references of `kind` to give back beyond `reserved` of
// that kind (recorded pins, given back by their records): pins for kPin (a large folio's
// pincount; kPinBias each in an order-0 folio's refcount); for kGet, what its refcount
// holds beyond the pins, the one reference of each table entry mapping it, and `keep`
// more that must stay (PinnerOptions::owner_refs). FailedPrecondition naming the folio
// and the counts otherwise.
absl::Status CheckHeld(const PageTable& table, Folio* folio, size_t pages, RefKind kind,
                       int64_t keep = 0, int64_t reserved = 0);
// Pinner::UnpinRange on `table`, each folio keeping `owner_refs` references more for a
// kGet and `reserved(folio)` of `kind` (CheckHeld): one walk, one check, then the release.
absl::Status UnpinRange(const PageTable& table, const void* va, size_t length, RefKind kind,
                        bool dirty, int64_t owner_refs,
                        absl::FunctionRef<int64_t(const Folio*)> reserved);

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_UNPIN_H_
