// Everything the driver asks of hugemm, in one place: memory the controller keeps for
// its whole life (queues, PRP list pages, identify data), and the pin under each I/O.
//
//   nvme::DmaRegion queue = *nvme::DmaRegion::Allocate(rt, 4096, {});  // contiguous, pinned
//   controller_register = queue.phys();
//
//   nvme::IoPin pin;
//   size_t n = *pin.Pin(rt, buf, len, /*device_writes=*/true, 0, segments);  // at submission
//   ... build PRPs from segments[0..n), submit, reap the completion ...
//   pin.Release();                                                          // at completion
//
// Physical mode (no mapper): the addresses are guest-physical, from the PFNs hugemm
// recorded when it mapped the memory; a device without an IOMMU in front of it uses them
// as they are. IOVA mode (a hugemm::IovaMapper given): the addresses are IOVAs of the
// mapper's container, where hugemm mapped all of the runtime's memory once.
#ifndef HUGEMM_EXAMPLES_NVME_DMA_H_
#define HUGEMM_EXAMPLES_NVME_DMA_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "hugemm/runtime.h"
#include "hugemm/vfio.h"

namespace nvme {

// Where memory comes from: a hugemm backing at one page size.
struct MemorySpec {
  hugemm::BackingKind backing = hugemm::BackingKind::kHugetlb;
  size_t page_size = hugemm::kPageSize2M;
  std::string devdax_path;  // devdax: "/dev/daxX.Y"
  int node = -1;

  // "hugetlb 2M", "devdax /dev/dax0.0".
  std::string Name() const;
  // The size of one page: page_size, or for devdax the device's alignment (sysfs).
  absl::StatusOr<size_t> PageSize() const;
  hugemm::AllocOptions ForAllocator() const;
  hugemm::BufferOptions ForBuffer() const;
};
// "hugetlb:2M", "hugetlb:1G", "devdax:/dev/dax0.0" (the device's alignment is the page
// size). InvalidArgument on anything else.
absl::StatusOr<MemorySpec> ParseMemorySpec(absl::string_view text);

// A physically contiguous, zeroed piece of hugemm memory (one allocator folio) held by
// a long-term pin until it is dropped. Move-only; the Runtime must outlive it.
class DmaRegion {
 public:
  // At least `bytes` (rounded up to a power of two of at least 4K). Errors: those of
  // Runtime::Allocate and of the pin; FailedPrecondition when the PFNs are unknown
  // (pagemap unreadable: not root) or the folio is not physically contiguous. With
  // `iova`, addr() is the region's IOVA (FailedPrecondition when it has none).
  static absl::StatusOr<DmaRegion> Allocate(hugemm::Runtime& rt, size_t bytes,
                                            const MemorySpec& spec,
                                            const hugemm::IovaMapper* iova = nullptr);

  DmaRegion() = default;
  DmaRegion(DmaRegion&&) = default;
  DmaRegion& operator=(DmaRegion&&) = default;

  std::byte* data() const { return buffer_.data(); }
  size_t size() const { return buffer_.size(); }
  // The device's address of data(): physical, or the IOVA in IOVA mode.
  uint64_t phys() const { return phys_; }

 private:
  hugemm::Buffer buffer_;  // declared first: dropped after the pin
  hugemm::PinnedRange pin_;
  uint64_t phys_ = 0;
};

// The pin under one command. Not thread-safe; move-only.
class IoPin {
 public:
  IoPin() = default;
  IoPin(IoPin&& other) noexcept;
  IoPin& operator=(IoPin&& other) noexcept;
  ~IoPin() { Release(); }

  // Pins the folios under [va, va + length) for a device that reads them, or writes
  // them when `device_writes`, and writes the range's physically contiguous runs (each
  // at most `max_segment` bytes, 0 = no limit) into `segments`. Returns how many. With
  // `hold` false, the pin is dropped again at once: the addresses of a driver that
  // forgets to pin, for the test that shows why it must. With `iova`, the runs are in
  // its IOVA space. Errors: those of Pinner::PinSegments (memory hugemm does not map, too
  // many segments, unknown PFNs) or IovaMapper::PinSegments.
  absl::StatusOr<size_t> Pin(hugemm::Runtime& rt, const void* va, size_t length, bool device_writes,
                             uint64_t max_segment, absl::Span<hugemm::DmaSegment> segments,
                             bool hold = true, hugemm::IovaMapper* iova = nullptr);
  // Drops the pin (marking the folios dirty when the device wrote); idempotent.
  void Release();
  bool held() const { return pinner_ != nullptr; }

 private:
  hugemm::Pinner* pinner_ = nullptr;
  bool dirty_ = false;
  std::vector<hugemm::FolioSpan> spans_;
};

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_DMA_H_
