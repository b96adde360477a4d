// Map and unmap, and the walk over whole leaves that unmap and protect share.
#include "absl/strings/str_cat.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/invalidating.h"
#include "runtime/pgtable/locked_entry.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/reclaim.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"
#include "runtime/util/format.h"

namespace hugemm {

using pgtable_internal::AsRecord;
using pgtable_internal::FrameFor;
using pgtable_internal::Garbage;
using pgtable_internal::Invalidating;
using pgtable_internal::IsExclusive;
using pgtable_internal::IsTable;
using pgtable_internal::kCont;
using pgtable_internal::kLeaf;
using pgtable_internal::kPresent;
using pgtable_internal::LockedEntry;
using pgtable_internal::ProtToBits;
using pgtable_internal::WholeLeaf;

namespace {

// True while the `n` entries from `first` all hold `word` (a contiguous group changes as
// one, under its table's lock).
bool GroupHolds(const pgtable_internal::Table* t, size_t first, size_t n, uint64_t word) {
  for (size_t i = 0; i < n; ++i) {
    if (t->slot(first + i).load(std::memory_order_relaxed) != word) return false;
  }
  return true;
}

}  // namespace

// Hangs tables down to `level` on the path to `va` where entries are empty, so that a
// descent to `level` ends there. AlreadyExists when a leaf sits above `level`.
absl::Status PageTable::MakePath(uintptr_t va, int level) {
  for (;;) {
    Entry above;
    {
      pgtable_internal::ReadLock rs;
      above = Descend(va, level, nullptr);
    }
    if (above.level == level) return absl::OkStatus();
    if (above.word != 0) {
      return absl::AlreadyExistsError(hugemm::Format(
          "0x%x is already mapped by a %s leaf of %s", va, geometry_.LevelName(above.level),
          PageSizeName(geometry_.entry_bytes(above.level))));
    }
    Table* child = NewTable(above.level - 1);
    if (child == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "no memory for a ", geometry_.LevelName(above.level - 1), " table at 0x", absl::Hex(va)));
    }
    LockedEntry e(*this, va, above.level);
    if (e.holds(above)) {
      e.entry().slot().store(reinterpret_cast<uintptr_t>(child) | kPresent,
                             std::memory_order_release);
      ++e.table()->used;
    } else {
      FreeTable(child);  // someone else was faster, or the parent died: look again
    }
  }
}

