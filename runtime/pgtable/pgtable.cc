// The shadow table's tree: lock-free readers, per-table writer locks, grace-period
// reclaim. See table.h for the entry encoding and pgtable.h for the rules.
#include "hugemm/pgtable.h"

#include <algorithm>
#include <mutex>
#include <new>
#include <utility>

#include "absl/strings/str_format.h"
#include "hugemm/page_size.h"
#include "runtime/pgtable/external_region.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"

namespace hugemm {

using pgtable_internal::AsFolio;
using pgtable_internal::AsRecord;
using pgtable_internal::AsTable;
using pgtable_internal::BitsToProt;
using pgtable_internal::ExclusiveRecord;
using pgtable_internal::FrameFor;
using pgtable_internal::FrameWordPfn;
using pgtable_internal::IsExclusive;
using pgtable_internal::IsLeaf;
using pgtable_internal::IsTable;
using pgtable_internal::kCont;
using pgtable_internal::kExclusiveTag;
using pgtable_internal::kFrameValid;
using pgtable_internal::kLeaf;
using pgtable_internal::kPresent;
using pgtable_internal::kProtBits;
using pgtable_internal::PfnAt;
using pgtable_internal::ProtToBits;

ReadSection::ReadSection() { pgtable_internal::RcuReadLock(); }
ReadSection::~ReadSection() { pgtable_internal::RcuReadUnlock(); }

// Where a walk stopped: the entry that maps `va` (a leaf or an exclusive entry), or the
// empty entry (word 0) at `level` that leaves it unmapped.
struct PageTable::Found {
  Table* table = nullptr;
  size_t index = 0;
  int level = 0;
  uint64_t word = 0;
};

// What a writer unhooked: freed after a grace period, references dropped after that.
struct PageTable::Garbage {
  Table* tables = nullptr;
  std::vector<ExclusiveRecord*> records;
  std::vector<std::pair<Folio*, int32_t>> puts;
};

namespace {

constexpr uint32_t kAllProt = kProtRead | kProtWrite | kProtExec;

std::string Addr(uintptr_t va) { return absl::StrFormat("0x%x", va); }

absl::Status CheckProt(uint32_t prot) {
  if ((prot & ~kAllProt) != 0 || (prot & kProtRead) == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("protection 0x%x: must include read and only read/write/exec", prot));
  }
  return absl::OkStatus();
}

}  // namespace

PageTable::PageTable(Geometry geometry) : geometry_(std::move(geometry)) {
  top_ = geometry_.top();
  for (int l = 0; l <= geometry_.levels; ++l) shift_[l] = geometry_.shift(l);
  for (int l = 0; l < geometry_.levels; ++l) index_mask_[l] = geometry_.entries(l) - 1;
  root_ = NewTable(top_);
  if (root_ == nullptr) throw std::bad_alloc();
}

PageTable::~PageTable() {
  // No reader or writer may run now; drop every entry's reference and free the tree.
  struct Destroyer {
    PageTable* self;
    void Run(Table* t) {
      const size_t n = self->geometry_.entries(t->level);
      for (size_t i = 0; i < n; ++i) {
        const uint64_t w = t->slot(i).load(std::memory_order_relaxed);
        if (IsTable(w) && t->level > 0) {
          Run(AsTable(w));
        } else if (IsLeaf(w)) {
          FolioPut(AsFolio(w));
        } else if (IsExclusive(w)) {
          FolioPut(AsRecord(w)->folio);
          delete AsRecord(w);
        }
      }
      self->FreeTable(t);
    }
  };
  Destroyer{this}.Run(root_);
}

PageTable::Table* PageTable::NewTable(int level) {
  const size_t n = geometry_.entries(level);
  void* mem = ::operator new (sizeof(Table) + 2 * n * sizeof(std::atomic<uint64_t>),
                              std::align_val_t{alignof(Table)}, std::nothrow);
  if (mem == nullptr) return nullptr;
  Table* t = new (mem) Table;
  t->level = level;
  t->slots = reinterpret_cast<std::atomic<uint64_t>*>(t + 1);
  t->frames = t->slots + n;
  for (size_t i = 0; i < 2 * n; ++i) new (&t->slots[i]) std::atomic<uint64_t>(0);
  tables_.fetch_add(1, std::memory_order_relaxed);
  return t;
}

void PageTable::FreeTable(Table* t) {
  FreeChain(t->deposit);
  t->~Table();
  ::operator delete (t, std::align_val_t{alignof(Table)});
  tables_.fetch_sub(1, std::memory_order_relaxed);
}

void PageTable::FreeChain(Table* head) {
  while (head != nullptr) {
    Table* next = head->next;
    FreeTable(head);
    head = next;
  }
}

