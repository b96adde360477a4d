// GUP-fast over the shadow table: the lock-free loop, as the kernel's gup_fast_pmd_leaf.
//
// Why it is correct without a lock. Inside one read section, for each leaf:
//   lookup   the entry mapping va, and the leaf it describes;
//   check    what the leaf allows (device-exclusive, read-only under WRITE);
//   grab     refs references on the folio head in one atomic, refused on a free folio;
//   re-check the entry still holds the word the lookup read; if not, undo the grab;
//   record   the folio run in the output.
// The read section keeps everything the loop reads alive: a writer frees the tables and
// records it unhooked, and drops the folio references its entries held, only after a
// grace period (reclaim.cc), so a folio that was mapped when the lookup read its entry
// keeps its descriptor until the section ends. A grab never revives a folio whose count
// reached zero. If the entry still holds the same word after the grab, the folio is the
// one mapped here and the entry's own reference was held throughout: the grab counts on a
// live mapping, as if taken under the table lock. If it changed, the folio may be on its
// way out or back to its pool, and giving back exactly what was taken is still right.
//
// The loop builds no status and no string and calls nothing out of line: it returns how
// far it got and why it stopped, and the slow path (slow_path.h) takes over from there.
// Its lookups start where this thread's last pin on the same table ended, while the
// table's generation says that is safe (walk.h), so a call that pins one folio descends
// from the root only when the mapping changed shape since.
#ifndef HUGEMM_RUNTIME_GUP_FAST_PATH_H_
#define HUGEMM_RUNTIME_GUP_FAST_PATH_H_

#include <cstdint>
#include <functional>

#include "absl/base/attributes.h"
#include "hugemm/pgtable.h"
#include "runtime/gup/pin_steps.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/walk.h"

namespace hugemm::gup_internal {

struct FastResult {
  uintptr_t reached;  // every page below it is pinned and recorded
  Stop why;           // kNone when reached is the end
};

// Calls a test's after-grab hook, out of line and noexcept: the loop around it then has
// nothing that throws, so it needs no unwinding path and keeps its state in registers.
void RunAfterGrab(const std::function<void(uintptr_t)>& hook, uintptr_t va) noexcept;

// Inlined into the pin loop: a call that pins one folio is mostly this function's
// entry and exit.
template <typename Sink>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline FastResult PinFast(const PinContext& ctx, uintptr_t va,
                                                       uintptr_t end, GupFlags flags, Sink& sink) {
  using pgtable_internal::Cursor;
  const RefKind kind = HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
  pgtable_internal::ReadLock rs;
  Cursor cursor(ctx.table);  // from where this thread's last pin on the table left off
  pgtable_internal::PinLeaf leaf;
  while (va < end) {
    if (!cursor.LookupForPin(va, &leaf)) [[unlikely]]
      return {va, Stop::kNotMapped};
    if (const Stop s = CheckLeaf(leaf, flags); s != Stop::kNone) [[unlikely]]
      return {va, s};
    const Take t = TakeOf(leaf, va, end);
    if (!GrabFast(t, kind, ctx.granularity)) [[unlikely]]
      return {va, Stop::kGrabFailed};
    if (ctx.after_grab != nullptr) [[unlikely]]
      RunAfterGrab(*ctx.after_grab, va);
    // Re-check: only an entry that still holds its word makes the grab one on a live
    // mapping. Then what the folio allows, then record; any refusal undoes the grab.
    Stop s = Cursor::StillMapped(leaf) ? Stop::kNone : Stop::kChanged;
    if (s == Stop::kNone) [[likely]]
      s = CheckFolio(t.folio, flags);
    // The folio's first page again rather than kept across the grab: one value fewer
    // to hold (on the stack) while the grab's compare-and-swap waits for it.
    if (s == Stop::kNone && !sink.Accept(t.folio, FirstPage(t.folio, va), t.refs, va)) [[unlikely]]
      s = sink.why();
    if (s != Stop::kNone) [[unlikely]] {
      Ungrab(t, kind);
      return {va, s};
    }
    va += uintptr_t{t.refs} << kPageShift;
  }
  return {va, Stop::kNone};
}

// The most common pin, a range inside one plain leaf (one folio, one I/O), with folio
// granularity and no test hook: PinFast's steps for one leaf, in the same order and with
// the same checks, as a straight line that records straight into the caller's output. It
// looks only where this thread's last walk of the table ended (the saved hint, while the
// table's generation says it is valid) and never descends: the descent, its registers and
// its stores stay out of the path a pin per I/O takes every time. The range is
// [lo, lo + length), not empty and not wrapping: the caller's arguments as they came, so
// that the general loop it falls back to needs nothing else kept.
//
// `record(folio, first, pages)` writes the output once the references are taken and the
// entry re-checked; false (an output that cannot name the folio) undoes the grab. True
// when the range is pinned and recorded; false, having taken and written nothing, when
// the hint does not cover the range, the range goes beyond the leaf, or any step refuses.
// The caller then takes the general loop, which does it all again, finds the reason, and
// leaves the hint where this path finds it.
template <typename Record>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline bool PinOneLeaf(const PageTable& table, uintptr_t lo,
                                                    size_t length, GupFlags flags, Record record) {
  using pgtable_internal::Cursor;
  const uintptr_t va = lo & ~uintptr_t{kPageSize4K - 1};
  pgtable_internal::ReadLock rs;
  pgtable_internal::PinLeaf leaf;
  if (!Cursor::LookupHintedForPin(table, va, &leaf) || leaf.end < lo + length) [[unlikely]]
    return false;
  if (CheckLeaf(leaf, flags) != Stop::kNone) [[unlikely]]
    return false;
  Folio* const folio = leaf.folio;
  const auto refs = static_cast<uint32_t>((lo + length - va + kPageSize4K - 1) >> kPageShift);
  const RefKind kind = HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
  if (folio_internal::TryGrab(folio, refs, kind) != folio_internal::GrabResult::kOk) [[unlikely]]
    return false;
  if (!Cursor::StillMapped(leaf) || CheckFolio(folio, flags) != Stop::kNone ||
      !record(folio, FirstPage(folio, va), refs)) [[unlikely]] {
    folio_internal::Ungrab(folio, refs, kind, /*dirty=*/false);
    return false;
  }
  return true;
}

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_FAST_PATH_H_
