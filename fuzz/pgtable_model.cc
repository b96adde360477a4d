#include "fuzz/pgtable_model.h"

#include <utility>

namespace hugemm::fuzz {

using Code = absl::StatusCode;

TableModel::TableModel(const Geometry& geometry)
    : g_(geometry), va_limit_(uintptr_t{1} << geometry.va_bits()) {}

const ModelLeaf* TableModel::Find(uintptr_t va, uintptr_t* start) const {
  auto it = leaves_.upper_bound(va);
  if (it == leaves_.begin()) return nullptr;
  --it;
  if (va >= it->first + it->second.bytes) return nullptr;
  if (start != nullptr) *start = it->first;
  return &it->second;
}

bool TableModel::Covered(uintptr_t va, uintptr_t end) const {
  for (uintptr_t cur = va; cur < end;) {
    uintptr_t start = 0;
    const ModelLeaf* l = Find(cur, &start);
    if (l == nullptr) return false;
    cur = start + l->bytes;
  }
  return true;
}

int TableModel::EntriesOf(const Folio* folio) const {
  int n = 0;
  for (const auto& [va, l] : leaves_) {
    if (l.folio == folio) n += l.entries;
  }
  return n;
}

absl::StatusCode TableModel::CheckRange(uintptr_t va, size_t length) const {
  const size_t page = g_.page_size();
  if (length == 0 || va % page != 0 || length % page != 0) return Code::kInvalidArgument;
  if (va + length < va || va + length > va_limit_) return Code::kOutOfRange;
  return Code::kOk;
}

bool TableModel::ProtOk(Prot prot) {
  return !HasAny(prot, ~(kProtRead | kProtWrite | kProtExec)) && HasAny(prot, kProtRead);
}

bool TableModel::SplitOnce(uintptr_t start) {
  auto it = leaves_.find(start);
  const ModelLeaf l = it->second;
  if (l.exclusive) return false;
  ModelLeaf child = l;
  child.cont = false;
  child.entries = 1;
  if (l.cont) {
    child.bytes = g_.entry_bytes(l.level);
  } else {
    if (l.level == kPteLevel || !g_.leaf_ok[l.level - 1]) return false;
    child.level = l.level - 1;
    child.bytes = g_.entry_bytes(child.level);
  }
  leaves_.erase(it);
  for (uintptr_t va = start; va < start + l.bytes; va += child.bytes) leaves_.emplace(va, child);
  return true;
}

std::map<uintptr_t, ModelLeaf>::iterator TableModel::WholeLeafAt(uintptr_t cur, uintptr_t end) {
  for (;;) {
    uintptr_t start = 0;
    const ModelLeaf* l = Find(cur, &start);
    if (start >= cur && start + l->bytes <= end) return leaves_.find(start);
    if (!SplitOnce(start)) return leaves_.end();
  }
}

absl::StatusCode TableModel::Map(Folio* folio, uintptr_t va, Prot prot) {
  if (folio == nullptr) return Code::kInvalidArgument;
  const size_t size = folio->size();
  absl::StatusOr<LeafUnit> unit = NaturalUnit(g_, size);
  if (!unit.ok() || va % size != 0) return Code::kInvalidArgument;
  if (Code c = CheckRange(va, size); c != Code::kOk) return c;
  if (!ProtOk(prot) || unit->entries > g_.entries(unit->level)) return Code::kInvalidArgument;
  // Anything mapped in the range, or a larger leaf over it.
  auto it = leaves_.lower_bound(va);
  if (it != leaves_.end() && it->first < va + size) return Code::kAlreadyExists;
  if (Find(va, nullptr) != nullptr) return Code::kAlreadyExists;
  ModelLeaf l;
  l.bytes = unit->leaf_bytes;
  l.level = unit->level;
  l.entries = unit->cont;
  l.cont = unit->cont > 1;
  l.folio = folio;
  l.prot = prot;
  for (uintptr_t at = va; at < va + size; at += l.bytes) leaves_.emplace(at, l);
  return Code::kOk;
}

absl::StatusCode TableModel::Unmap(uintptr_t va, size_t length) {
  if (Code c = CheckRange(va, length); c != Code::kOk) return c;
  if (!Covered(va, va + length)) return Code::kNotFound;
  for (uintptr_t cur = va; cur < va + length;) {
    auto it = WholeLeafAt(cur, va + length);
    cur = it->first + it->second.bytes;
    leaves_.erase(it);
  }
  return Code::kOk;
}

absl::StatusCode TableModel::Protect(uintptr_t va, size_t length, Prot prot) {
  if (Code c = CheckRange(va, length); c != Code::kOk) return c;
  if (!ProtOk(prot)) return Code::kInvalidArgument;
  if (!Covered(va, va + length)) return Code::kNotFound;
  uintptr_t first = 0;
  Find(va, &first);
  for (auto it = leaves_.find(first); it != leaves_.end() && it->first < va + length; ++it) {
    if (it->second.exclusive) return Code::kFailedPrecondition;
  }
  for (uintptr_t cur = va; cur < va + length;) {
    auto it = WholeLeafAt(cur, va + length);
    it->second.prot = prot;
    cur = it->first + it->second.bytes;
  }
  return Code::kOk;
}

absl::StatusCode TableModel::Split(uintptr_t va) {
  const uintptr_t page = va & ~(g_.page_size() - 1);
  if (Code c = CheckRange(page, g_.page_size()); c != Code::kOk) return c;
  uintptr_t start = 0;
  const ModelLeaf* l = Find(page, &start);
  if (l == nullptr) return Code::kNotFound;
  return SplitOnce(start) ? Code::kOk : Code::kFailedPrecondition;
}

absl::StatusCode TableModel::MakeExclusive(uintptr_t va, const void* owner, bool* split) {
  *split = false;
  if (Code c = CheckRange(va, g_.page_size()); c != Code::kOk) return c;
  for (;;) {
    uintptr_t start = 0;
    const ModelLeaf* l = Find(va, &start);
    if (l == nullptr) return Code::kNotFound;
    if (l->exclusive) return Code::kAlreadyExists;
    if (l->level == kPteLevel && !l->cont) break;
    if (!SplitOnce(start)) return Code::kFailedPrecondition;
    *split = true;
  }
  ModelLeaf& l = leaves_.find(va)->second;
  l.exclusive = true;
  l.owner = owner;
  return Code::kOk;
}

absl::StatusCode TableModel::Restore(uintptr_t va) {
  if (Code c = CheckRange(va, g_.page_size()); c != Code::kOk) return c;
  uintptr_t start = 0;
  const ModelLeaf* l = Find(va, &start);
  if (l == nullptr || !l->exclusive) return Code::kFailedPrecondition;
  ModelLeaf& m = leaves_.find(start)->second;
  m.exclusive = false;
  m.owner = nullptr;
  return Code::kOk;
}

}  // namespace hugemm::fuzz
