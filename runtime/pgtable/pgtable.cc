// The shadow table's life and memory: construction, destruction, table allocation, and the
// checks every writer makes. The rest, a file per concern:
//   walk.h          the one descent and the one leaf decoder
//   locked_entry.h  find -> lock -> re-check, for writers and GUP's slow path
//   read.cc         translation, lookup, walks
//   map.cc          map and unmap
//   split.cc        splitting a leaf
//   protect.cc      protection and device-exclusive entries
//   reclaim.cc      pruning empty tables and freeing after a grace period
//   external.cc     memory the program mapped itself
//   verify.cc       the shadow against the live kernel
#include "hugemm/pgtable.h"

#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include "hugemm/page_size.h"
#include "runtime/pgtable/external_region.h"
#include "runtime/pgtable/rcu.h"
#include "runtime/pgtable/table.h"
#include "runtime/pgtable/walk.h"
#include "runtime/util/format.h"

namespace hugemm {

using pgtable_internal::AsFolio;
using pgtable_internal::AsRecord;
using pgtable_internal::AsTable;
using pgtable_internal::IsExclusive;
using pgtable_internal::IsLeaf;
using pgtable_internal::IsTable;

ReadSection::ReadSection() { pgtable_internal::RcuReadLock(); }
ReadSection::~ReadSection() { pgtable_internal::RcuReadUnlock(); }

namespace {

// A table's header, then its entries, then their frame words, in one allocation.
size_t TableBytes(size_t entries) {
  return sizeof(pgtable_internal::Table) + 2 * entries * sizeof(std::atomic<uint64_t>);
}

}  // namespace

PageTable::PageTable(Geometry geometry, Os& os)
    : geometry_(std::move(geometry)), os_(os), geometry_status_(ValidateGeometry(geometry_)) {
  static_assert(sizeof(Table) <= 128 && alignof(Table) <= 64,
                "the embedded root's header must fit in kRootBytes");
  static_assert(kRootBytes >= 128 + 2 * (size_t{1} << kMaxTopIndexBits) * sizeof(uint64_t));
  root_ = new (root_storage_) Table;
  tables_.store(1, std::memory_order_relaxed);  // the root counts, though it is not allocated
  // A table made where an earlier one was destroyed must not take up that one's hints.
  static std::atomic<uint64_t> epochs{0};
  generation_.store(epochs.fetch_add(1, std::memory_order_relaxed) << 32,
                    std::memory_order_relaxed);
  if (!geometry_status_.ok()) {
    // Maps nothing: every address is beyond it (va_limit_ stays 0) and every writer says
    // why.
    InitTable(root_, 0, 0);
    return;
  }
  top_ = geometry_.top();
  for (int l = 0; l <= geometry_.levels; ++l) shift_[l] = geometry_.shift(l);
  for (int l = 0; l < geometry_.levels; ++l) {
    index_mask_[l] = geometry_.entries(l) - 1;
    cont_shift_[l] = geometry_.cont_ok(l) ? __builtin_ctz(geometry_.cont_entries[l]) : 0;
  }
  va_limit_ = uintptr_t{1} << shift_[top_ + 1];
  InitTable(root_, top_, geometry_.entries(top_));
}

PageTable::~PageTable() {
  // No reader or writer may run now; drop every entry's reference and free the tree.
  struct Destroyer {
    const PageTable* self;
    void Run(Table* t) {
      const size_t n = self->geometry_.entries(t->level);
      for (size_t i = 0; i < n; ++i) {
        const uint64_t w = t->slot(i).load(std::memory_order_relaxed);
        if (IsTable(w) && t->level > 0) {
          Table* child = AsTable(w);
          Run(child);
          self->FreeTable(child);
        } else if (IsLeaf(w)) {
          FolioPut(AsFolio(w));
        } else if (IsExclusive(w)) {
          FolioPut(AsRecord(w)->folio);
          delete AsRecord(w);
        }
      }
    }
  };
  if (geometry_status_.ok()) Destroyer{this}.Run(root_);
  FreeChain(root_->deposit);
  root_->~Table();
}

// ---- table memory -----------------------------------------------------------------------

void PageTable::InitTable(Table* t, int level, size_t n) const {
  t->level = level;
  t->frames = t->slots() + n;
  for (size_t i = 0; i < 2 * n; ++i) new (&t->slots()[i]) std::atomic<uint64_t>(0);
}

PageTable::Table* PageTable::NewTable(int level) const {
  void* mem = ::operator new (TableBytes(geometry_.entries(level)),
                              std::align_val_t{alignof(Table)}, std::nothrow);
  if (mem == nullptr) return nullptr;
  Table* t = new (mem) Table;
  InitTable(t, level, geometry_.entries(level));
  tables_.fetch_add(1, std::memory_order_relaxed);
  return t;
}

void PageTable::FreeTable(Table* t) const {
  FreeChain(t->deposit);
  t->~Table();
  ::operator delete (t, std::align_val_t{alignof(Table)});
  tables_.fetch_sub(1, std::memory_order_relaxed);
}

void PageTable::FreeChain(Table* head) const {
  while (head != nullptr) {
    Table* next = head->next;
    FreeTable(head);
    head = next;
  }
}

// ---- what every writer checks -------------------------------------------------------------

absl::Status PageTable::CheckGeometry(const char* op) const {
  if (geometry_status_.ok()) return absl::OkStatus();
  return absl::Status(geometry_status_.code(), absl::StrCat(op, ": ", geometry_status_.message()));
}

absl::Status PageTable::CheckMachineGeometry(const char* op) const {
  if (absl::Status st = CheckGeometry(op); !st.ok()) return st;
  const Geometry host = X86_64Geometry(geometry_.levels == 5);
  bool same = geometry_.page_shift == host.page_shift && geometry_.levels == host.levels;
  for (int l = 0; same && l < host.levels; ++l) {
    same = geometry_.index_bits[l] == host.index_bits[l] &&
           geometry_.leaf_ok[l] == host.leaf_ok[l] && geometry_.cont_ok(l) == host.cont_ok(l);
  }
  if (same) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(op, ": ", geometry_.name, " is not this machine's geometry (x86-64)"));
}