void PageTable::Reclaim(Garbage* g) {
  if (g->tables != nullptr || !g->records.empty()) {
    pgtable_internal::RcuSynchronize();
    FreeChain(g->tables);
    g->tables = nullptr;
    for (ExclusiveRecord* r : g->records) delete r;
    g->records.clear();
  }
  for (auto& [folio, refs] : g->puts) FolioPut(folio, refs);
  g->puts.clear();
}

// ---- readers ------------------------------------------------------------------------

bool PageTable::Find(uintptr_t va, Found* out) const {
  Table* t = root_;
  for (int level = top_;; --level) {
    const size_t i = (va >> shift_[level]) & index_mask_[level];
    const uint64_t w = t->slot(i).load(std::memory_order_acquire);
    if (IsTable(w) && level > 0) {
      t = AsTable(w);
      continue;
    }
    *out = {t, i, level, w};
    return IsLeaf(w) || IsExclusive(w);
  }
}

// The logical leaf an entry word found at `level` for `va` describes (an exclusive entry
// describes the PTE it replaced). Uses the table's precomputed shifts: it is on the pin
// fast path.
inline LogicalLeaf PageTable::LeafAt(uintptr_t va, int level, uint64_t word) const {
  LogicalLeaf l;
  uint64_t leaf_word = word;
  if (IsExclusive(word)) [[unlikely]] {
    const ExclusiveRecord* r = AsRecord(word);
    leaf_word = r->leaf_word;
    l.exclusive = true;
    l.exclusive_owner = r->owner;
  }
  l.folio = AsFolio(leaf_word);
  l.level = level;
  l.cont = (leaf_word & kCont) != 0;
  const int leaf_shift =
      l.cont ? shift_[level] + __builtin_ctz(geometry_.cont_entries[level]) : shift_[level];
  l.bytes = size_t{1} << leaf_shift;
  l.va = va & ~(l.bytes - 1);
  const uintptr_t folio_va = va & ~(l.folio->size() - 1);
  l.first_page = (l.va - folio_va) >> geometry_.page_shift;
  l.pages = l.bytes >> geometry_.page_shift;
  l.prot = BitsToProt(leaf_word);
  return l;
}

// The walk of one translation, inside a read section the caller holds. Inline so that
// a batch of them runs as one loop the CPU can overlap.
inline bool PageTable::TranslateLocked(uintptr_t va, Translation* out, size_t max_run,
                                       WalkHint* hint) const {
  if ((va >> shift_[top_ + 1]) != 0) return false;
  const Table* t = root_;
  int level = top_;
  // A batch mostly stays under one lowest table: start there while the address does.
  // The table cannot be freed before the read section ends, and a walk from the root
  // could have read the same pointer a moment earlier.
  if (hint != nullptr && hint->table != nullptr && (va >> shift_[hint->level + 1]) == hint->tag) {
    t = hint->table;
    level = hint->level;
  }
  uint64_t w;
  for (;;) {
    w = t->slot((va >> shift_[level]) & index_mask_[level]).load(std::memory_order_acquire);
    if (!IsTable(w) || level == 0) break;
    t = AsTable(w);
    --level;
  }
  if (hint != nullptr) {
    hint->table = t;
    hint->level = level;
    hint->tag = va >> shift_[level + 1];
  }
  const bool hit = IsLeaf(w) || IsExclusive(w);
  if (!hit) return false;
  Translation& tr = *out;
  tr.exclusive = false;
  tr.exclusive_owner = nullptr;
  uint64_t lw = w;
  if (IsExclusive(w)) [[unlikely]] {
    const ExclusiveRecord* r = AsRecord(w);
    lw = r->leaf_word;
    tr.exclusive = true;
    tr.exclusive_owner = r->owner;
  }
  const Folio* folio = AsFolio(lw);
  const int leaf_shift =
      (lw & kCont) ? shift_[level] + __builtin_ctz(geometry_.cont_entries[level]) : shift_[level];
  const uintptr_t offset = va & ((size_t{kPageSize4K} << folio->order) - 1);
  tr.folio = AsFolio(lw);
  tr.page = offset >> geometry_.page_shift;
  tr.pfn = PfnAt(folio, va);
  tr.level = level;
  tr.leaf_bytes = size_t{1} << leaf_shift;
  tr.leaf_va = va & ~(tr.leaf_bytes - 1);
  tr.run_bytes = tr.leaf_va + tr.leaf_bytes - va;
  if (max_run > tr.run_bytes) [[unlikely]] {
    // Scatter-gather: go on while the next leaf starts at the next frame.
    uintptr_t next = tr.leaf_va + tr.leaf_bytes;
    uint64_t want = tr.pfn == kUnknownPfn ? kUnknownPfn : tr.pfn + (tr.run_bytes >> kPageShift);
    while (want != kUnknownPfn && tr.run_bytes < max_run) {
      Found f;
      if (!Find(next, &f) || IsExclusive(f.word)) break;
      const LogicalLeaf l = LeafAt(next, f.level, f.word);
      if (PfnAt(l.folio, next) != want) break;
      tr.run_bytes += l.bytes;
      want += l.bytes >> kPageShift;
      next += l.bytes;
    }
  }
  if (max_run != 0 && tr.run_bytes > max_run) tr.run_bytes = max_run;
  return true;
}

