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
// inside the read section it was filled in: the table cannot be freed before that section
// ends, and a descent from the root could have read the same pointer a moment earlier.
// A Cursor keeps it beyond that section only as the generation rule below allows.
struct WalkHint {
  Table* table = nullptr;
  int level = 0;
  uintptr_t tag = 0;   // va >> tag_shift for every va under `table`
  int tag_shift = 0;   // the bits `table` covers
  int shift = 0;       // its entries' index shift
  uintptr_t mask = 0;  // and index mask
};

// See PageTable::DecodeBits.
struct LeafBits {
  uint64_t word;                  // the leaf's word: folio, protection, group bit
  int shift;                      // log2 of the logical leaf's bytes
  const ExclusiveRecord* record;  // a device-exclusive entry's record, or nullptr
};

// What GUP-fast needs of the leaf mapping an address: less than a LogicalLeaf, decoded
// from the entry without touching the folio.
struct PinLeaf {
  Folio* folio;
  uintptr_t end;                      // the first byte past the logical leaf
  bool writable;                      // the leaf allows writes
  bool exclusive;                     // a device-exclusive entry: the CPU may not use it
  const std::atomic<uint64_t>* slot;  // the entry read, for the re-check
  uint64_t entry;                     // its value then
};

// The hint of this thread's last Cursor, the table it belongs to, and that table's
// generation when the Cursor's read section began. A Cursor works on it in place.
struct SavedHint {
  const PageTable* table = nullptr;
  uint64_t generation = 0;
  WalkHint hint;
  bool busy = false;  // a Cursor works on it now (a nested one descends from the root)
};
inline thread_local SavedHint t_saved_hint;

// Lock-free lookups in address order inside one read section the caller holds: GUP-fast's
// walk over a range. Consecutive leaves mostly share their table, so each lookup starts
// where the last one ended, and a Cursor starts where this thread's last Cursor on the
// same table ended, when that is provably still safe: the table's generation, read inside
// this read section, is the one read inside that earlier section. Writers bump it after
// unhooking a table and before the grace period that frees it, so an unchanged generation
// means either no table was unhooked since the hint's table was reached (it is still in
// the tree), or this section began before that grace period (which then waits for it).
// Either way the table is not freed while this section lasts; an unhooked table is one a
// prune left empty and dead, so a lookup through it finds nothing mapped and the caller
// takes the locked path. A Cursor made while another is at work on this thread (a lookup
// from inside a pin) keeps no hint: each of its lookups descends from the root.
class Cursor {
 public:
  explicit Cursor(const PageTable& table) : table_(table), hint_(FreeHint(table)) {
    if (hint_ != nullptr) t_saved_hint.busy = true;
  }
  ~Cursor() {
    if (hint_ != nullptr) t_saved_hint.busy = false;
  }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;

  // FreeHint: this thread's saved hint, valid for `table` as a Cursor's is, or nullptr
  // while a Cursor is at work on it. LookupForPin: the member's, with that hint.
  static WalkHint* FreeHint(const PageTable& table);
  static bool LookupForPin(const PageTable& table, WalkHint* hint, uintptr_t va, PinLeaf* out);
  // GUP-fast's one-leaf pin, inside the caller's read section: the plain leaf mapping
  // `va` where this thread's saved hint says, when the hint is free (no Cursor at work on
  // it), belongs to `table`, is valid as a Cursor's is (the table's generation, read now,
  // is the one it was saved under) and covers `va`. False otherwise, or when the entry
  // there is not a plain leaf; the caller then takes a Cursor. It neither descends nor
  // writes the hint, so a pin that finds its leaf at once stores nothing on the way.
  static bool LookupHintedForPin(const PageTable& table, uintptr_t va, PinLeaf* out);

  // The leaf mapping `va` (a device-exclusive entry included) into `out`: false when
  // nothing maps it or it is beyond the address space.
  bool Lookup(uintptr_t va, LeafSnapshot* out);
  // The same for GUP-fast, decoding only what a pin needs.
  bool LookupForPin(uintptr_t va, PinLeaf* out);
  // True while the entry `snapshot` read still holds the same value.
  static bool StillMapped(const LeafSnapshot& snapshot) {
    return static_cast<const std::atomic<uint64_t>*>(snapshot.slot)
               ->load(std::memory_order_acquire) == snapshot.word;
  }
  static bool StillMapped(const PinLeaf& leaf) {
    return leaf.slot->load(std::memory_order_acquire) == leaf.entry;
  }

 private:
  const PageTable& table_;
  // This thread's saved hint (for this table and generation), or nullptr in a Cursor
  // nested inside another.
  WalkHint* hint_;
};

}  // namespace hugemm::pgtable_internal

