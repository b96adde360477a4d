// Giving memory back: tables left empty by an unmap are detached, and whatever a writer
// unhooked is freed only after a grace period, when no reader can still hold it.
#include "runtime/pgtable/reclaim.h"

#include "hugemm/pgtable.h"
#include "runtime/pgtable/locked_entry.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"

namespace hugemm {

using pgtable_internal::AsTable;
using pgtable_internal::ExclusiveRecord;
using pgtable_internal::IsTable;
using pgtable_internal::LockedEntry;

// Bottom-up over the tables on the path to `va`: detaches each that is empty. A detached
// table is marked dead under its lock, so a writer that reached it just before makes no
// change to it and looks again.
void PageTable::PruneEmpty(uintptr_t va, Garbage* g) {
  for (int level = kPmdLevel; level <= top_; ++level) {
    LockedEntry parent(*this, va, level);  // the entry pointing at the table to prune
    if (!parent.held()) {
      --level;  // changed meanwhile: this level again
      continue;
    }
    if (parent.entry().level != level) return;  // the path ends above: nothing below
    if (!IsTable(parent.word())) continue;
    Table* child = AsTable(parent.word());
    std::lock_guard<std::mutex> child_lock(child->mu);
    if (child->used != 0 || child->dead) return;
    child->dead = true;
    parent.entry().slot().store(0, std::memory_order_release);
    --parent.table()->used;
    g->Add(child);
    g->unhooked = true;
  }
}

void PageTable::Reclaim(Garbage* g) {
  if (g->tables == nullptr && g->records.empty() && g->puts.empty()) return;
  if (g->unhooked) {
    // After the unhooking stores, before the grace period: a reader that then finds the
    // generation unchanged began its read section before the grace period, which waits
    // for it, so the table its saved hint names is not freed under it (walk.h).
    generation_.fetch_add(1, std::memory_order_release);
    g->unhooked = false;
  }
  // A reader that saw an unhooked entry may still be inside its read section: it may read
  // the tables and records, and grab the folio. The entry's folio reference is dropped
  // only after the grace period too, so that the folio (and its descriptor, which its
  // owner may free with the last reference) outlives every such grab.
  pgtable_internal::RcuSynchronize();
  FreeChain(g->tables);
  g->tables = nullptr;
  for (ExclusiveRecord* r : g->records) delete r;
  g->records.clear();
  for (auto& [folio, refs] : g->puts) FolioPut(folio, refs);
  g->puts.clear();
}

}  // namespace hugemm