bool PageTable::TranslateInto(const void* p, Translation* out, size_t max_run) const {
  pgtable_internal::RcuReadLock();
  const bool hit = TranslateLocked(reinterpret_cast<uintptr_t>(p), out, max_run, nullptr);
  pgtable_internal::RcuReadUnlock();
  return hit;
}

size_t PageTable::TranslatePfns(const void* const* vas, size_t n, uint64_t* pfns) const {
  // The lowest table the last walk reached. While addresses fall under it and its entries
  // carry frame words, a translation is one read of a frame word, as it would be in a
  // flat array of PFNs: no folio, no walk.
  const Table* near = nullptr;
  uintptr_t base = 0;   // first address `near` covers
  size_t entries = 0;   // 0 until a walk sets `near`: every index is out of range
  int shift = 0;        // its entries' index shift
  uint64_t frames = 0;  // 4K frames per entry, minus one
  size_t hits = 0;
  size_t i = 0;
  pgtable_internal::RcuReadLock();
  for (;;) {
    const size_t run = i;
    for (; i < n; ++i) {
      const auto va = reinterpret_cast<uintptr_t>(vas[i]);
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
    // PFNs are unknown): read the entry, walking from the root when it is not here.
    const auto va = reinterpret_cast<uintptr_t>(vas[i]);
    const uintptr_t index = (va - base) >> shift;
    uint64_t w = index < entries ? near->slot(index).load(std::memory_order_acquire) : 0;
    if (index >= entries || IsTable(w)) {
      Found f;
      if ((va >> shift_[top_ + 1]) != 0) {
        pfns[i++] = kUnknownPfn;
        continue;
      }
      Find(va, &f);
      w = f.word;
      near = f.table;
      const int cover = shift_[f.level + 1];
      base = (va >> cover) << cover;
      entries = geometry_.entries(f.level);
      shift = shift_[f.level];
      frames = (geometry_.entry_bytes(f.level) >> kPageShift) - 1;
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

size_t PageTable::TranslateMany(const void* const* vas, size_t n, Translation* out,
                                bool* hit) const {
  size_t hits = 0;
  WalkHint hint;
  pgtable_internal::RcuReadLock();
  for (size_t i = 0; i < n; ++i) {
    const bool h = TranslateLocked(reinterpret_cast<uintptr_t>(vas[i]), &out[i], 0, &hint);
    if (hit != nullptr) hit[i] = h;
    hits += h;
  }
  pgtable_internal::RcuReadUnlock();
  return hits;
}

uint64_t PageTable::RecordedPfn(uintptr_t va) const {
  if ((va >> shift_[top_ + 1]) != 0) return kUnknownPfn;
  ReadSection rs;
  Found f;
  if (!Find(va, &f)) return kUnknownPfn;
  return FrameWordPfn(f.table->frame(f.index).load(std::memory_order_acquire));
}

std::optional<LeafSnapshot> PageTable::Lookup(const void* p) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if ((va >> shift_[top_ + 1]) != 0) return std::nullopt;
  ReadSection rs;
  Found f;
  if (!Find(va, &f)) return std::nullopt;
  LeafSnapshot s;
  s.leaf = LeafAt(va, f.level, f.word);
  s.slot = &f.table->slot(f.index);
  s.word = f.word;
  return s;
}

bool PageTable::LookupNear(const void* p, LeafSnapshot* out, WalkHint* hint) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if ((va >> shift_[top_ + 1]) != 0) return false;
  const Table* t = root_;
  int level = top_;
  if (hint->table != nullptr && (va >> shift_[hint->level + 1]) == hint->tag) {
    t = hint->table;
    level = hint->level;
  }
  size_t index;
  uint64_t w;
  for (;;) {
    index = (va >> shift_[level]) & index_mask_[level];
    w = t->slot(index).load(std::memory_order_acquire);
    if (!IsTable(w) || level == 0) break;
    t = AsTable(w);
    --level;
  }
  hint->table = t;
  hint->level = level;
  hint->tag = va >> shift_[level + 1];
  if (!IsLeaf(w) && !IsExclusive(w)) return false;
  out->leaf = LeafAt(va, level, w);
  out->slot = &t->slot(index);
  out->word = w;
  return true;
}

bool PageTable::StillMapped(const LeafSnapshot& s) const {
  return static_cast<const std::atomic<uint64_t>*>(s.slot)->load(std::memory_order_acquire) ==
         s.word;
}

bool PageTable::WithLeafLocked(const void* p,
                               absl::FunctionRef<void(const LogicalLeaf&)> fn) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if ((va >> shift_[top_ + 1]) != 0) return false;
  ReadSection rs;
  for (;;) {
    Found f;
    if (!Find(va, &f)) return false;
    Table* t = f.table;
    std::lock_guard<std::mutex> lock(t->mu);
    // Every writer changes an entry under its table's lock: equal now means fixed until
    // the unlock. A dead table was detached meanwhile; walk again.
    if (t->dead || t->slot(f.index).load(std::memory_order_relaxed) != f.word) continue;
    fn(LeafAt(va, f.level, f.word));
    return true;
  }
}

void PageTable::Walk(const void* p, size_t length,
                     absl::FunctionRef<void(const LogicalLeaf&)> fn) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  const uintptr_t limit = uintptr_t{1} << shift_[top_ + 1];
  const uintptr_t end = std::min(va + length < va ? limit : va + length, limit);
  ReadSection rs;
  uintptr_t cur = va;
  while (cur < end) {
    Found f;
    if (Find(cur, &f)) {
      const LogicalLeaf l = LeafAt(cur, f.level, f.word);
      fn(l);
      cur = l.va + l.bytes;
    } else {
      const size_t step = geometry_.entry_bytes(f.level);
      cur = (cur & ~(step - 1)) + step;
    }
    if (cur == 0) break;  // wrapped past the top
  }
}