absl::Status PageTable::CheckRange(uintptr_t va, size_t length, const char* op) const {
  if (absl::Status st = CheckGeometry(op); !st.ok()) return st;
  const size_t page = geometry_.page_size();
  if (length == 0 || va % page != 0 || length % page != 0) {
    return absl::InvalidArgumentError(
        hugemm::Format("%s [0x%x, +%u): not a non-empty range of whole %s pages", op, va, length,
                       PageSizeName(page)));
  }
  if (va + length < va || va + length > va_limit_) {
    return absl::OutOfRangeError(hugemm::Format("%s [0x%x, +%u): beyond the %d-bit address space",
                                                op, va, length, shift_[top_ + 1]));
  }
  return absl::OkStatus();
}

absl::Status PageTable::CheckProt(Prot prot) {
  if (HasAny(prot, ~(kProtRead | kProtWrite | kProtExec)) || !HasAny(prot, kProtRead)) {
    return absl::InvalidArgumentError(
        hugemm::Format("protection 0x%x: must include read and only read/write/exec",
                       static_cast<uint32_t>(prot)));
  }
  return absl::OkStatus();
}

absl::Status PageTable::CheckNoHoles(uintptr_t va, size_t length, const char* op) const {
  uintptr_t expect = va;
  bool hole = false;
  Walk(reinterpret_cast<const void*>(va), length, [&](const LogicalLeaf& l) {
    if (!hole && l.va > expect) hole = true;
    if (!hole) expect = l.va + l.bytes;
  });
  if (hole || expect < va + length) {
    return absl::NotFoundError(
        hugemm::Format("%s [0x%x, +%u): 0x%x is not mapped", op, va, length, expect));
  }
  return absl::OkStatus();
}

}  // namespace hugemm
