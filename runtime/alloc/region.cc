#include "runtime/alloc/region.h"

#include <algorithm>
#include <bit>
#include <cassert>

#include "runtime/alloc/address_index.h"

namespace hugemm::alloc_internal {

Region::Region(std::byte* base, int order, ExtentRecord* extent, size_t first_native, Folio* head)
    : base_(base),
      extent_(extent),
      first_native_(first_native),
      order_(order),
      head_(head),
      metadata_bytes_(sizeof(Region)) {}

Region::~Region() {
  Split* split = split_.load(std::memory_order_relaxed);
  if (split != nullptr) {
    for (int o = 0; o < order_; ++o) {
      std::atomic<Chunk>* dir = split->dirs[o].load(std::memory_order_relaxed);
      if (dir == nullptr) continue;
      for (size_t c = 0; c < DirLen(o); ++c) delete[] dir[c].load(std::memory_order_relaxed);
      delete[] dir;
    }
    delete split;
  }
  if (std::atomic<SmallRun*>* dir = small_.load(std::memory_order_relaxed)) {
    for (size_t r = 0; r < SmallRuns(); ++r) delete dir[r].load(std::memory_order_relaxed);
    delete[] dir;
  }
}

size_t Region::SlotBytes(int region_order, int order) {
  if (order >= region_order) return 0;  // the inline slot
  if (order == 0) return sizeof(Split) + SmallRecordBytes(region_order);
  const size_t slots = size_t{1} << (region_order - order);
  const size_t chunk = std::min(slots, size_t{1} << kChunkShift);
  return sizeof(Split) + slots * sizeof(Slot) + (slots / chunk) * sizeof(std::atomic<Chunk>);
}

size_t Region::SmallRecordBytes(int region_order) {
  const size_t runs = (size_t{1} << region_order) / kSmallRun;
  return runs * (sizeof(std::atomic<SmallRun*>) + sizeof(SmallRun));
}

size_t Region::ChunkLen(int order) const {
  return std::min(Slots(order), size_t{1} << kChunkShift);
}

size_t Region::DirLen(int order) const { return Slots(order) / ChunkLen(order); }

const Region::SmallRun* Region::RunOf(size_t page) const {
  std::atomic<SmallRun*>* dir = small_.load(std::memory_order_acquire);
  return dir == nullptr ? nullptr : dir[page / kSmallRun].load(std::memory_order_acquire);
}

Folio* Region::SmallDescriptor(size_t page, bool* in_reserve) const {
  const SmallRun* run = RunOf(page);
  if (run == nullptr) return nullptr;
  if (in_reserve != nullptr) *in_reserve = page != 0 && run->in_reserve;
  return page == 0 ? head_ : &run->desc[page % kSmallRun];
}

void Region::AddSmallRun(size_t page, Folio* run, bool in_reserve) {
  std::atomic<SmallRun*>* dir = small_.load(std::memory_order_relaxed);
  if (dir == nullptr) {
    dir = new std::atomic<SmallRun*>[SmallRuns()]();
    metadata_bytes_ += SmallRuns() * sizeof(std::atomic<SmallRun*>);
    small_.store(dir, std::memory_order_release);
  }
  assert(dir[page / kSmallRun].load(std::memory_order_relaxed) == nullptr);
  auto* r = new SmallRun();
  r->desc = run;
  r->in_reserve = in_reserve;
  metadata_bytes_ += sizeof(SmallRun);
  dir[page / kSmallRun].store(r, std::memory_order_release);
}

Folio* Region::At(int order, size_t index) const {
  if (order == order_) return index == 0 ? whole_.load(std::memory_order_acquire) : nullptr;
  if (order < 0 || order > order_) return nullptr;
  if (order == 0) {
    const SmallRun* run = RunOf(index);
    if (run == nullptr) return nullptr;
    const uint64_t bit = uint64_t{1} << (index % kSmallRun);
    if ((run->live.load(std::memory_order_acquire) & bit) == 0) return nullptr;
    return index == 0 ? head_ : &run->desc[index % kSmallRun];
  }
  Split* split = split_.load(std::memory_order_acquire);
  if (split == nullptr) return nullptr;
  // seq_cst: the pair of RetireOrder's unhooking store (address_index.h, IndexRetire).
  std::atomic<Chunk>* dir = split->dirs[order].load(std::memory_order_seq_cst);
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

void Region::RetireOrder(Split* split, int order) {
  std::atomic<Chunk>* dir = split->dirs[order].load(std::memory_order_relaxed);
  if (dir == nullptr) return;
  split->dirs[order].store(nullptr, std::memory_order_seq_cst);
  const size_t len = DirLen(order);
  metadata_bytes_ -= len * sizeof(std::atomic<Chunk>);
  for (size_t c = 0; c < len; ++c) {
    if (dir[c].load(std::memory_order_relaxed) != nullptr) {
      metadata_bytes_ -= ChunkLen(order) * sizeof(Slot);
    }
  }
  IndexRetire([dir, len] {
    for (size_t c = 0; c < len; ++c) delete[] dir[c].load(std::memory_order_relaxed);
    delete[] dir;
  });
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
  if (order == 0) {
    // The live bit of the page's place in its run.
    std::atomic<SmallRun*>* dir = small_.load(std::memory_order_relaxed);
    SmallRun* run =
        dir == nullptr ? nullptr : dir[index / kSmallRun].load(std::memory_order_relaxed);
    assert(run != nullptr || folio == nullptr);  // the pool gives a run before its folios
    if (run == nullptr) return;
    assert(folio == nullptr || folio == SmallDescriptor(index));
    const uint64_t bit = uint64_t{1} << (index % kSmallRun);
    const bool had = (run->live.load(std::memory_order_relaxed) & bit) != 0;
    if (folio != nullptr) {
      if (!had && split->count[0]++ == 0) {
        orders_present_.fetch_or(1u, std::memory_order_release);
      }
      run->live.fetch_or(bit, std::memory_order_release);
    } else {
      run->live.fetch_and(~bit, std::memory_order_release);
      if (had && --split->count[0] == 0) {
        orders_present_.fetch_and(~1u, std::memory_order_release);
      }
    }
    return;
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
      // The order's last folio went: its slots go too, once no reader sees them.
      RetireOrder(split, order);
    }
  }
}

}  // namespace hugemm::alloc_internal