// ---- writers ------------------------------------------------------------------------

absl::Status PageTable::CheckRange(const void* p, size_t length, const char* op) const {
  const auto va = reinterpret_cast<uintptr_t>(p);
  const size_t page = geometry_.page_size();
  if (length == 0 || va % page != 0 || length % page != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s [%s, +%u): not a non-empty range of whole %s pages", op, Addr(va),
                        length, PageSizeName(page)));
  }
  if (va + length < va || va + length > (uintptr_t{1} << shift_[top_ + 1])) {
    return absl::OutOfRangeError(absl::StrFormat("%s [%s, +%u): beyond the %d-bit address space",
                                                 op, Addr(va), length, shift_[top_ + 1]));
  }
  return absl::OkStatus();
}

absl::Status PageTable::CheckNoHoles(uintptr_t va, size_t length) const {
  uintptr_t expect = va;
  bool hole = false;
  Walk(reinterpret_cast<const void*>(va), length, [&](const LogicalLeaf& l) {
    if (!hole && l.va > expect) hole = true;
    if (!hole) expect = l.va + l.bytes;
  });
  if (hole || expect < va + length) {
    return absl::NotFoundError(absl::StrFormat("%s is not mapped", Addr(expect)));
  }
  return absl::OkStatus();
}

// The table whose entries sit at `level` for `va`, allocating the path down to it. Called
// inside a read section; the table may die before the caller locks it (check `dead`).
absl::StatusOr<PageTable::Table*> PageTable::TableFor(uintptr_t va, int level) {
restart:
  Table* t = root_;
  for (int l = top_; l > level; --l) {
    const size_t i = (va >> shift_[l]) & index_mask_[l];
    uint64_t w = t->slot(i).load(std::memory_order_acquire);
    if (w == 0) {
      Table* child = NewTable(l - 1);
      if (child == nullptr) {
        return absl::ResourceExhaustedError(absl::StrFormat("no memory for a %s table at %s",
                                                            geometry_.LevelName(l - 1), Addr(va)));
      }
      bool dead = false;
      {
        std::lock_guard<std::mutex> lock(t->mu);
        dead = t->dead;
        w = t->slot(i).load(std::memory_order_relaxed);
        if (!dead && w == 0) {
          w = reinterpret_cast<uintptr_t>(child) | kPresent;
          t->slot(i).store(w, std::memory_order_release);
          ++t->used;
          child = nullptr;
        }
      }
      if (child != nullptr) FreeTable(child);  // never published
      if (dead) goto restart;
    }
    if (!IsTable(w)) {
      return absl::AlreadyExistsError(absl::StrFormat("%s is already mapped by a %s leaf of %s",
                                                      Addr(va), geometry_.LevelName(l),
                                                      PageSizeName(geometry_.entry_bytes(l))));
    }
    t = AsTable(w);
  }
  return t;
}

