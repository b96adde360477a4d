// Find -> lock -> re-check: how every writer (and GUP's slow path) gets hold of one entry.
#ifndef HUGEMM_RUNTIME_PGTABLE_LOCKED_ENTRY_H_
#define HUGEMM_RUNTIME_PGTABLE_LOCKED_ENTRY_H_

#include <cstddef>
#include <cstdint>

#include "hugemm/pgtable.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"

namespace hugemm::pgtable_internal {

// Descends to the entry of `va` (stopping at `level`), locks the table holding it, and
// holds the entry if that table is still in the tree and the entry still holds the word
// the descent read. While held, no writer can change the entry (every writer changes
// entries under their table's lock), and the read section it keeps open keeps the table
// alive. Not held: a writer changed the entry or detached the table between the descent
// and the lock; drop this one and look again.
//
// Writers lock parent before child; a LockedEntry locks one table, so the caller may lock
// a child of it (and nothing above it) while holding it.
class LockedEntry {
 public:
  LockedEntry(const PageTable& table, uintptr_t va, int level = kPteLevel)
      : entry_(table.Descend(va, level, nullptr)) {
    entry_.table->mu.lock();
    held_ = !entry_.table->dead && entry_.slot().load(std::memory_order_relaxed) == entry_.word;
  }
  ~LockedEntry() { entry_.table->mu.unlock(); }
  LockedEntry(const LockedEntry&) = delete;
  LockedEntry& operator=(const LockedEntry&) = delete;

  bool held() const { return held_; }
  // Held and mapping what `expected` (an earlier look) saw, at its level.
  bool holds(const Entry& expected) const {
    return held_ && entry_.word == expected.word && entry_.level == expected.level;
  }
  const Entry& entry() const { return entry_; }
  Table* table() const { return entry_.table; }
  uint64_t word() const { return entry_.word; }

 private:
  ReadLock read_lock_;  // first: the table stays alive until after the unlock
  Entry entry_;
  bool held_ = false;
};

// One whole logical leaf of a range, held under its table's lock: `n` entries from index
// `first` of `table`, each holding `word`.
struct WholeLeaf {
  Table* table;
  size_t first;
  size_t n;
  uint64_t word;
  const LogicalLeaf& leaf;
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_LOCKED_ENTRY_H_
