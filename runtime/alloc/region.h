// A region's split record: one native huge page (or 2M of a 4K backing) that was split,
// run as a buddy allocator, and the index that answers "which live folio holds page p"
// without per-page descriptors. An unsplit region has none (extent_record.h).
//
// Live folios (free or in use) never overlap, so the folio holding page p is the one
// live folio whose (order o, index p >> o) slot is set, for some o. Slots exist per order
// in use only: a directory per order, allocated on first use, of chunks of up to 64
// atomic pointers, allocated on first use. A region split down to 4K costs at most 8
// bytes of slots per folio-sized span, beside the 64-byte descriptor each of those
// folios has anyway. Lookup reads the order mask and probes each order present: O(1), at
// most 19 probes, one in the common case.
//
// Made on the region's first split and kept (merged back whole, it holds the one slot)
// until its extent's record dies. Readers are lock-free (acquire loads; chunks live
// until the record dies). Writers hold the pool's mutex.
#ifndef HUGEMM_RUNTIME_ALLOC_REGION_H_
#define HUGEMM_RUNTIME_ALLOC_REGION_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "hugemm/folio.h"

namespace hugemm::alloc_internal {

inline constexpr int kMaxOrder = 18;  // 1G in 4K pages
inline constexpr int kOrders = kMaxOrder + 1;

struct ExtentRecord;

class Region {
 public:
  // `order`: log2 of the region's 4K pages. `first_native`: the extent's native page
  // index of the region's first byte (for PFNs).
  Region(std::byte* base, int order, ExtentRecord* extent, size_t first_native);
  ~Region();
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  std::byte* base() const { return base_; }
  int order() const { return order_; }
  size_t size() const { return size_t{4096} << order_; }
  ExtentRecord* extent() const { return extent_; }
  size_t first_native() const { return first_native_; }

  // The live folio holding 4K page `page` of this region, or nullptr. Lock-free.
  Folio* Find(size_t page) const;
  // The folio whose head is page `index << order` with that order, or nullptr.
  Folio* At(int order, size_t index) const;
  // Writers (pool mutex): records or clears the slot of (order, index).
  void Set(int order, size_t index, Folio* folio);

  // System-memory bytes of this record and its slots.
  size_t metadata_bytes() const { return metadata_bytes_; }

  // The model behind `hugemm info`: a region's record, and the slots (and directories)
  // it ends up with when all its folios have `order` (splitting there from
  // `region_order` creates the slots of every order in between, which stay).
  static size_t RecordBytes() { return sizeof(Region); }
  static size_t SlotBytes(int region_order, int order);

 private:
  using Slot = std::atomic<Folio*>;
  using Chunk = Slot*;
  static constexpr size_t kChunkShift = 6;

  size_t Slots(int order) const { return size_t{1} << (order_ - order); }
  size_t ChunkLen(int order) const;
  size_t DirLen(int order) const;

  // Slots of the orders below the region's, made on the first split and kept (a
  // lock-free reader may be looking at them) until the region dies.
  struct Split {
    std::array<std::atomic<std::atomic<Chunk>*>, kOrders> dirs{};
    std::array<uint32_t, kOrders> count{};
  };

  std::byte* base_;
  ExtentRecord* extent_;
  size_t first_native_;
  int order_;
  std::atomic<uint32_t> orders_present_{0};
  std::atomic<Folio*> whole_{nullptr};  // the slot of the one region-sized folio
  std::atomic<Split*> split_{nullptr};
  size_t metadata_bytes_;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_REGION_H_