absl::Status PageTable::Map(Folio* folio, const void* p, uint32_t prot) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (folio == nullptr) return absl::InvalidArgumentError("map: no folio");
  const size_t size = folio->size();
  absl::StatusOr<LeafUnit> unit = NaturalUnit(geometry_, size);
  if (!unit.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("map at %s: %s (%s)", Addr(va), unit.status().message(), geometry_.name));
  }
  if (va % size != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("map: %s is not aligned to its %s folio", Addr(va), PageSizeName(size)));
  }
  if (absl::Status st = CheckRange(p, size, "map"); !st.ok()) return st;
  if (absl::Status st = CheckProt(prot); !st.ok()) return st;
  const int level = unit->level;
  const size_t n = unit->entries;
  if (n > geometry_.entries(level)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("map at %s: a %s folio spans more than one %s table", Addr(va),
                        PageSizeName(size), geometry_.LevelName(level)));
  }
  // The deposits first: a PMD leaf must be splittable without memory later.
  Table* deposits = nullptr;
  if (level == kPmdLevel) {
    for (size_t i = 0; i < n; ++i) {
      Table* d = NewTable(kPteLevel);
      if (d == nullptr) {
        FreeChain(deposits);
        return absl::ResourceExhaustedError(
            absl::StrFormat("map at %s: no memory for deposited PTE tables", Addr(va)));
      }
      d->next = deposits;
      deposits = d;
    }
  }
  if (absl::Status st = FolioGet(folio, static_cast<int32_t>(n)); !st.ok()) {
    FreeChain(deposits);
    return absl::Status(st.code(), absl::StrFormat("map at %s: %s", Addr(va), st.message()));
  }
  const uint64_t word = reinterpret_cast<uintptr_t>(folio) | kPresent | kLeaf | ProtToBits(prot) |
                        (unit->cont > 1 ? kCont : 0);
  absl::Status result;
  {
    ReadSection rs;
    for (;;) {
      absl::StatusOr<Table*> t = TableFor(va, level);
      if (!t.ok()) {
        result = absl::Status(t.status().code(), absl::StrCat("map: ", t.status().message()));
        break;
      }
      Table* tab = *t;
      std::lock_guard<std::mutex> lock(tab->mu);
      if (tab->dead) continue;
      const size_t first = (va >> shift_[level]) & index_mask_[level];
      for (size_t i = 0; i < n && result.ok(); ++i) {
        const uint64_t w = tab->slot(first + i).load(std::memory_order_relaxed);
        if (w != 0) {
          result = absl::AlreadyExistsError(absl::StrFormat(
              "map of a %s folio at %s overlaps %s, already mapped%s", PageSizeName(size), Addr(va),
              Addr(va + i * geometry_.entry_bytes(level)), IsTable(w) ? " below this level" : ""));
        }
      }
      if (!result.ok()) break;
      const size_t entry_bytes = geometry_.entry_bytes(level);
      for (size_t i = 0; i < n; ++i) tab->slot(first + i).store(word, std::memory_order_release);
      for (size_t i = 0; i < n; ++i) {
        tab->frame(first + i).store(FrameFor(folio, va + i * entry_bytes),
                                    std::memory_order_release);
      }
      tab->used += n;
      while (deposits != nullptr) {
        Table* next = deposits->next;
        deposits->next = tab->deposit;
        tab->deposit = deposits;
        deposits = next;
      }
      break;
    }
  }
  if (!result.ok()) {
    FreeChain(deposits);
    FolioPut(folio, static_cast<int32_t>(n));
  }
  return result;
}

