#include "runtime/api/slot_index.h"

namespace hugemm::api_internal {

SlotIndex::SlotIndex(unsigned capacity)
    : capacity_(capacity),
      starts_(new std::atomic<uintptr_t>[capacity]()),
      lengths_(new std::atomic<size_t>[capacity]()) {}

SlotIndex::~SlotIndex() {
  for (std::atomic<Mid*>& m : top_) {
    Mid* mid = m.load(std::memory_order_relaxed);
    if (mid == nullptr) continue;
    for (std::atomic<Leaf*>& leaf : mid->leaves) delete leaf.load(std::memory_order_relaxed);
    delete mid;
  }
}

std::atomic<uint32_t>* SlotIndex::Entry(uintptr_t granule, bool make) {
  const uintptr_t va = granule << kGranuleShift;
  std::atomic<Mid*>& top = top_[va >> kTopShift];
  Mid* mid = top.load(std::memory_order_relaxed);
  if (mid == nullptr) {
    if (!make) return nullptr;
    mid = new Mid();
    top.store(mid, std::memory_order_release);
  }
  std::atomic<Leaf*>& slot = mid->leaves[(va >> kMidShift) & kMidMask];
  Leaf* leaf = slot.load(std::memory_order_relaxed);
  if (leaf == nullptr) {
    if (!make) return nullptr;
    leaf = new Leaf();
    slot.store(leaf, std::memory_order_release);
  }
  return &leaf->entries[granule & kLeafMask];
}

uint32_t SlotIndex::EntryFor(uintptr_t g) const {
  const uintptr_t lo = g << kGranuleShift, hi = lo + (uintptr_t{1} << kGranuleShift);
  // Buffers do not overlap, so those meeting [lo, hi) are the one starting at or before
  // lo (if it reaches past lo) and those starting inside.
  auto it = by_start_.upper_bound(lo);
  if (it != by_start_.begin()) {
    auto before = std::prev(it);
    if (before->first + lengths_[before->second].load(std::memory_order_relaxed) > lo) it = before;
  }
  uint32_t entry = 0;
  for (; it != by_start_.end() && it->first < hi; ++it) {
    if (entry != 0) return kMixed;
    entry = it->second + 1;
  }
  return entry;
}

void SlotIndex::Refresh(uintptr_t start, size_t length, bool make) {
  if ((start + length - 1) >> kTopLimitShift != 0) return;  // found by FindSlow only
  for (uintptr_t g = start >> kGranuleShift; g <= (start + length - 1) >> kGranuleShift; ++g) {
    if (std::atomic<uint32_t>* e = Entry(g, make)) e->store(EntryFor(g), std::memory_order_release);
  }
}

void SlotIndex::Insert(unsigned slot, uintptr_t start, size_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  // The bounds first: a reader that finds the entry finds them too.
  starts_[slot].store(start, std::memory_order_relaxed);
  lengths_[slot].store(length, std::memory_order_relaxed);
  by_start_[start] = slot;
  Refresh(start, length, /*make=*/true);
}

void SlotIndex::Erase(unsigned slot) {
  std::lock_guard<std::mutex> lock(mu_);
  const uintptr_t start = starts_[slot].load(std::memory_order_relaxed);
  const size_t length = lengths_[slot].load(std::memory_order_relaxed);
  if (length == 0) return;
  by_start_.erase(start);
  Refresh(start, length, /*make=*/false);
  starts_[slot].store(0, std::memory_order_relaxed);
  lengths_[slot].store(0, std::memory_order_relaxed);
}

int SlotIndex::FindSlow(uintptr_t va, size_t length) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_start_.upper_bound(va);
  if (it == by_start_.begin()) return -1;
  --it;
  const size_t len = lengths_[it->second].load(std::memory_order_relaxed);
  return length <= len && va - it->first <= len - length ? static_cast<int>(it->second) : -1;
}

}  // namespace hugemm::api_internal
