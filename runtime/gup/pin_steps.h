// The steps of pinning one leaf, shared by the fast path (fast_path.h) and the slow path
// (slow_path.h): check the leaf, grab references on its folio, check the folio, record.
// Each step says only *whether* it failed (a Stop); the slow path turns that into words.
#ifndef HUGEMM_RUNTIME_GUP_PIN_STEPS_H_
#define HUGEMM_RUNTIME_GUP_PIN_STEPS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>

#include "absl/status/status.h"
#include "hugemm/folio.h"
#include "hugemm/gup.h"
#include "hugemm/pgtable.h"
#include "runtime/folio/refs.h"
#include "runtime/pgtable/walk.h"

namespace hugemm::gup_internal {

// Why a leaf was not taken.
enum class Stop : uint8_t {
  kNone,
  kNotMapped,
  kExclusive,        // a device-exclusive entry: the CPU may not use it
  kReadOnly,         // a WRITE pin of a read-only leaf
  kGrabFailed,       // the folio was freed meanwhile, or a count would overflow
  kChanged,          // the entry changed between the lookup and the re-check
  kBorrowed,         // a LONGTERM pin of borrowed memory, which may move
  kFull,             // the output has no room left
  kNoPfn,            // DMA segments of a folio whose PFNs are unknown
  kNoDeviceAddress,  // DMA segments of memory the device's address space does not map
  kUnencodable,      // a descriptor a page-array entry cannot hold
  kNoMemory,         // the output needs the heap, which has no room
};

inline constexpr GupFlags kAllGupFlags =
    kGupPin | kGupGet | kGupWrite | kGupLongterm | kGupFastOnly | kGupPartial;

// Known flags, exactly one of PIN and GET, LONGTERM only with PIN.
constexpr bool FlagSetValid(GupFlags flags) {
  return !HasAny(flags, ~kAllGupFlags) && HasAny(flags, kGupPin) != HasAny(flags, kGupGet) &&
         (!HasAny(flags, kGupLongterm) || HasAny(flags, kGupPin));
}

// Bit f set when FlagSetValid(f), for every f made of known flags: one table lookup.
inline constexpr uint64_t kValidFlagSets = [] {
  static_assert(static_cast<uint32_t>(kAllGupFlags) < 64);
  uint64_t bits = 0;
  for (uint32_t f = 0; f <= static_cast<uint32_t>(kAllGupFlags); ++f) {
    if (FlagSetValid(static_cast<GupFlags>(f))) bits |= uint64_t{1} << f;
  }
  return bits;
}();

// FlagSetValid as every pin checks it, inline: only a bad set needs words (CheckGupFlags).
inline bool FlagsValid(GupFlags flags) {
  const auto f = static_cast<uint32_t>(flags);
  return f < 64 && ((kValidFlagSets >> f) & 1) != 0;
}

// One pin call: pages [start, start + npages) with `flags`.
struct PinRequest {
  uintptr_t start = 0;
  size_t npages = 0;
  GupFlags flags = kGupNone;

  uintptr_t end() const { return start + (npages << kPageShift); }
  RefKind kind() const { return HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet; }
};

// What a pin needs of its Pinner.
struct PinContext {
  PageTable& table;
  RefGranularity granularity;
  Populator* populator;                              // nullptr: unmapped memory is an error
  std::mutex* populate_mu;                           // one Populate at a time
  const std::function<void(uintptr_t)>* after_grab;  // tests only; nullptr when unset
};

// The part of a leaf a pin takes: pages [first, first + refs) of `folio`, from va.
struct Take {
  Folio* folio;
  uint32_t first;
  uint32_t refs;
};

// What the leaf itself allows, before any reference is taken.
inline Stop CheckLeaf(const LogicalLeaf& leaf, GupFlags flags) {
  if (leaf.exclusive) return Stop::kExclusive;
  if (HasAny(flags, kGupWrite) && !HasAny(leaf.prot, kProtWrite)) return Stop::kReadOnly;
  return Stop::kNone;
}
inline Stop CheckLeaf(const pgtable_internal::PinLeaf& leaf, GupFlags flags) {
  if (leaf.exclusive) [[unlikely]]
    return Stop::kExclusive;
  if (HasAny(flags, kGupWrite) && !leaf.writable) [[unlikely]]
    return Stop::kReadOnly;
  return Stop::kNone;
}

// What the folio allows: decided only once the grab is known to be on the folio mapped
// here (after the re-check, or under the table lock), as the kernel's
// gup_fast_folio_allowed is.
inline Stop CheckFolio(const Folio* folio, GupFlags flags) {
  if (HasAny(flags, kGupLongterm) && folio->has_flag(kFolioBorrowed)) return Stop::kBorrowed;
  return Stop::kNone;
}

// The index in `folio` of the page holding `va`, an address it is mapped at: a folio is
// mapped whole at an address aligned to its size.
inline uint32_t FirstPage(const Folio* folio, uintptr_t va) {
  return static_cast<uint32_t>((va & (folio->size() - 1)) >> kPageShift);
}

// The pages of `leaf` from page-aligned `va` up to `end`.
inline Take TakeOf(const LogicalLeaf& leaf, uintptr_t va, uintptr_t end, int page_shift) {
  const uintptr_t folio_va = leaf.va - (leaf.first_page << page_shift);
  return {leaf.folio, static_cast<uint32_t>((va - folio_va) >> kPageShift),
          static_cast<uint32_t>((std::min(leaf.va + leaf.bytes, end) - va) >> kPageShift)};
}
// The same from what GUP-fast decoded.
inline Take TakeOf(const pgtable_internal::PinLeaf& leaf, uintptr_t va, uintptr_t end) {
  return {leaf.folio, FirstPage(leaf.folio, va),
          static_cast<uint32_t>((std::min(leaf.end, end) - va) >> kPageShift)};
}

// refs references of `kind` on the folio's head: one atomic, or one per page in kPage
// granularity (all or none). No status: the slow path asks FolioTryGrab for the words.
inline bool GrabFast(const Take& t, RefKind kind, RefGranularity granularity) {
  using folio_internal::GrabResult;
  if (granularity == RefGranularity::kFolio) [[likely]] {
    return folio_internal::TryGrab(t.folio, t.refs, kind) == GrabResult::kOk;
  }
  for (uint32_t i = 0; i < t.refs; ++i) {
    if (folio_internal::TryGrab(t.folio, 1, kind) != GrabResult::kOk) [[unlikely]] {
      if (i != 0) folio_internal::Ungrab(t.folio, i, kind, /*dirty=*/false);
      return false;
    }
  }
  return true;
}

// The same with the status of a refused grab: the slow path's.
inline absl::Status Grab(const Take& t, RefKind kind, RefGranularity granularity) {
  if (granularity == RefGranularity::kFolio) {
    return FolioTryGrab(t.folio, static_cast<int32_t>(t.refs), kind);
  }
  for (uint32_t i = 0; i < t.refs; ++i) {
    if (absl::Status st = FolioTryGrab(t.folio, 1, kind); !st.ok()) {
      if (i != 0) FolioUngrab(t.folio, static_cast<int32_t>(i), kind);
      return st;
    }
  }
  return absl::OkStatus();
}

// Gives back what a grab took, in one atomic.
inline void Ungrab(const Take& t, RefKind kind) {
  folio_internal::Ungrab(t.folio, t.refs, kind, /*dirty=*/false);
}

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_PIN_STEPS_H_
