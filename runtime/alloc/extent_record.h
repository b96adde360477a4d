// One mapping of a pool's backing, as the allocator keeps it: a descriptor per region
// (native page; 2M of a 4K backing) for the folio whose head is the region's first page,
// and split records only for the regions that were ever split.
//
// The region-head descriptor never moves: a split keeps it for the lower half and a
// merge keeps the lower buddy, so heads[i] always describes the folio at the region's
// first page. An unsplit region therefore needs nothing else, and page -> folio is the
// extent's lookup plus arithmetic. A region's split record (region.h) is made on its
// first split, published through the extent's split directory (one pointer per region,
// itself made on the extent's first split) and freed only with the record, so lock-free
// readers never meet freed memory while they hold the index's read side.
//
// Writers hold the owning pool's mutex; Find is lock-free.
#ifndef HUGEMM_RUNTIME_ALLOC_EXTENT_RECORD_H_
#define HUGEMM_RUNTIME_ALLOC_EXTENT_RECORD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "hugemm/backing.h"
#include "hugemm/folio.h"
#include "runtime/alloc/descriptors.h"
#include "runtime/alloc/region.h"

namespace hugemm::alloc_internal {

struct ExtentRecord {
  // `heads`: one descriptor per region, owned by the pool (it outlives the record).
  ExtentRecord(Extent mapped, int region_order, Folio* heads);
  ~ExtentRecord();
  ExtentRecord(const ExtentRecord&) = delete;
  ExtentRecord& operator=(const ExtentRecord&) = delete;

  size_t region_size() const { return size_t{4096} << region_order; }
  size_t RegionOf(const void* addr) const {
    return static_cast<size_t>(static_cast<const std::byte*>(addr) - base) >>
           (region_order + kPageShift);
  }
  std::byte* RegionBase(size_t i) const { return base + (i << (region_order + kPageShift)); }
  bool IsHead(const Folio* f) const { return f >= heads && f < heads + regions; }

  // Region i's split record, or nullptr if it was never split. Lock-free.
  Region* SplitRecord(size_t i) const {
    std::atomic<Region*>* dir = split.load(std::memory_order_acquire);
    return dir == nullptr ? nullptr : dir[i].load(std::memory_order_acquire);
  }
  // Writers: region i's split record, made (and published) if it has none. `whole`: the
  // live region-sized folio it starts with, or nullptr.
  Region* MakeSplitRecord(size_t i, size_t first_native, Folio* whole);

  // The live folio holding `addr` (inside this extent), or nullptr. Lock-free.
  Folio* Find(const void* addr) const;

  // System memory this record holds beyond `heads`: itself, the directory, the split
  // records and the extent's PFN list.
  size_t metadata_bytes() const;

  Extent extent;  // emptied (unmapped) when the pool gives it back
  // Copies of the extent's address and size for lock-free readers, which may still look
  // after the unmap.
  std::byte* const base;
  const size_t size;
  const int region_order;
  const size_t regions;
  Folio* const heads;
  std::atomic<std::atomic<Region*>*> split{nullptr};
  size_t split_records = 0;
  std::unique_ptr<ReserveDescriptors> reserve;  // only with a descriptor reserve
  size_t reserve_bytes = 0;
  size_t usable_pages = 0;  // 4K pages that are folios (all but the reserve)
  size_t free_pages = 0;    // of which in the pool's free lists
  // The address index's link while it keeps the record after an erase without heap.
  ExtentRecord* next_emptied = nullptr;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_EXTENT_RECORD_H_
