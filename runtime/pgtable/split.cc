// Splitting a leaf one step, as the kernel splits a huge mapping: a contiguous group into
// its entries, a PMD leaf into PTEs on its deposited table, a PUD (or higher) leaf into a
// new table of leaves one level down. The folio and its data stay; only entries change.
//
// In steps: look at the leaf and decide (outside every lock); announce; make the new
// table a PUD split needs (allocation, outside the lock); take the leaf's table lock and,
// if the leaf is still what the look saw, rewrite it; announce the end.
#include "hugemm/pgtable.h"
#include "runtime/pgtable/invalidating.h"
#include "runtime/pgtable/locked_entry.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"
#include "runtime/util/format.h"

namespace hugemm {

using pgtable_internal::AsFolio;
using pgtable_internal::FrameFor;
using pgtable_internal::Invalidating;
using pgtable_internal::IsExclusive;
using pgtable_internal::kCont;
using pgtable_internal::kPresent;
using pgtable_internal::LockedEntry;
using pgtable_internal::Table;

namespace {

// Whether the entry a look found for `va` can be split, and if not, why.
absl::Status CheckSplittable(const Geometry& g, uintptr_t va, const pgtable_internal::Entry& e) {
  if (!e.maps()) return absl::NotFoundError(hugemm::Format("split: 0x%x is not mapped", va));
  if (IsExclusive(e.word)) {
    return absl::FailedPreconditionError(
        hugemm::Format("split: 0x%x is a device-exclusive PTE", va));
  }
  const bool cont = (e.word & kCont) != 0;
  if (e.level == kPteLevel && !cont) {
    return absl::FailedPreconditionError(
        hugemm::Format("split: 0x%x is mapped by a single PTE", va));
  }
  if (!cont && !g.leaf_ok[e.level - 1]) {
    return absl::FailedPreconditionError(
        hugemm::Format("split: %s cannot hold leaves in %s", g.LevelName(e.level - 1), g.name));
  }
  return absl::OkStatus();
}

// One more reference on the leaf's folio for each entry beyond the one it had.
absl::Status TakeChildReferences(Folio* folio, size_t entries, uintptr_t leaf_va) {
  absl::Status st = FolioGet(folio, static_cast<int32_t>(entries - 1));
  if (st.ok()) return st;
  return absl::Status(st.code(), hugemm::Format("split at 0x%x: %s", leaf_va, st.message()));
}

// A contiguous group becomes its entries: each member keeps its word but the group bit,
// and its frame word, which maps the same frames as before.
void SplitGroup(const LockedEntry& e, size_t group) {
  const size_t first = e.entry().index & ~(group - 1);
  for (size_t i = 0; i < group; ++i) {
    e.table()->slot(first + i).store(e.word() & ~kCont, std::memory_order_release);
  }
}

// Fills the `n` entries of `t` with leaves of `word`, each mapping its part of `folio`
// from `va` on (`entry_bytes` apart). `t` is not yet reachable by readers.
void FillLeaves(Table* t, size_t n, uint64_t word, const Folio* folio, uintptr_t va,
                size_t entry_bytes) {
  for (size_t i = 0; i < n; ++i) {
    t->slot(i).store(word, std::memory_order_relaxed);
    t->frame(i).store(FrameFor(folio, va + i * entry_bytes), std::memory_order_relaxed);
  }
  t->used = static_cast<uint32_t>(n);
}

// Replaces the leaf `e` holds by the table `child` of smaller leaves. The leaf's frame word
// goes first: a table maps no frame of its own (table.h).
void HangTable(const LockedEntry& e, Table* child) {
  e.entry().frame().store(0, std::memory_order_release);
  e.entry().slot().store(reinterpret_cast<uintptr_t>(child) | kPresent, std::memory_order_release);
}

}  // namespace

// A table of leaves one level below a PUD (or higher) leaf over the same folio, each PMD
// leaf with its deposit. nullptr when memory runs out.
Table* PageTable::NewLeafTable(int level, uint64_t word, uintptr_t va) const {
  Table* t = NewTable(level);
  if (t == nullptr) return nullptr;
  const size_t n = geometry_.entries(level);
  for (size_t i = 0; level == kPmdLevel && i < n; ++i) {
    Table* d = NewTable(kPteLevel);
    if (d == nullptr) {
      FreeTable(t);
      return nullptr;
    }
    d->next = t->deposit;
    t->deposit = d;
  }
  FillLeaves(t, n, word, AsFolio(word), va, geometry_.entry_bytes(level));
  return t;
}

absl::Status PageTable::SplitLeaf(uintptr_t va) {
  Entry found;
  {
    pgtable_internal::ReadLock rs;
    found = Descend(va, kPteLevel, nullptr);
  }
  if (absl::Status st = CheckSplittable(geometry_, va, found); !st.ok()) return st;
  const bool cont = (found.word & kCont) != 0;
  const size_t bytes =
      cont ? geometry_.cont_bytes(found.level) : geometry_.entry_bytes(found.level);
  const uintptr_t leaf_va = va & ~(bytes - 1);
  const uint64_t child_word = found.word & ~kCont;
  Folio* folio = AsFolio(found.word);
  Invalidating notice(notifiers_, {leaf_va, bytes, InvalidateReason::kSplit, nullptr});

  Table* child = nullptr;
  if (!cont && found.level > kPmdLevel) {
    child = NewLeafTable(found.level - 1, child_word, leaf_va);
    if (child == nullptr) {
      return absl::ResourceExhaustedError(
          hugemm::Format("split of the %s leaf at 0x%x: out of memory",
                         geometry_.LevelName(found.level), leaf_va));
    }
  }
  absl::Status result;
  {
    LockedEntry e(*this, va);
    if (!e.holds(found)) {
      result = absl::AbortedError(hugemm::Format("split: 0x%x changed meanwhile", va));
    } else if (cont) {
      SplitGroup(e, size_t{1} << cont_shift_[found.level]);
    } else if (found.level == kPmdLevel) {
      // Onto the table deposited when the leaf was mapped: no allocation can fail here.
      Table* d = e.table()->deposit;
      const size_t n = geometry_.entries(kPteLevel);
      if (d == nullptr) {
        result = absl::InternalError(
            hugemm::Format("split: the PMD leaf at 0x%x has no deposited table", leaf_va));
      } else if (result = TakeChildReferences(folio, n, leaf_va); result.ok()) {
        e.table()->deposit = d->next;
        d->next = nullptr;
        FillLeaves(d, n, child_word, folio, leaf_va, geometry_.entry_bytes(kPteLevel));
        HangTable(e, d);
      }
    } else if (result = TakeChildReferences(folio, geometry_.entries(found.level - 1), leaf_va);
               result.ok()) {
      HangTable(e, child);
      child = nullptr;
    }
  }
  if (child != nullptr) FreeTable(child);
  return result;
}

absl::Status PageTable::Split(const void* p) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckGeometry("split"); !st.ok()) return st;
  const uintptr_t page = va & ~(geometry_.page_size() - 1);
  // An unaligned address inside a leaf is fine; only the range check matters.
  if (absl::Status st = CheckRange(page, geometry_.page_size(), "split"); !st.ok()) return st;
  absl::Status st;
  do {
    st = SplitLeaf(page);
  } while (st.code() == absl::StatusCode::kAborted);
  return st;
}

}  // namespace hugemm
