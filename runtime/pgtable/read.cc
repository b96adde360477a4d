// The readers: translation, lookup, walks. Lock-free inside read sections, except
// WithLeafLocked, which is how a reader that must not lose a race takes the lock.
#include <algorithm>

#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/locked_entry.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"

namespace hugemm {

using pgtable_internal::AsFolio;
using pgtable_internal::AsRecord;
using pgtable_internal::FrameWordPfn;
using pgtable_internal::IsExclusive;
using pgtable_internal::IsLeaf;
using pgtable_internal::IsTable;
using pgtable_internal::kFrameValid;
using pgtable_internal::LockedEntry;
using pgtable_internal::PfnAt;
using pgtable_internal::WalkHint;

// One translation inside a read section the caller holds. Inline so that a batch of them
// runs as one loop the CPU can overlap.
inline bool PageTable::TranslateLocked(uintptr_t va, Translation* out, size_t max_run,
                                       WalkHint* hint) const {
  if (va >= va_limit_) [[unlikely]]
    return false;
  const Entry e = Descend(va, kPteLevel, hint);
  if (!e.maps()) [[unlikely]]
    return false;
  // The leaf's bits, not a whole LogicalLeaf: a batch of translations is this loop.
  const pgtable_internal::LeafBits b = DecodeBits(e);
  Translation& t = *out;
  t.exclusive = false;
  t.exclusive_owner = nullptr;
  if (b.record != nullptr) [[unlikely]] {
    t.exclusive = true;
    t.exclusive_owner = b.record->owner;
  }
  const Folio* folio = AsFolio(b.word);
  t.folio = AsFolio(b.word);
  t.page = (va & (folio->size() - 1)) >> geometry_.page_shift;
  t.pfn = PfnAt(folio, va);
  t.level = e.level;
  t.leaf_bytes = size_t{1} << b.shift;
  t.leaf_va = va & ~(t.leaf_bytes - 1);
  t.run_bytes = t.leaf_va + t.leaf_bytes - va;
  if (max_run > t.run_bytes) [[unlikely]]
    ExtendRun(&t, max_run);
  if (max_run != 0 && t.run_bytes > max_run) t.run_bytes = max_run;
  return true;
}

// Scatter-gather: the run goes on across following leaves while each starts at the next
// frame, up to max_run. Out of line: most translations want the leaf alone.
void PageTable::ExtendRun(Translation* t, size_t max_run) const {
  uintptr_t next = t->leaf_va + t->leaf_bytes;
  uint64_t want = t->pfn == kUnknownPfn ? kUnknownPfn : t->pfn + (t->run_bytes >> kPageShift);
  while (want != kUnknownPfn && t->run_bytes < max_run && next < va_limit_) {
    const Entry n = Descend(next, kPteLevel, nullptr);
    if (!IsLeaf(n.word)) break;
    const LogicalLeaf nl = Decode(next, n);
    if (PfnAt(nl.folio, next) != want) break;
    t->run_bytes += nl.bytes;
    want += nl.bytes >> kPageShift;
    next += nl.bytes;
  }
}

bool PageTable::TranslateInto(const void* p, Translation* out, size_t max_run) const {
  pgtable_internal::RcuReadLock();
  const bool hit = TranslateLocked(reinterpret_cast<uintptr_t>(p), out, max_run, nullptr);
  pgtable_internal::RcuReadUnlock();
  return hit;
}

size_t PageTable::TranslateMany(absl::Span<const void* const> vas, absl::Span<Translation> out,
                                absl::Span<bool> hit) const {
  size_t n = std::min(vas.size(), out.size());
  if (!hit.empty()) n = std::min(n, hit.size());
  // Plain pointers from here: the sizes are settled, and the loop is the hot path.
  const void* const* in = vas.data();
  Translation* to = out.data();
  bool* hits_out = hit.empty() ? nullptr : hit.data();
  size_t hits = 0;
  WalkHint hint;
  pgtable_internal::RcuReadLock();
  for (size_t i = 0; i < n; ++i) {
    const bool h = TranslateLocked(reinterpret_cast<uintptr_t>(in[i]), &to[i], 0, &hint);
    if (hits_out != nullptr) hits_out[i] = h;
    hits += h;
  }
  pgtable_internal::RcuReadUnlock();
  return hits;
}

size_t PageTable::TranslatePfns(absl::Span<const void* const> vas, absl::Span<uint64_t> out) const {
  // Plain pointers from here: the sizes are settled, and the loop is the hot path.
  const size_t n = std::min(vas.size(), out.size());
  const void* const* in = vas.data();
  uint64_t* pfns = out.data();
  // The lowest table the last descent reached. While addresses fall under it and its
  // entries carry frame words, a translation is one read of a frame word, as it would be
  // in a flat array of PFNs: no folio, no descent.
  const Table* near = nullptr;
  uintptr_t base = 0;   // first address `near` covers
  size_t entries = 0;   // 0 until a descent sets `near`: every index is out of range
  int shift = 0;        // its entries' index shift
  uint64_t frames = 0;  // 4K frames per entry, minus one
  size_t hits = 0;
  size_t i = 0;
  pgtable_internal::RcuReadLock();
  for (;;) {
    const size_t run = i;
    for (; i < n; ++i) {
      const auto va = reinterpret_cast<uintptr_t>(in[i]);
      const uintptr_t index = (va - base) >> shift;
      if (index >= entries) [[unlikely]] {
        break;
      }
      const uint64_t fw = near->frame(index).load(std::memory_order_acquire);
      if ((fw & kFrameValid) == 0) [[unlikely]] {
        break;
      }
      pfns[i] = (fw >> 1) + ((va >> kPageShift) & frames);
    }
    hits += i - run;
    if (i == n) break;

    // Off the near table, or an entry with no frame word (a hole, a table, a folio whose
    // PFNs are unknown): read the entry, descending from the root when it is not here.
    const auto va = reinterpret_cast<uintptr_t>(in[i]);
    const uintptr_t index = (va - base) >> shift;
    uint64_t w = index < entries ? near->slot(index).load(std::memory_order_acquire) : 0;
    if (index >= entries || IsTable(w)) {
      if (va >= va_limit_) {
        pfns[i++] = kUnknownPfn;
        continue;
      }
      const Entry e = Descend(va, kPteLevel, nullptr);
      w = e.word;
      near = e.table;
      const int cover = shift_[e.level + 1];
      base = (va >> cover) << cover;
      entries = geometry_.entries(e.level);
      shift = shift_[e.level];
      frames = (geometry_.entry_bytes(e.level) >> kPageShift) - 1;
    }
    if (IsExclusive(w)) [[unlikely]] {
      w = AsRecord(w)->leaf_word;
    } else if (!IsLeaf(w)) {
      pfns[i++] = kUnknownPfn;
      continue;
    }
    pfns[i++] = PfnAt(AsFolio(w), va);
    ++hits;
  }
  pgtable_internal::RcuReadUnlock();
  return hits;
}

uint64_t PageTable::RecordedPfn(uintptr_t va) const {
  if (va >= va_limit_) return kUnknownPfn;
  pgtable_internal::ReadLock rs;
  const Entry e = Descend(va, kPteLevel, nullptr);
  if (!e.maps()) return kUnknownPfn;
  return FrameWordPfn(e.frame().load(std::memory_order_acquire));
}

std::optional<LeafSnapshot> PageTable::Lookup(const void* p) const {
  LeafSnapshot s;
  pgtable_internal::ReadLock rs;
  pgtable_internal::Cursor cursor(*this);
  if (!cursor.Lookup(reinterpret_cast<uintptr_t>(p), &s)) return std::nullopt;
  return s;
}

bool PageTable::StillMapped(const LeafSnapshot& s) const {
  return pgtable_internal::Cursor::StillMapped(s);
}

bool PageTable::WithLeafLocked(const void* p,
                               absl::FunctionRef<void(const LogicalLeaf&)> fn) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (va >= va_limit_) return false;
  for (;;) {
    LockedEntry e(*this, va);
    if (!e.held()) continue;
    if (!e.entry().maps()) return false;
    fn(Decode(va, e.entry()));
    return true;
  }
}

void PageTable::Walk(const void* p, size_t length,
                     absl::FunctionRef<void(const LogicalLeaf&)> fn) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  const uintptr_t end = std::min(va + length < va ? va_limit_ : va + length, va_limit_);
  pgtable_internal::ReadLock rs;
  for (uintptr_t cur = va; cur < end;) {
    const Entry e = Descend(cur, kPteLevel, nullptr);
    if (e.maps()) {
      const LogicalLeaf l = Decode(cur, e);
      fn(l);
      cur = l.va + l.bytes;
    } else {
      const size_t step = geometry_.entry_bytes(e.level);
      cur = (cur & ~(step - 1)) + step;
    }
    if (cur == 0) break;  // wrapped past the top
  }
}

}  // namespace hugemm
