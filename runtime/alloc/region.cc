#include "runtime/alloc/region.h"

#include <algorithm>
#include <bit>

namespace hugemm::alloc_internal {

Region::Region(std::byte* base, int order, ExtentRecord* extent, size_t first_native)
    : base_(base),
      extent_(extent),
      first_native_(first_native),
      order_(order),
      metadata_bytes_(sizeof(Region)) {}

Region::~Region() {
  Split* split = split_.load(std::memory_order_relaxed);
  if (split == nullptr) return;
  for (int o = 0; o < order_; ++o) {
    std::atomic<Chunk>* dir = split->dirs[o].load(std::memory_order_relaxed);
    if (dir == nullptr) continue;
    for (size_t c = 0; c < DirLen(o); ++c) delete[] dir[c].load(std::memory_order_relaxed);
    delete[] dir;
  }
  delete split;
}

size_t Region::SlotBytes(int region_order, int order) {
  if (order >= region_order) return 0;  // the inline slot
  size_t bytes = sizeof(Split);
  for (int o = order; o < region_order; ++o) {
    const size_t slots = size_t{1} << (region_order - o);
    const size_t chunk = std::min(slots, size_t{1} << kChunkShift);
    bytes += slots * sizeof(Slot) + (slots / chunk) * sizeof(std::atomic<Chunk>);
  }
  return bytes;
}

size_t Region::ChunkLen(int order) const {
  return std::min(Slots(order), size_t{1} << kChunkShift);
}

size_t Region::DirLen(int order) const { return Slots(order) / ChunkLen(order); }

Folio* Region::At(int order, size_t index) const {
  if (order == order_) return index == 0 ? whole_.load(std::memory_order_acquire) : nullptr;
  if (order < 0 || order > order_) return nullptr;
  Split* split = split_.load(std::memory_order_acquire);
  if (split == nullptr) return nullptr;
  std::atomic<Chunk>* dir = split->dirs[order].load(std::memory_order_acquire);
  if (dir == nullptr) return nullptr;
  Chunk chunk = dir[index >> kChunkShift].load(std::memory_order_acquire);
  if (chunk == nullptr) return nullptr;
  return chunk[index & ((size_t{1} << kChunkShift) - 1)].load(std::memory_order_acquire);
}

Folio* Region::Find(size_t page) const {
  uint32_t mask = orders_present_.load(std::memory_order_acquire);
  while (mask != 0) {
    const int o = std::countr_zero(mask);
    mask &= mask - 1;
    if (Folio* f = At(o, page >> o)) return f;
  }
  return nullptr;
}

void Region::Set(int order, size_t index, Folio* folio) {
  if (order == order_) {
    // Publish the order before the slot so a reader that sees the slot probes it.
    if (folio != nullptr) orders_present_.fetch_or(1u << order, std::memory_order_release);
    whole_.store(folio, std::memory_order_release);
    if (folio == nullptr) orders_present_.fetch_and(~(1u << order), std::memory_order_release);
    return;
  }
  Split* split = split_.load(std::memory_order_relaxed);
  if (split == nullptr) {
    if (folio == nullptr) return;
    split = new Split();
    metadata_bytes_ += sizeof(Split);
    split_.store(split, std::memory_order_release);
  }
  std::atomic<Chunk>* dir = split->dirs[order].load(std::memory_order_relaxed);
  if (dir == nullptr) {
    if (folio == nullptr) return;
    dir = new std::atomic<Chunk>[DirLen(order)]();
    metadata_bytes_ += DirLen(order) * sizeof(std::atomic<Chunk>);
    split->dirs[order].store(dir, std::memory_order_release);
  }
  Chunk chunk = dir[index >> kChunkShift].load(std::memory_order_relaxed);
  if (chunk == nullptr) {
    if (folio == nullptr) return;
    chunk = new Slot[ChunkLen(order)]();
    metadata_bytes_ += ChunkLen(order) * sizeof(Slot);
    dir[index >> kChunkShift].store(chunk, std::memory_order_release);
  }
  Slot& slot = chunk[index & ((size_t{1} << kChunkShift) - 1)];
  const bool had = slot.load(std::memory_order_relaxed) != nullptr;
  if (folio != nullptr) {
    if (!had && split->count[order]++ == 0) {
      orders_present_.fetch_or(1u << order, std::memory_order_release);
    }
    slot.store(folio, std::memory_order_release);
  } else {
    slot.store(nullptr, std::memory_order_release);
    if (had && --split->count[order] == 0) {
      orders_present_.fetch_and(~(1u << order), std::memory_order_release);
    }
  }
}

}  // namespace hugemm::alloc_internal