absl::Status PageTable::SplitLeaf(uintptr_t va, Garbage* /*garbage*/) {
  Found f;
  {
    ReadSection rs;
    if (!Find(va, &f))
      return absl::NotFoundError(absl::StrFormat("split: %s is not mapped", Addr(va)));
  }
  if (IsExclusive(f.word)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("split: %s is a device-exclusive PTE", Addr(va)));
  }
  const uint64_t w = f.word;
  const int level = f.level;
  const bool cont = (w & kCont) != 0;
  if (level == kPteLevel && !cont) {
    return absl::FailedPreconditionError(
        absl::StrFormat("split: %s is mapped by a single PTE", Addr(va)));
  }
  if (!cont && !geometry_.leaf_ok[level - 1]) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "split: %s cannot hold leaves in %s", geometry_.LevelName(level - 1), geometry_.name));
  }
  const size_t bytes = cont ? geometry_.cont_bytes(level) : geometry_.entry_bytes(level);
  const Invalidation inv{va & ~(bytes - 1), bytes, InvalidateReason::kSplit, nullptr};
  notifiers_.InvalidateStart(inv);
  absl::Status result;
  Folio* folio = AsFolio(w);
  const uint64_t child_word = (w & ~kCont);

  // A PUD (or higher) leaf needs a table of leaves one level down, made before locking;
  // when those are PMD leaves each gets its deposit.
  Table* child = nullptr;
  if (!cont && level > kPmdLevel) {
    child = NewTable(level - 1);
    const size_t n = geometry_.entries(level - 1);
    const size_t child_bytes = geometry_.entry_bytes(level - 1);
    bool ok = child != nullptr;
    for (size_t i = 0; ok && i < n; ++i) {
      child->slot(i).store(child_word, std::memory_order_relaxed);
      child->frame(i).store(FrameFor(folio, inv.va + i * child_bytes), std::memory_order_relaxed);
      if (level - 1 == kPmdLevel) {
        Table* d = NewTable(kPteLevel);
        if (d == nullptr) {
          ok = false;
          break;
        }
        d->next = child->deposit;
        child->deposit = d;
      }
    }
    if (!ok) {
      if (child != nullptr) FreeTable(child);
      notifiers_.InvalidateEnd(inv);
      return absl::ResourceExhaustedError(absl::StrFormat(
          "split of the %s leaf at %s: out of memory", geometry_.LevelName(level), Addr(inv.va)));
    }
    child->used = static_cast<uint32_t>(n);
  }

  {
    ReadSection rs;
    Found now;
    if (!Find(va, &now) || now.word != w || now.level != level) {
      result = absl::AbortedError(absl::StrFormat("split: %s changed meanwhile", Addr(va)));
    } else {
      Table* t = now.table;
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->dead || t->slot(now.index).load(std::memory_order_relaxed) != w) {
        result = absl::AbortedError(absl::StrFormat("split: %s changed meanwhile", Addr(va)));
      } else if (cont) {
        // Each member keeps its frame word: it maps the same frames as before.
        const size_t group = static_cast<size_t>(geometry_.cont_entries[level]);
        const size_t first = now.index & ~(group - 1);
        for (size_t i = 0; i < group; ++i) {
          t->slot(first + i).store(child_word, std::memory_order_release);
        }
      } else if (level == kPmdLevel) {
        Table* d = t->deposit;
        const size_t n = geometry_.entries(kPteLevel);
        if (d == nullptr) {
          result = absl::InternalError(
              absl::StrFormat("split: the PMD leaf at %s has no deposited table", Addr(inv.va)));
        } else if (absl::Status st = FolioGet(folio, static_cast<int32_t>(n - 1)); !st.ok()) {
          result = absl::Status(st.code(),
                                absl::StrFormat("split at %s: %s", Addr(inv.va), st.message()));
        } else {
          t->deposit = d->next;
          d->next = nullptr;
          const size_t pte_bytes = geometry_.entry_bytes(kPteLevel);
          for (size_t i = 0; i < n; ++i) {
            d->slot(i).store(child_word, std::memory_order_relaxed);
            d->frame(i).store(FrameFor(folio, inv.va + i * pte_bytes), std::memory_order_relaxed);
          }
          d->used = static_cast<uint32_t>(n);
          t->frame(now.index).store(0, std::memory_order_release);
          t->slot(now.index).store(reinterpret_cast<uintptr_t>(d) | kPresent,
                                   std::memory_order_release);
        }
      } else {
        const size_t n = geometry_.entries(level - 1);
        if (absl::Status st = FolioGet(folio, static_cast<int32_t>(n - 1)); !st.ok()) {
          result = absl::Status(st.code(),
                                absl::StrFormat("split at %s: %s", Addr(inv.va), st.message()));
        } else {
          t->frame(now.index).store(0, std::memory_order_release);
          t->slot(now.index).store(reinterpret_cast<uintptr_t>(child) | kPresent,
                                   std::memory_order_release);
          child = nullptr;
        }
      }
    }
  }
  if (child != nullptr) FreeTable(child);
  notifiers_.InvalidateEnd(inv);
  return result;
}

absl::Status PageTable::Split(const void* p) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(p, geometry_.page_size(), "split"); !st.ok()) {
    // An unaligned address inside a leaf is fine; only the range check matters.
    if (st.code() == absl::StatusCode::kOutOfRange) return st;
  }
  Garbage g;
  absl::Status st;
  do {
    st = SplitLeaf(va & ~(geometry_.page_size() - 1), &g);
  } while (st.code() == absl::StatusCode::kAborted);
  Reclaim(&g);
  return st;
}

