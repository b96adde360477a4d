// The reference arithmetic on a folio's counts word, inline for the hot paths (GUP-fast,
// unpin); folio.cc builds the public operations, with their statuses, on top of it.
//
// The word holds refcount in its low 32 bits and pincount in its high 32 bits. A grab adds
// one delta to both at once: refs to refcount (refs * kPinBias for a pin of an order-0
// folio) and, for a pin of a large folio, refs to pincount. Neither field ever exceeds
// INT32_MAX, so adding a delta never carries from one field into the other and
// subtracting one a holder owns never borrows.
#ifndef HUGEMM_RUNTIME_FOLIO_REFS_H_
#define HUGEMM_RUNTIME_FOLIO_REFS_H_

#include <atomic>
#include <cstdint>
#include <limits>

#include "hugemm/folio.h"

namespace hugemm::folio_internal {

inline constexpr uint32_t kMaxCount = std::numeric_limits<int32_t>::max();
inline constexpr uint64_t kRefcountMask = 0xffffffffu;

inline uint32_t RefcountOf(uint64_t word) { return static_cast<uint32_t>(word & kRefcountMask); }
inline uint32_t PincountOf(uint64_t word) {
  return static_cast<uint32_t>(word >> Folio::kPincountShift);
}

// Why a grab took nothing.
enum class GrabResult : uint8_t {
  kOk,
  kFree,      // refcount 0: the folio is free or on its way back to its owner
  kOverflow,  // a count would pass INT32_MAX
  kBadCount,  // refs == 0, or a biased count that cannot be represented
};

// What a grab of `refs` pages of `kind` adds to the word; 0 when refs cannot be taken
// in one grab (refs == 0, or refs * kPinBias beyond the maximum).
inline uint64_t GrabDelta(const Folio* folio, uint32_t refs, RefKind kind) {
  if (refs == 0 || refs > kMaxCount) return 0;
  if (kind == RefKind::kGet) return refs;
  if (folio->order > 0) return refs | (uint64_t{refs} << Folio::kPincountShift);
  if (refs > kMaxCount / kPinBias) return 0;
  return uint64_t{refs} * kPinBias;
}

// Adds `delta` to a live folio's word. One compare-and-swap when nothing races with it:
// the load before it brings in the line the swap writes. Refused, taking nothing, when
// the refcount is 0 (try semantics: a count that reached zero stays there, so a folio on
// its way back to its owner, or in its pool, is never revived) or a field would pass
// INT32_MAX. On success the acquire pairs with the release of whoever made the folio live
// (its owner's first reference) and of every earlier put.
//
// The overflow test is one mask: both fields of the word and of the delta are at most
// INT32_MAX, so each field's sum stays below 2^32 (nothing carries into the next field)
// and passes INT32_MAX exactly when its top bit is set.
inline constexpr uint64_t kFieldTopBits = (uint64_t{1} << 31) | (uint64_t{1} << 63);
inline GrabResult TryAdd(Folio* folio, uint64_t delta) {
  uint64_t old = folio->counts.load(std::memory_order_relaxed);
  uint64_t next;
  do {
    if (RefcountOf(old) == 0) [[unlikely]]
      return GrabResult::kFree;
    next = old + delta;
    if ((next & kFieldTopBits) != 0) [[unlikely]]
      return GrabResult::kOverflow;
  } while (!folio->counts.compare_exchange_weak(old, next, std::memory_order_acquire,
                                                std::memory_order_relaxed));
  return GrabResult::kOk;
}

// FolioTryGrab without a status: GUP-fast's grab.
inline GrabResult TryGrab(Folio* folio, uint32_t refs, RefKind kind) {
  const uint64_t delta = GrabDelta(folio, refs, kind);
  if (delta == 0) [[unlikely]]
    return GrabResult::kBadCount;
  return TryAdd(folio, delta);
}

// The last reference dropped: hand the folio to its owner. Out of line; rare.
void Released(Folio* folio);

// After a put's release subtraction whose old word was `old`: the last reference out
// hands the folio back. It first reads the word with acquire: every earlier put is a
// release read-modify-write of the same word, so reading the value this one left
// synchronises with all of them, and their work happens before the owner's reuse. (A
// load, not an acquire fence: the rare path pays one read, and ThreadSanitizer, which does
// not model fences, sees it.)
inline void ReleaseIfLast(Folio* folio, uint64_t old, uint64_t delta) {
  if (RefcountOf(old) == RefcountOf(delta)) [[unlikely]] {
    (void)folio->counts.load(std::memory_order_acquire);
    Released(folio);
  }
}

// Subtracts a delta the caller holds; the last reference out hands the folio back. Release,
// so that everything the holder did happens before the folio's next life.
inline void Drop(Folio* folio, uint64_t delta) {
  ReleaseIfLast(folio, folio->counts.fetch_sub(delta, std::memory_order_release), delta);
}

// Drop for a put the caller may not hold: the program's unpin of a page array or spans,
// which names the folios and counts itself. Refused, giving nothing back, when a field of
// the word holds less than the delta's (never pinned, unpinned already, or pinned as the
// other kind): a put that took a mapping's reference would free a folio still mapped.
// Still one atomic when the references are held: the subtraction's old value says whether
// it borrowed, and adding the delta back restores the word exactly, as additions and
// subtractions of the word commute whatever ran in between. Exact when nothing else
// changes the folio's counts meanwhile. A grab racing with a refused put may be refused
// too (the borrowed field's top bit reads as an overflow), and a put racing with it may be
// refused or see a refcount that is not the folio's (a last reference then kept from its
// owner, or, if the refused put borrowed from the pincount alone, a folio given back
// early): the guard is against a program's mistake, not a substitute for its
// bookkeeping.
inline bool DropHeld(Folio* folio, uint64_t delta) {
  const uint64_t old = folio->counts.fetch_sub(delta, std::memory_order_release);
  if (RefcountOf(old) < RefcountOf(delta) || PincountOf(old) < PincountOf(delta)) [[unlikely]] {
    folio->counts.fetch_add(delta, std::memory_order_relaxed);
    return false;
  }
  ReleaseIfLast(folio, old, delta);
  return true;
}

// Sets the dirty flag unless it is set already: a folio unpinned dirty again and again
// takes one atomic per unpin (the drop), not two.
inline void MarkDirty(Folio* folio) {
  constexpr auto kDirty = static_cast<uint32_t>(FolioFlag::kDirty);
  if ((folio->flags.load(std::memory_order_relaxed) & kDirty) == 0) {
    folio->flags.fetch_or(kDirty, std::memory_order_relaxed);
  }
}

// Undoes TryGrab(folio, refs, kind), in one atomic: for the grabs this library took.
inline void Ungrab(Folio* folio, uint32_t refs, RefKind kind, bool dirty) {
  if (dirty) MarkDirty(folio);
  Drop(folio, GrabDelta(folio, refs, kind));
}

// FolioUngrab, and the unpins of what a program hands back: Ungrab, refused (false, nothing
// given back) for a count no grab could have taken, or when the folio holds fewer
// references of `kind` than `refs` (DropHeld). A refused unpin asked to mark the folio
// dirty still does: a flag that says more was written than was is harmless.
inline bool UngrabHeld(Folio* folio, uint32_t refs, RefKind kind, bool dirty) {
  const uint64_t delta = GrabDelta(folio, refs, kind);
  if (delta == 0) [[unlikely]]
    return false;
  if (dirty) MarkDirty(folio);
  return DropHeld(folio, delta);
}

}  // namespace hugemm::folio_internal

#endif  // HUGEMM_RUNTIME_FOLIO_REFS_H_
