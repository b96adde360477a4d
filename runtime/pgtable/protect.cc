// Protection changes and device-exclusive entries: the writers that rewrite a leaf in
// place rather than add or remove one.
#include "hugemm/pgtable.h"
#include "runtime/pgtable/invalidating.h"
#include "runtime/pgtable/locked_entry.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/reclaim.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"
#include "runtime/util/format.h"

namespace hugemm {

using pgtable_internal::AsFolio;
using pgtable_internal::AsRecord;
using pgtable_internal::ExclusiveRecord;
using pgtable_internal::Garbage;
using pgtable_internal::Invalidating;
using pgtable_internal::IsExclusive;
using pgtable_internal::kCont;
using pgtable_internal::kExclusiveTag;
using pgtable_internal::kProtBits;
using pgtable_internal::LockedEntry;
using pgtable_internal::ProtToBits;
using pgtable_internal::WholeLeaf;

absl::Status PageTable::Protect(const void* p, size_t length, Prot prot) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(va, length, "protect"); !st.ok()) return st;
  if (absl::Status st = CheckProt(prot); !st.ok()) return st;
  if (absl::Status st = CheckNoHoles(va, length, "protect"); !st.ok()) return st;
  bool exclusive = false;
  Walk(p, length, [&](const LogicalLeaf& l) { exclusive |= l.exclusive; });
  if (exclusive) {
    return absl::FailedPreconditionError(hugemm::Format(
        "protect [0x%x, +%u): holds a device-exclusive entry; restore it first", va, length));
  }
  const uint64_t prot_bits = ProtToBits(prot);
  Invalidating notice(notifiers_, {va, length, InvalidateReason::kProtect, nullptr});
  return ForEachWholeLeaf(va, length, [&](const WholeLeaf& w) {
    if (IsExclusive(w.word)) return true;  // made exclusive meanwhile: leave it
    const uint64_t word = (w.word & ~kProtBits) | prot_bits;
    for (size_t i = 0; i < w.n; ++i) {
      w.table->slot(w.first + i).store(word, std::memory_order_release);
    }
    return true;
  });
}

absl::Status PageTable::MakeExclusive(const void* p, const void* owner) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckGeometry("make exclusive"); !st.ok()) return st;
  if (absl::Status st = CheckRange(va, geometry_.page_size(), "make exclusive"); !st.ok()) {
    return st;
  }
  for (;;) {
    Entry found;
    {
      pgtable_internal::ReadLock rs;
      found = Descend(va, kPteLevel, nullptr);
    }
    if (!found.maps()) {
      return absl::NotFoundError(hugemm::Format("make exclusive: 0x%x is not mapped", va));
    }
    if (IsExclusive(found.word)) {
      return absl::AlreadyExistsError(
          hugemm::Format("make exclusive: 0x%x is already device-exclusive", va));
    }
    if (found.level != kPteLevel || (found.word & kCont) != 0) {
      // Down to one PTE first, a step at a time.
      absl::Status st = SplitLeaf(va);
      if (!st.ok() && st.code() != absl::StatusCode::kAborted) return st;
      continue;
    }
    Invalidating notice(notifiers_,
                        {va, geometry_.page_size(), InvalidateReason::kExclusive, owner});
    LockedEntry e(*this, va);
    if (!e.holds(found)) continue;  // changed while subscribers heard of it: again
    // The record keeps the PTE's folio reference; the frame word stays (table.h).
    auto* r = new ExclusiveRecord{AsFolio(found.word), found.word, owner};
    e.entry().slot().store(reinterpret_cast<uintptr_t>(r) | kExclusiveTag,
                           std::memory_order_release);
    return absl::OkStatus();
  }
}

absl::Status PageTable::RestoreExclusive(const void* p) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckGeometry("restore"); !st.ok()) return st;
  if (absl::Status st = CheckRange(va, geometry_.page_size(), "restore"); !st.ok()) return st;
  Garbage g;
  for (bool done = false; !done;) {
    Entry found;
    const void* owner = nullptr;
    {
      pgtable_internal::ReadLock rs;
      found = Descend(va, kPteLevel, nullptr);
      // The record lives until a grace period after it is unhooked: reading its owner
      // inside this section is safe, and the locked re-check below decides.
      if (IsExclusive(found.word)) owner = AsRecord(found.word)->owner;
    }
    if (!IsExclusive(found.word)) {
      return absl::FailedPreconditionError(
          hugemm::Format("restore: 0x%x is not a device-exclusive entry", va));
    }
    Invalidating notice(notifiers_, {va, geometry_.page_size(), InvalidateReason::kRestore, owner});
    LockedEntry e(*this, va);
    if (!e.holds(found)) continue;
    ExclusiveRecord* r = AsRecord(found.word);
    e.entry().slot().store(r->leaf_word, std::memory_order_release);
    g.records.push_back(r);
    done = true;
  }
  Reclaim(&g);
  return absl::OkStatus();
}

}  // namespace hugemm