absl::Status PageTable::Map(Folio* folio, const void* p, Prot prot) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (folio == nullptr) return absl::InvalidArgumentError("map: no folio");
  if ((reinterpret_cast<uintptr_t>(folio) & ~pgtable_internal::kPtrMask) != 0) {
    // An entry holds the descriptor's address in bits 3..55.
    return absl::InvalidArgumentError(
        hugemm::Format("map at 0x%x: a descriptor at %p is not 8-byte aligned below 2^56", va,
                       static_cast<const void*>(folio)));
  }
  if (absl::Status st = CheckGeometry("map"); !st.ok()) return st;
  // Before size(), which shifts by the order: past 2^63 bytes that is no number at all.
  if (folio->order > 63 - kPageShift) {
    return absl::InvalidArgumentError(hugemm::Format(
        "map at 0x%x: a folio of order %d is larger than any address space", va, folio->order));
  }
  const size_t size = folio->size();
  absl::StatusOr<LeafUnit> unit = NaturalUnit(geometry_, size);
  if (!unit.ok()) {
    return absl::InvalidArgumentError(
        hugemm::Format("map at 0x%x: %s (%s)", va, unit.status().message(), geometry_.name));
  }
  if (va % size != 0) {
    return absl::InvalidArgumentError(
        hugemm::Format("map: 0x%x is not aligned to its %s folio", va, PageSizeName(size)));
  }
  if (absl::Status st = CheckRange(va, size, "map"); !st.ok()) return st;
  if (absl::Status st = CheckProt(prot); !st.ok()) return st;
  const int level = unit->level;
  const size_t n = unit->entries;
  if (n > geometry_.entries(level)) {
    return absl::InvalidArgumentError(
        hugemm::Format("map at 0x%x: a %s folio spans more than one %s table", va,
                       PageSizeName(size), geometry_.LevelName(level)));
  }
  // The deposits first: a PMD leaf must be splittable without memory later.
  Table* deposits = nullptr;
  for (size_t i = 0; level == kPmdLevel && i < n; ++i) {
    Table* d = NewTable(kPteLevel);
    if (d == nullptr) {
      FreeChain(deposits);
      // StrCat, not StrFormat: abseil's formatter ends the program when the heap fails
      // inside it, and the heap is what just failed.
      return absl::ResourceExhaustedError(
          absl::StrCat("map at 0x", absl::Hex(va), ": no memory for deposited PTE tables"));
    }
    d->next = deposits;
    deposits = d;
  }
  if (absl::Status st = FolioGet(folio, static_cast<int32_t>(n)); !st.ok()) {
    FreeChain(deposits);
    return absl::Status(st.code(), hugemm::Format("map at 0x%x: %s", va, st.message()));
  }
  const uint64_t word = reinterpret_cast<uintptr_t>(folio) | kPresent | kLeaf | ProtToBits(prot) |
                        (unit->cont > 1 ? kCont : 0);
  absl::Status result;
  // Until the entries hold them, the folio references and the deposits are this call's
  // to give back, on a throw too (an error message the heap had no room for).
  try {
    for (;;) {
      if (result = MakePath(va, level); !result.ok()) {
        result = absl::Status(result.code(), absl::StrCat("map: ", result.message()));
        break;
      }
      LockedEntry e(*this, va, level);
      if (!e.held() || e.entry().level != level) continue;  // the path changed: again
      Table* t = e.table();
      const size_t first = e.entry().index;
      for (size_t i = 0; i < n && result.ok(); ++i) {
        const uint64_t w = t->slot(first + i).load(std::memory_order_relaxed);
        if (w != 0) {
          result = absl::AlreadyExistsError(
              absl::StrCat("map of a ", PageSizeName(size), " folio at 0x", absl::Hex(va),
                           " overlaps 0x", absl::Hex(va + i * geometry_.entry_bytes(level)),
                           ", already mapped", IsTable(w) ? " below this level" : ""));
        }
      }
      if (!result.ok()) break;
      // The entries first, then their frame words (table.h).
      const size_t entry_bytes = geometry_.entry_bytes(level);
      for (size_t i = 0; i < n; ++i) t->slot(first + i).store(word, std::memory_order_release);
      for (size_t i = 0; i < n; ++i) {
        t->frame(first + i).store(FrameFor(folio, va + i * entry_bytes), std::memory_order_release);
      }
      t->used += static_cast<uint32_t>(n);
      while (deposits != nullptr) {
        Table* next = deposits->next;
        deposits->next = t->deposit;
        t->deposit = deposits;
        deposits = next;
      }
      break;
    }
  } catch (...) {
    FreeChain(deposits);
    FolioPut(folio, static_cast<int32_t>(n));
    throw;
  }
  if (!result.ok()) {
    FreeChain(deposits);
    FolioPut(folio, static_cast<int32_t>(n));
  }
  return result;
}