// Visits every whole logical leaf of [va, va + length), splitting first the leaves that
// stick out of it. `apply(table, first, n, word, leaf)` runs under the leaf's table lock,
// once the group's n entries from index `first` are known to still hold `word`.
template <typename Apply>
absl::Status PageTable::ForEachWholeLeaf(uintptr_t va, size_t length, Garbage* g, Apply&& apply) {
  const uintptr_t end = va + length;
  uintptr_t cur = va;
  while (cur < end) {
    Found f;
    bool split = false;
    {
      ReadSection rs;
      if (!Find(cur, &f)) {
        const size_t step = geometry_.entry_bytes(f.level);
        cur = (cur & ~(step - 1)) + step;
        continue;
      }
      const LogicalLeaf l = LeafAt(cur, f.level, f.word);
      if (l.va < cur || l.va + l.bytes > end) {
        split = true;
      } else {
        Table* t = f.table;
        std::lock_guard<std::mutex> lock(t->mu);
        const size_t n = l.cont ? static_cast<size_t>(geometry_.cont_entries[f.level]) : 1;
        const size_t first = f.index & ~(n - 1);
        bool same = !t->dead;
        for (size_t i = 0; same && i < n; ++i) {
          same = t->slot(first + i).load(std::memory_order_relaxed) == f.word;
        }
        if (!same) continue;  // changed under us: look again
        apply(t, first, n, f.word, l);
        cur = l.va + l.bytes;
      }
    }
    if (split) {
      absl::Status st = SplitLeaf(cur, g);
      if (!st.ok() && st.code() != absl::StatusCode::kAborted) return st;
    }
  }
  return absl::OkStatus();
}

// Clears whole logical leaves of [va, va + length), splitting those that stick out.
absl::Status PageTable::UnmapLocked(uintptr_t va, size_t length, Garbage* g) {
  return ForEachWholeLeaf(
      va, length, g, [&](Table* t, size_t first, size_t n, uint64_t word, const LogicalLeaf& l) {
        for (size_t i = 0; i < n; ++i) t->frame(first + i).store(0, std::memory_order_release);
        for (size_t i = 0; i < n; ++i) t->slot(first + i).store(0, std::memory_order_release);
        t->used -= static_cast<uint32_t>(n);
        if (IsExclusive(word)) g->records.push_back(AsRecord(word));
        g->puts.emplace_back(l.folio, static_cast<int32_t>(n));
        if (l.level == kPmdLevel) {
          for (size_t i = 0; i < n && t->deposit != nullptr; ++i) {
            Table* d = t->deposit;
            t->deposit = d->next;
            d->next = g->tables;
            g->tables = d;
          }
        }
      });
}

void PageTable::PruneEmpty(uintptr_t va, Garbage* g) {
  // Bottom-up over the tables on the path to va: detach each that is empty.
  for (int child_level = 0; child_level < top_; ++child_level) {
    const int level = child_level + 1;
    ReadSection rs;
    Table* parent = root_;
    for (int l = top_; l > level; --l) {
      const uint64_t w =
          parent->slot((va >> shift_[l]) & index_mask_[l]).load(std::memory_order_acquire);
      if (!IsTable(w)) return;
      parent = AsTable(w);
    }
    const size_t i = (va >> shift_[level]) & index_mask_[level];
    std::lock_guard<std::mutex> lock(parent->mu);
    if (parent->dead) return;
    const uint64_t w = parent->slot(i).load(std::memory_order_relaxed);
    if (!IsTable(w)) continue;
    Table* child = AsTable(w);
    std::lock_guard<std::mutex> child_lock(child->mu);
    if (child->used != 0 || child->dead) return;
    child->dead = true;
    parent->slot(i).store(0, std::memory_order_release);
    --parent->used;
    child->next = g->tables;
    g->tables = child;
  }
}

absl::Status PageTable::Unmap(const void* p, size_t length) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(p, length, "unmap"); !st.ok()) return st;
  if (absl::Status st = CheckNoHoles(va, length); !st.ok()) {
    return absl::Status(st.code(),
                        absl::StrFormat("unmap [%s, +%u): %s", Addr(va), length, st.message()));
  }
  const Invalidation inv{va, length, InvalidateReason::kUnmap, nullptr};
  notifiers_.InvalidateStart(inv);
  Garbage g;
  absl::Status st = UnmapLocked(va, length, &g);
  const size_t step = geometry_.entry_bytes(kPmdLevel);
  for (uintptr_t a = va & ~(step - 1); a < va + length; a += step) PruneEmpty(a, &g);
  notifiers_.InvalidateEnd(inv);
  Reclaim(&g);
  return st;
}

