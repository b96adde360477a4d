// GUP's slow path: where the fast path stopped, take one leaf under its table lock (the
// kernel's follow_page under the page table lock), populating it first when nothing maps
// it. It owns every error of a pin: each failure becomes a status naming the request, the
// address and the reason.
#ifndef HUGEMM_RUNTIME_GUP_SLOW_PATH_H_
#define HUGEMM_RUNTIME_GUP_SLOW_PATH_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/pgtable.h"
#include "runtime/gup/pin_steps.h"

namespace hugemm::gup_internal {

// "pin [0x7f.., +512 pages) PIN|WRITE": how every error of a pin begins.
std::string RequestName(const PinRequest& req);

// "pin [0x7f.., +512 pages) PIN|WRITE: 0x7f.. is mapped read-only", and the like.
// `entries`: what the output held (for kFull); `grab`: the grab's own error (kGrabFailed).
absl::Status StopError(const PinRequest& req, Stop why, uintptr_t va, size_t entries,
                       const absl::Status& grab = absl::OkStatus());

// Asks the Populator to map something at `va`: OK when it did or someone was faster.
absl::Status Populate(const PinContext& ctx, const PinRequest& req, uintptr_t va, int attempt);

// The error of a FAST_ONLY pin that stopped at `va` for `why`: FAST_ONLY never takes the
// slow path, so what the fast path saw is the answer. A failed grab is retried under the
// lock and given back at once, only to learn why it failed.
absl::Status FastOnlyError(const PinContext& ctx, const PinRequest& req, Stop why, uintptr_t va,
                           size_t entries);

// The fast path's steps on `leaf`, which `va` maps, with the table lock held: nothing can
// change the entry meanwhile, so there is no re-check. Returns the pages taken.
template <typename Sink>
absl::StatusOr<size_t> TakeLocked(const PinContext& ctx, const PinRequest& req,
                                  const LogicalLeaf& leaf, uintptr_t va, Sink& sink) {
  if (const Stop s = CheckLeaf(leaf, req.flags); s != Stop::kNone) {
    return StopError(req, s, va, sink.count());
  }
  const Take t = TakeOf(leaf, va, req.end(), ctx.table.geometry().page_shift);
  if (absl::Status st = Grab(t, req.kind(), ctx.granularity); !st.ok()) {
    return StopError(req, Stop::kGrabFailed, va, sink.count(), st);
  }
  Stop s = CheckFolio(t.folio, req.flags);
  if (s == Stop::kNone && !sink.Accept(t.folio, t.first, t.refs, va)) s = sink.why();
  if (s == Stop::kFull && HasAny(req.flags, kGupPartial)) {
    // A partial pin keeps what of the leaf the output has room for, in whole pages, and
    // gives the rest of the grab back (the references kept hold the folio meanwhile).
    if (const uint32_t fit = sink.Room(t.folio, t.first, t.refs, va);
        fit > 0 && sink.Accept(t.folio, t.first, fit, va)) {
      Ungrab(Take{t.folio, t.first + fit, t.refs - fit}, req.kind());
      return fit;
    }
  }
  if (s != Stop::kNone) {
    Ungrab(t, req.kind());
    return StopError(req, s, va, sink.count());
  }
  return t.refs;
}

// Takes the leaf holding `va` under its table lock, populating first while nothing maps
// it. Returns the pages taken (at least one).
template <typename Sink>
absl::StatusOr<size_t> PinSlow(const PinContext& ctx, const PinRequest& req, uintptr_t va,
                               Sink& sink) {
  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<size_t> taken;
    const bool mapped = ctx.table.WithLeafLocked(
        reinterpret_cast<const void*>(va),
        [&](const LogicalLeaf& leaf) { taken = TakeLocked(ctx, req, leaf, va, sink); });
    if (mapped) return taken;
    if (absl::Status st = Populate(ctx, req, va, attempt); !st.ok()) return st;
  }
}

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_SLOW_PATH_H_
