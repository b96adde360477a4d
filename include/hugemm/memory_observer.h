// Hearing about the memory a runtime holds: every mapping it gets from the kernel, when it
// is added and before it is removed.
//
// Devices learn memory once, at the runtime's pace, never per I/O: io_uring's registered
// buffers, an IOMMU's IOVA mappings, a NIC's memory regions. What they learn it from is
// a MemoryObserver. The runtime tells its observers of two kinds of range:
//   kPoolExtent  a mapping an allocator pool grew by (every folio Allocate hands out is
//                carved from one); it stays while any of its folios is in use, and goes
//                when Allocator::Shrink or the allocator's end gives it back;
//   kBuffer      a MapBuffer buffer; it goes when the buffer was freed and the last pin
//                on its folios dropped.
//
//   class IovaMapper : public hugemm::MemoryObserver {
//     absl::Status MemoryAdded(const hugemm::MemoryRange& r) override {
//       return MapDma(r.data, r.length, r.page_size);    // once per extent or buffer
//     }
//     void MemoryRemoving(const hugemm::MemoryRange& r) override { UnmapDma(r.data, r.length); }
//   };
//   absl::Status st = rt->AddMemoryObserver(&mapper);  // told of what is held already,
//                                                      // then of every change
//
// Rules for an observer:
//   - MemoryAdded runs after the range is mapped, populated and its PFNs read, before
//     any of it is handed out. An error fails what needed the memory (the allocation or
//     MapBuffer returns it, the mapping is undone, observers told before are told
//     MemoryRemoving in reverse order).
//   - MemoryRemoving runs while the range is still mapped and nothing of it is in use
//     (no folio referenced, no pin); after it returns the range is unmapped.
//   - MayRemove runs first where a caller asks for the range to go on its thread:
//     Runtime::Free of a MapBuffer buffer (hugemm_free) and Allocator::Shrink (hugemm_trim,
//     and the shrink a map short of huge pages makes). An error refuses it there: Free
//     returns it with the buffer still mapped, Shrink keeps that extent. A removal no call
//     asked for at that moment (the last pin of a freed buffer dropping later, a Buffer's
//     destructor, the allocator's or the runtime's end) is not asked: MemoryRemoving
//     follows at once. The default allows every removal. Once every observer allowed a
//     removal, the range is going: an observer added before its MemoryRemoving is neither
//     told of the range nor of its removal (it was not asked).
//   - Calls come from whichever thread allocates, frees, shrinks or drops the last pin,
//     possibly several at once for different ranges (an observer locks what it shares),
//     while the runtime holds internal locks: an observer must not allocate, free or map
//     through the runtime that calls it, nor add or remove observers of it (its own
//     RemoveMemoryObserver included: that waits for the calls under way, its own too).
// Observers are told in the order they were added; removals in the reverse order, so an
// observer built on another (a program's table cloned from the runtime's kernel pin table)
// hears of a range after it and of its removal before it.
#ifndef HUGEMM_MEMORY_OBSERVER_H_
#define HUGEMM_MEMORY_OBSERVER_H_

#include <cstddef>

#include "absl/status/status.h"
#include "hugemm/backing.h"

namespace hugemm {

enum class MemoryRangeKind {
  kPoolExtent,  // an allocator pool's mapping
  kBuffer,      // a MapBuffer buffer
};

// One mapping: virtually contiguous, of one page size, on one node.
struct MemoryRange {
  std::byte* data = nullptr;
  size_t length = 0;
  size_t page_size = 0;  // the native page: 4K, 2M, 1G or the device's alignment
  int node = -1;         // -1: not known
  BackingKind backing = BackingKind::kHugetlb;
  MemoryRangeKind kind = MemoryRangeKind::kPoolExtent;

  bool contains(const void* p, size_t n = 1) const {
    const auto* b = static_cast<const std::byte*>(p);
    return b >= data && n <= length && b <= data + (length - n);
  }
};

// Thread safety: see the rules above; an implementation must take calls from any thread.
class MemoryObserver {
 public:
  virtual ~MemoryObserver() = default;
  // `range` was mapped. An error (any code) refuses it: see the rules above.
  [[nodiscard]] virtual absl::Status MemoryAdded(const MemoryRange& range) = 0;
  // `range` is about to be unmapped.
  virtual void MemoryRemoving(const MemoryRange& range) = 0;
  // May `range` go now, on this thread? An error (any code) refuses: see the rules above.
  [[nodiscard]] virtual absl::Status MayRemove(const MemoryRange& /*range*/) {
    return absl::OkStatus();
  }
};

}  // namespace hugemm

#endif  // HUGEMM_MEMORY_OBSERVER_H_