absl::Status PageTable::Protect(const void* p, size_t length, uint32_t prot) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(p, length, "protect"); !st.ok()) return st;
  if (absl::Status st = CheckProt(prot); !st.ok()) return st;
  if (absl::Status st = CheckNoHoles(va, length); !st.ok()) {
    return absl::Status(st.code(),
                        absl::StrFormat("protect [%s, +%u): %s", Addr(va), length, st.message()));
  }
  bool exclusive = false;
  Walk(p, length, [&](const LogicalLeaf& l) { exclusive |= l.exclusive; });
  if (exclusive) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "protect [%s, +%u): holds a device-exclusive entry; restore it first", Addr(va), length));
  }
  const Invalidation inv{va, length, InvalidateReason::kProtect, nullptr};
  notifiers_.InvalidateStart(inv);
  Garbage g;
  const uint64_t prot_bits = ProtToBits(prot);
  absl::Status result = ForEachWholeLeaf(
      va, length, &g, [&](Table* t, size_t first, size_t n, uint64_t word, const LogicalLeaf&) {
        if (IsExclusive(word)) return;  // made exclusive meanwhile: leave it
        const uint64_t nw = (word & ~kProtBits) | prot_bits;
        for (size_t i = 0; i < n; ++i) t->slot(first + i).store(nw, std::memory_order_release);
      });
  notifiers_.InvalidateEnd(inv);
  Reclaim(&g);
  return result;
}

absl::Status PageTable::MakeExclusive(const void* p, const void* owner) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(p, geometry_.page_size(), "make exclusive"); !st.ok()) {
    return st;
  }
  Garbage g;
  absl::Status result;
  for (;;) {
    Found f;
    {
      ReadSection rs;
      if (!Find(va, &f)) {
        result = absl::NotFoundError(absl::StrFormat("make exclusive: %s is not mapped", Addr(va)));
        break;
      }
    }
    if (IsExclusive(f.word)) {
      result = absl::AlreadyExistsError(
          absl::StrFormat("make exclusive: %s is already device-exclusive", Addr(va)));
      break;
    }
    if (f.level != kPteLevel || (f.word & kCont) != 0) {
      absl::Status st = SplitLeaf(va, &g);
      if (!st.ok() && st.code() != absl::StatusCode::kAborted) {
        result = st;
        break;
      }
      continue;
    }
    const Invalidation inv{va, geometry_.page_size(), InvalidateReason::kExclusive, owner};
    notifiers_.InvalidateStart(inv);
    bool done = false;
    {
      ReadSection rs;
      Found now;
      if (Find(va, &now) && now.word == f.word && now.level == kPteLevel) {
        Table* t = now.table;
        std::lock_guard<std::mutex> lock(t->mu);
        if (!t->dead && t->slot(now.index).load(std::memory_order_relaxed) == f.word) {
          auto* r = new ExclusiveRecord{AsFolio(f.word), f.word, owner};
          t->slot(now.index).store(reinterpret_cast<uintptr_t>(r) | kExclusiveTag,
                                   std::memory_order_release);
          done = true;
        }
      }
    }
    notifiers_.InvalidateEnd(inv);
    if (done) break;
  }
  Reclaim(&g);
  return result;
}

absl::Status PageTable::RestoreExclusive(const void* p) {
  const auto va = reinterpret_cast<uintptr_t>(p);
  if (absl::Status st = CheckRange(p, geometry_.page_size(), "restore"); !st.ok()) return st;
  Garbage g;
  absl::Status result;
  for (;;) {
    Found f;
    {
      ReadSection rs;
      Find(va, &f);
    }
    if (!IsExclusive(f.word)) {
      result = absl::FailedPreconditionError(
          absl::StrFormat("restore: %s is not a device-exclusive entry", Addr(va)));
      break;
    }
    // The record lives until a grace period after it is unhooked, and only this
    // writer or an unmap can unhook it; reading its owner here is safe enough for the
    // notification, and the locked re-check below decides.
    const void* owner = nullptr;
    {
      ReadSection rs;
      Found now;
      if (Find(va, &now) && now.word == f.word) owner = AsRecord(f.word)->owner;
    }
    const Invalidation inv{va, geometry_.page_size(), InvalidateReason::kRestore, owner};
    notifiers_.InvalidateStart(inv);
    bool done = false;
    {
      ReadSection rs;
      Found now;
      if (Find(va, &now) && now.word == f.word) {
        Table* t = now.table;
        std::lock_guard<std::mutex> lock(t->mu);
        if (!t->dead && t->slot(now.index).load(std::memory_order_relaxed) == f.word) {
          ExclusiveRecord* r = AsRecord(f.word);
          t->slot(now.index).store(r->leaf_word, std::memory_order_release);
          g.records.push_back(r);
          done = true;
        }
      }
    }
    notifiers_.InvalidateEnd(inv);
    if (done) break;
  }
  Reclaim(&g);
  return result;
}

}  // namespace hugemm
