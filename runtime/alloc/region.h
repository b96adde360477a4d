// A region's split record: one native huge page (or 2M of a 4K backing) that was split,
// run as a buddy allocator, and the index that answers "which live folio holds page p"
// without a pointer per page. An unsplit region has none (extent_record.h).
//
// Live folios (free or in use) never overlap, so the folio holding page p is the one
// live folio headed at p's (order o) alignment with that order, for some o. Two kinds:
//   - order 0 (4K): the descriptor sits at its page's place in a run of 64 descriptors
//     (kSmallRun pages) that the pool gives the region on first use, and one live bit
//     per page says whether it describes a folio now: 56 bytes and a bit per 4K folio,
//     under the kernel's 64-byte struct page. Page 0's is the region head's descriptor.
//   - larger orders: descriptors come from the pool (slab or reserve), found through
//     slots kept per order in use: a directory per order, made on the order's first folio
//     and retired with its last one, of chunks of up to 64 atomic pointers.
// Lookup reads the order mask and probes each order present: O(1), at most 19 probes,
// one in the common case.
//
// Made on the region's first split and kept (merged back whole, it holds the one slot)
// until its extent's record dies. Readers are lock-free and hold an IndexReader
// (address_index.h): runs stay until the record dies and are then kept by the pool;
// a retired order's slots are freed only once no reader can see them. Writers hold the
// pool's mutex.
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
  // Pages per run of order-0 descriptors.
  static constexpr size_t kSmallRun = 64;

  // `order`: log2 of the region's 4K pages. `first_native`: the extent's native page
  // index of the region's first byte (for PFNs). `head`: the region-head descriptor (the
  // extent's), which page 0's folio always uses.
  Region(std::byte* base, int order, ExtentRecord* extent, size_t first_native, Folio* head);
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
  // Writers (pool mutex): records or clears the folio of (order, index). An order-0
  // folio must be its page's descriptor (SmallDescriptor).
  void Set(int order, size_t index, Folio* folio);

  // Writers: the descriptor of an order-0 folio at `page`, or nullptr while its run is
  // missing (AddSmallRun). `in_reserve` (if not null) says where the run lives.
  Folio* SmallDescriptor(size_t page, bool* in_reserve = nullptr) const;
  // Writers: gives the run of pages [page & ~63, +64) its descriptors, `run` (kSmallRun
  // of them, kept alive by the pool for its life).
  void AddSmallRun(size_t page, Folio* run, bool in_reserve);
  // Writers: the system-memory runs, for the pool to take back when the extent goes.
  template <typename F>
  void ForEachSystemRun(F&& f) const;

  // System-memory bytes of this record and its slots (runs are the pool's).
  size_t metadata_bytes() const { return metadata_bytes_; }

  // The model behind `hugemm info`: a region's record, and what it holds beside it when
  // all its folios have `order`: the slots of that order (the others retired), or for
  // order 0 the run records (the runs' descriptors are counted with the pool's slab).
  static size_t RecordBytes() { return sizeof(Region); }
  static size_t SlotBytes(int region_order, int order);
  static size_t SmallRecordBytes(int region_order);

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

  // A run of kSmallRun order-0 descriptors and which of them describe a live folio.
  struct SmallRun {
    Folio* desc = nullptr;
    bool in_reserve = false;
    std::atomic<uint64_t> live{0};
  };
  size_t SmallRuns() const { return (size_t{1} << order_) / kSmallRun; }
  const SmallRun* RunOf(size_t page) const;
  // Frees an order's slots (once no reader can see them) when its last folio went.
  void RetireOrder(Split* split, int order);

  std::byte* base_;
  ExtentRecord* extent_;
  size_t first_native_;
  int order_;
  Folio* head_;
  std::atomic<uint32_t> orders_present_{0};
  std::atomic<Folio*> whole_{nullptr};  // the slot of the one region-sized folio
  std::atomic<Split*> split_{nullptr};
  std::atomic<std::atomic<SmallRun*>*> small_{nullptr};  // SmallRuns() entries, on first use
  size_t metadata_bytes_;
};

template <typename F>
void Region::ForEachSystemRun(F&& f) const {
  std::atomic<SmallRun*>* dir = small_.load(std::memory_order_relaxed);
  if (dir == nullptr) return;
  for (size_t r = 0; r < SmallRuns(); ++r) {
    const SmallRun* run = dir[r].load(std::memory_order_relaxed);
    if (run != nullptr && !run->in_reserve) f(run->desc);
  }
}

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_REGION_H_