// Visits every whole logical leaf of [va, va + length), splitting first the leaves that
// stick out of it; holes are skipped. `apply` runs under the leaf's table lock.
absl::Status PageTable::ForEachWholeLeaf(uintptr_t va, size_t length,
                                         absl::FunctionRef<bool(const WholeLeaf&)> apply,
                                         uintptr_t* stopped) {
  const uintptr_t end = va + length;
  uintptr_t cur = va;
  while (cur < end) {
    Entry seen;  // the leaf that sticks out
    {
      LockedEntry e(*this, cur);
      if (!e.held()) continue;
      if (!e.entry().maps()) {
        const size_t step = geometry_.entry_bytes(e.entry().level);
        cur = (cur & ~(step - 1)) + step;
        continue;
      }
      const LogicalLeaf l = Decode(cur, e.entry());
      if (l.va >= cur && l.va + l.bytes <= end) {
        const size_t n = l.cont ? size_t{1} << cont_shift_[l.level] : 1;
        const size_t first = e.entry().index & ~(n - 1);
        if (!GroupHolds(e.table(), first, n, e.word())) continue;
        if (!apply(WholeLeaf{e.table(), first, n, e.word(), l})) {
          if (stopped != nullptr) *stopped = cur;
          return absl::OkStatus();
        }
        cur = l.va + l.bytes;
        continue;
      }
      seen = e.entry();
    }
    // It sticks out: split it (outside the lock, which the split takes) and look again.
    if (before_split_ != nullptr) before_split_(before_split_arg_);
    absl::Status st = SplitLeaf(cur);
    if (st.ok() || st.code() == absl::StatusCode::kAborted) continue;
    // Another writer may have split or changed it meanwhile (then the split finds, say,
    // a single PTE): look again. Only a refusal of the leaf seen is the caller's error.
    if (st.code() == absl::StatusCode::kFailedPrecondition) {
      LockedEntry again(*this, cur);
      if (!again.holds(seen)) continue;
    }
    return st;
  }
  return absl::OkStatus();
}

absl::Status PageTable::ClearLeaves(uintptr_t va, size_t length, Garbage* g, uintptr_t* resume) {
  *resume = 0;
  return ForEachWholeLeaf(
      va, length,
      [&](const WholeLeaf& w) {
        // Room for what the leaf leaves behind before it is touched: a leaf is cleared only
        // when its folio reference (and record) can be kept for the reclaim, never lost.
        if (!g->MakeRoom(IsExclusive(w.word))) return false;
        Table* t = w.table;
        // The frame words first, then the entries (table.h).
        for (size_t i = 0; i < w.n; ++i) t->frame(w.first + i).store(0, std::memory_order_release);
        for (size_t i = 0; i < w.n; ++i) t->slot(w.first + i).store(0, std::memory_order_release);
        t->used -= static_cast<uint32_t>(w.n);
        if (IsExclusive(w.word)) g->records.push_back(AsRecord(w.word));
        g->puts.emplace_back(w.leaf.folio, static_cast<int32_t>(w.n));
        for (size_t i = 0; w.leaf.level == kPmdLevel && i < w.n && t->deposit != nullptr; ++i) {
          Table* d = t->deposit;
          t->deposit = d->next;
          g->Add(d);
        }
        return true;
      },
      resume);
}

absl::Status PageTable::Unmap(const void* p, size_t length) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(va, length, "unmap"); !st.ok()) return st;
  if (absl::Status st = CheckNoHoles(va, length, "unmap"); !st.ok()) return st;
  Garbage g;
  absl::Status st;
  {
    Invalidating notice(notifiers_, {va, length, InvalidateReason::kUnmap, nullptr});
    // In batches when the heap runs out: what a batch unhooked is reclaimed (its folio
    // references dropped after a grace period) and the next goes on from where it
    // stopped, so the unmap never fails half done for want of memory. Subscribers have
    // heard the start: pages freed before the end are pages they no longer use.
    for (uintptr_t from = va;;) {
      uintptr_t resume = 0;
      st = ClearLeaves(from, va + length - from, &g, &resume);
      if (!st.ok() || resume == 0) break;
      Reclaim(&g);
      from = resume;
    }
    const size_t step = geometry_.entry_bytes(kPmdLevel);
    for (uintptr_t a = va & ~(step - 1); a < va + length; a += step) PruneEmpty(a, &g);
  }
  Reclaim(&g);
  return st;
}

}  // namespace hugemm
