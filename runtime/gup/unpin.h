// Giving references back, for Pinner's unpins and for a failed pin's undo.
#ifndef HUGEMM_RUNTIME_GUP_UNPIN_H_
#define HUGEMM_RUNTIME_GUP_UNPIN_H_

#include <cstddef>

#include "absl/types/span.h"
#include "hugemm/folio.h"
#include "hugemm/gup.h"

namespace hugemm::gup_internal {

// unpin_user_pages_dirty_lock: one FolioUngrab per run of entries on the same folio with
// the same kind (per entry in kPage granularity); dirty marks each folio once, before its
// references drop. Null folios are skipped. Returns the reference operations done.
size_t UnpinPageRefs(absl::Span<const PageRef> pages, bool dirty, RefGranularity granularity);
// One FolioUngrab per span of `kind`. Returns the reference operations done.
size_t UnpinSpans(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty);

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_UNPIN_H_