namespace hugemm {

// From the root, or from the hint's table when `va` is under it, down to the entry that
// maps `va`, the empty entry that leaves it unmapped, or the entry at `to_level`. Inside a
// read section, for an address below va_limit_. Hints serve readers, which descend to the
// PTE level; a descent that stops above it ignores its hint.
inline pgtable_internal::Entry PageTable::Descend(uintptr_t va, int to_level,
                                                  pgtable_internal::WalkHint* hint) const {
  Table* t = root_;
  int level = top_;
  if (to_level == kPteLevel && hint != nullptr && hint->table != nullptr &&
      (va >> hint->tag_shift) == hint->tag) {
    // Under the table the last descent reached. Mostly the entry is right there, and then
    // the hint stays as it is: one load, no stores.
    t = hint->table;
    level = hint->level;
    const size_t index = (va >> hint->shift) & hint->mask;
    const uint64_t w = t->slot(index).load(std::memory_order_acquire);
    if (level == kPteLevel || !pgtable_internal::IsTable(w)) [[likely]]
      return {t, index, level, w};
    t = pgtable_internal::AsTable(w);
    --level;
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
    *hint = {.table = t,
             .level = level,
             .tag = va >> shift_[level + 1],
             .tag_shift = shift_[level + 1],
             .shift = shift_[level],
             .mask = index_mask_[level]};
  }
  return {t, index, level, w};
}

// The one decoding of an entry that maps something: the leaf word it stands for (a
// device-exclusive entry stands for the PTE it replaced, kept in its record) and the size
// of the logical leaf (a contiguous group counts whole). Every reader starts here; the
// translation hot path reads these bits directly rather than a whole LogicalLeaf.
inline pgtable_internal::LeafBits PageTable::DecodeBits(const pgtable_internal::Entry& e) const {
  pgtable_internal::LeafBits b{e.word, shift_[e.level], nullptr};
  if (pgtable_internal::IsExclusive(e.word)) [[unlikely]] {
    b.record = pgtable_internal::AsRecord(e.word);
    b.word = b.record->leaf_word;
  }
  if (b.word & pgtable_internal::kCont) b.shift += cont_shift_[e.level];
  return b;
}

// The logical leaf the entry `e`, which maps `va`, describes: a PUD or PMD leaf, a PTE,
// or a whole contiguous group.
inline LogicalLeaf PageTable::Decode(uintptr_t va, const pgtable_internal::Entry& e) const {
  const pgtable_internal::LeafBits b = DecodeBits(e);
  LogicalLeaf l;
  l.folio = pgtable_internal::AsFolio(b.word);
  l.level = e.level;
  l.cont = (b.word & pgtable_internal::kCont) != 0;
  l.bytes = size_t{1} << b.shift;
  l.va = va & ~(l.bytes - 1);
  const uintptr_t folio_va = va & ~(l.folio->size() - 1);
  l.first_page = (l.va - folio_va) >> geometry_.page_shift;
  l.pages = l.bytes >> geometry_.page_shift;
  l.prot = pgtable_internal::BitsToProt(b.word);
  if (b.record != nullptr) [[unlikely]] {
    l.exclusive = true;
    l.exclusive_owner = b.record->owner;
  }
  return l;
}

inline pgtable_internal::WalkHint* pgtable_internal::Cursor::FreeHint(const PageTable& table) {
  SavedHint& saved = t_saved_hint;
  if (saved.busy) [[unlikely]]
    return nullptr;
  const uint64_t generation = table.generation_.load(std::memory_order_acquire);
  if (saved.table != &table || saved.generation != generation) [[unlikely]] {
    saved.table = &table;
    saved.generation = generation;
    saved.hint.table = nullptr;
  }
  return &saved.hint;
}

inline bool pgtable_internal::Cursor::LookupForPin(uintptr_t va, PinLeaf* out) {
  return LookupForPin(table_, hint_, va, out);
}

inline bool pgtable_internal::Cursor::LookupHintedForPin(const PageTable& table, uintptr_t va,
                                                         PinLeaf* out) {
  const SavedHint& saved = t_saved_hint;
  const WalkHint& h = saved.hint;
  if (saved.busy || saved.table != &table ||
      saved.generation != table.generation_.load(std::memory_order_acquire) || h.table == nullptr ||
      (va >> h.tag_shift) != h.tag || va >= table.va_limit_) [[unlikely]]
    return false;
  const std::atomic<uint64_t>& slot = h.table->slot((va >> h.shift) & h.mask);
  const uint64_t w = slot.load(std::memory_order_acquire);
  if (!IsLeaf(w) || (w & kCont) != 0) [[unlikely]]
    return false;
  out->folio = AsFolio(w);
  out->end = (va | ((uintptr_t{1} << h.shift) - 1)) + 1;
  out->writable = (w & kWrite) != 0;
  out->exclusive = false;
  out->slot = &slot;
  out->entry = w;
  return true;
}

inline bool pgtable_internal::Cursor::LookupForPin(const PageTable& table, WalkHint* hint,
                                                   uintptr_t va, PinLeaf* out) {
  if (va >= table.va_limit_) [[unlikely]]
    return false;
  // Mostly a plain leaf in the table the hint names: its size is that table's entry size,
  // which the hint holds, so nothing else is read. Anything else takes the descent below.
  if (const WalkHint* h = hint;
      h != nullptr && h->table != nullptr && (va >> h->tag_shift) == h->tag) [[likely]] {
    const std::atomic<uint64_t>& slot = h->table->slot((va >> h->shift) & h->mask);
    const uint64_t w = slot.load(std::memory_order_acquire);
    if (IsLeaf(w) && (w & kCont) == 0) [[likely]] {
      out->folio = AsFolio(w);
      out->end = (va | ((uintptr_t{1} << h->shift) - 1)) + 1;
      out->writable = (w & kWrite) != 0;
      out->exclusive = false;
      out->slot = &slot;
      out->entry = w;
      return true;
    }
  }
  const Entry e = table.Descend(va, kPteLevel, hint);
  if (!e.maps()) [[unlikely]]
    return false;
  const LeafBits b = table.DecodeBits(e);
  out->folio = AsFolio(b.word);
  out->end = (va | ((uintptr_t{1} << b.shift) - 1)) + 1;
  out->writable = (b.word & kWrite) != 0;
  out->exclusive = b.record != nullptr;
  out->slot = &e.slot();
  out->entry = e.word;
  return true;
}

inline bool pgtable_internal::Cursor::Lookup(uintptr_t va, LeafSnapshot* out) {
  if (va >= table_.va_limit_) return false;
  const Entry e = table_.Descend(va, kPteLevel, hint_);
  if (!e.maps()) return false;
  out->leaf = table_.Decode(va, e);
  out->slot = &e.slot();
  out->word = e.word;
  return true;
}

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_PGTABLE_WALK_H_
