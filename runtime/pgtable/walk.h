// The one descent of the shadow table and its one leaf decoder. Every reader and writer
// finds entries with PageTable::Descend and reads leaves with PageTable::Decode; GUP-fast
// walks a range with a Cursor. Inline: they are the hot paths of translation and pinning.
#ifndef HUGEMM_RUNTIME_PGTABLE_WALK_H_
#define HUGEMM_RUNTIME_PGTABLE_WALK_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "hugemm/pgtable.h"
#include "runtime/pgtable/table.h"

namespace hugemm::pgtable_internal {

// Where a descent stopped: the entry that maps the address (a leaf or a device-exclusive
// entry), the empty entry that leaves it unmapped, or, for a descent told to stop at a
// level, the entry of that level whatever it holds.
struct Entry {
  Table* table = nullptr;
  size_t index = 0;
  int level = 0;
  uint64_t word = 0;  // the entry's value when the descent read it

  bool maps() const { return IsLeaf(word) || IsExclusive(word); }
  std::atomic<uint64_t>& slot() const { return table->slot(index); }
  std::atomic<uint64_t>& frame() const { return table->frame(index); }
};

// The lowest table a series of descents reached and the address bits above what it
// covers: a descent for an address under it starts there instead of at the root. Valid
// only inside the read section it was filled in: the table cannot be freed before that
// section ends, and a descent from the root could have read the same pointer a moment
// earlier.
struct WalkHint {
  Table* table = nullptr;
  int level = 0;
  uintptr_t tag = 0;
};

// Lock-free lookups in address order inside one read section the caller holds: GUP-fast's
// walk over a range. Consecutive leaves mostly share their table, so each lookup starts
// where the last one ended.
class Cursor {
 public:
  explicit Cursor(const PageTable& table) : table_(table) {}

  // The leaf mapping `va` (a device-exclusive entry included) into `out`: false when
  // nothing maps it or it is beyond the address space.
  bool Lookup(uintptr_t va, LeafSnapshot* out);
  // True while the entry `snapshot` read still holds the same value.
  static bool StillMapped(const LeafSnapshot& snapshot) {
    return static_cast<const std::atomic<uint64_t>*>(snapshot.slot)
               ->load(std::memory_order_acquire) == snapshot.word;
  }

 private:
  const PageTable& table_;
  WalkHint hint_;
};

}  // namespace hugemm::pgtable_internal

namespace hugemm {

// From the root, or from the hint's table when `va` is under it, down to the entry that
// maps `va`, the empty entry that leaves it unmapped, or the entry at `to_level`. Inside a
// read section, for an address below va_limit_.
inline pgtable_internal::Entry PageTable::Descend(uintptr_t va, int to_level,
                                                  pgtable_internal::WalkHint* hint) const {
  Table* t = root_;
  int level = top_;
  if (hint != nullptr && hint->table != nullptr && hint->level >= to_level &&
      (va >> shift_[hint->level + 1]) == hint->tag) {
    t = hint->table;
    level = hint->level;
  }
  size_t index;
  uint64_t w;
  for (;;) {
    index = (va >> shift_[level]) & index_mask_[level];
    w = t->slot(index).load(std::memory_order_acquire);
    if (level == to_level || !pgtable_internal::IsTable(w)) break;
    t = pgtable_internal::AsTable(w);
    --level;
  }
  if (hint != nullptr) {
    hint->table = t;
    hint->level = level;
    hint->tag = va >> shift_[level + 1];
  }
  return {t, index, level, w};
}

// The logical leaf the entry `e`, which maps `va`, describes: a PUD or PMD leaf, a PTE,
// or a whole contiguous group. A device-exclusive entry describes the PTE it replaced.
inline LogicalLeaf PageTable::Decode(uintptr_t va, const pgtable_internal::Entry& e) const {
  using pgtable_internal::AsFolio;
  LogicalLeaf l;
  uint64_t leaf_word = e.word;
  if (pgtable_internal::IsExclusive(e.word)) [[unlikely]] {
    const pgtable_internal::ExclusiveRecord* r = pgtable_internal::AsRecord(e.word);
    leaf_word = r->leaf_word;
    l.exclusive = true;
    l.exclusive_owner = r->owner;
  }
  l.folio = AsFolio(leaf_word);
  l.level = e.level;
  l.cont = (leaf_word & pgtable_internal::kCont) != 0;
  const int leaf_shift = l.cont ? shift_[e.level] + cont_shift_[e.level] : shift_[e.level];
  l.bytes = size_t{1} << leaf_shift;
  l.va = va & ~(l.bytes - 1);
  const uintptr_t folio_va = va & ~(l.folio->size() - 1);
  l.first_page = (l.va - folio_va) >> geometry_.page_shift;
  l.pages = l.bytes >> geometry_.page_shift;
  l.prot = pgtable_internal::BitsToProt(leaf_word);
  return l;
}

inline bool pgtable_internal::Cursor::Lookup(uintptr_t va, LeafSnapshot* out) {
  if (va >= table_.va_limit_) return false;
  const Entry e = table_.Descend(va, kPteLevel, &hint_);
  if (!e.maps()) return false;
  out->leaf = table_.Decode(va, e);
  out->slot = &e.slot();
  out->word = e.word;
  return true;
}

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_PGTABLE_WALK_H_
