// IOVA mode: a device behind an IOMMU (VFIO type1) reaches a runtime's memory at IOVAs
// hugemm maps once, never per I/O.
//
//   int container = open("/dev/vfio/vfio", O_RDWR);
//   ... VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU) ...
//   auto mapper = hugemm::IovaMapper::Attach(*rt, container);  // maps what rt holds now
//   hugemm::DmaSegment segs[16];
//   std::vector<hugemm::FolioSpan> pinned;
//   if (!mapper.ok()) return mapper.status();
//   absl::StatusOr<size_t> n = (*mapper)->PinSegments(
//       buf, len, hugemm::kGupPin | hugemm::kGupWrite, 0, segs, &pinned);  // IOVAs, per I/O
//   if (!n.ok()) return n.status();  // nothing pinned
//   ... give segs[0..n) to the device, reap the completion ...
//   rt->pinner().UnpinFolios(pinned, hugemm::RefKind::kPin, /*dirty=*/true);
//
// The mapper is one of the runtime's memory observers (memory_observer.h): every pool
// extent and MapBuffer buffer is mapped into the container with one VFIO_IOMMU_MAP_DMA
// when the runtime adds it, at an IOVA aligned to the range's page size so that the
// IOMMU can use 2M and 1G pages, and unmapped before the runtime unmaps it. Its IOVAs
// come from [iova_base, iova_limit). An unmapped range's IOVAs are handed out again only
// once the window has no room left that was never handed out: until then a device given
// a stale IOVA of freed memory meets an IOMMU fault, never memory mapped after it. That
// holds for what leaves the runtime (a MapBuffer buffer, an extent a pool gives back); an
// Allocate buffer's IOVAs are its pool extent's, which stay mapped after its free and
// reach the next allocation carved there: the pin of each I/O is what keeps those apart.
//
// As a DmaAddressSpace it turns pins into segments in IOVA space: contiguity is judged
// by IOVA (a whole extent is one run however its folios lie physically), the maximum
// segment is honoured, and no PFN is needed.
#ifndef HUGEMM_VFIO_H_
#define HUGEMM_VFIO_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/gup.h"
#include "hugemm/memory_observer.h"
#include "hugemm/os.h"
#include "hugemm/runtime.h"

namespace hugemm {

struct IovaMapperOptions {
  // The IOVAs handed out: [iova_base, iova_limit), both 4K-aligned. The default stays
  // clear of the low 4 GiB (where a platform may reserve windows) and below 2^39, the
  // smallest address width an Intel IOMMU has.
  uint64_t iova_base = uint64_t{1} << 32;
  uint64_t iova_limit = uint64_t{1} << 39;
  // The Os the ioctls go through; nullptr = the runtime's.
  Os* os = nullptr;
};

struct IovaMapperStats {
  size_t mappings = 0;          // ranges mapped now
  size_t bytes = 0;             // their bytes
  uint64_t maps = 0;            // VFIO_IOMMU_MAP_DMA calls that succeeded, ever
  uint64_t unmaps = 0;          // VFIO_IOMMU_UNMAP_DMA calls that succeeded, ever
  uint64_t unmap_failures = 0;  // refused unmaps: their IOVAs are never reused
};

// Thread safety: thread-safe. Pins and lookups take a shared lock and run alongside
// each other; memory coming and going takes it exclusively, but never across an ioctl.
class IovaMapper final : public DmaAddressSpace, private MemoryObserver {
 public:
  // Maps every extent and buffer `rt` holds into the VFIO type1 container
  // `container_fd`, then whatever it adds until the mapper is dropped. The runtime must
  // outlive the mapper. The mapper holds the container by a descriptor of its own
  // (close-on-exec) and maps through it: a program that closes its descriptor first, even
  // one a new container then takes the number of, changes nothing but when the container
  // goes (with the mapper). Mappers of
  // several runtimes may share a container only with disjoint IOVA windows: the kernel
  // refuses a map over IOVAs in use (EEXIST), failing the allocation that brought it.
  //   InvalidArgument: a negative descriptor; a base or limit not 4K-aligned, or an
  //   empty IOVA window.
  //   What Os::VfioCheckContainer said, its errno kept (ErrnoOf) and the code following
  //   it: a descriptor not open for I/O (EBADF: closed, or opened with O_PATH), not a
  //   VFIO container (ENOTTY), or a container with no IOMMU set yet (EINVAL:
  //   VFIO_SET_IOMMU first). An Os that fakes the
  //   container's maps fakes this check too.
  //   ResourceExhausted: the window has no room for what the runtime holds; no
  //   descriptor left to hold the container by (EMFILE, ENFILE).
  //   Otherwise what VFIO_IOMMU_MAP_DMA said (its errno kept, ErrnoOf), naming the range;
  //   whatever was mapped before is unmapped again.
  //   FailedPrecondition: in a child of fork() of the process that opened the runtime
  //   (runtime.h).
  static absl::StatusOr<std::unique_ptr<IovaMapper>> Attach(Runtime& rt, int container_fd,
                                                            const IovaMapperOptions& options = {});
  // Stops observing the runtime, unmaps everything it mapped and closes its descriptor of
  // the container. The device must be quiet: it loses its access. In a child of fork() it
  // changes nothing but the child's copy of the descriptor: the container is the
  // parent's too.
  ~IovaMapper() override;
  IovaMapper(const IovaMapper&) = delete;
  IovaMapper& operator=(const IovaMapper&) = delete;

  // The IOVA of the byte at `va`; nullopt when the mapper has not mapped it.
  [[nodiscard]] std::optional<uint64_t> Iova(const void* va) const;
  // Runtime::pinner().PinSegments with the segments in IOVA space (gup.h): the same
  // flags, outputs and errors, and FailedPrecondition for memory this mapper has not
  // mapped (not the runtime's, or registered with RegisterExternal), naming the address.
  [[nodiscard]] absl::StatusOr<size_t> PinSegments(const void* va, size_t length, GupFlags flags,
                                                   uint64_t max_segment,
                                                   absl::Span<DmaSegment> segments,
                                                   std::vector<FolioSpan>* pinned = nullptr);
  // The IOVA runs of a pin of this runtime's memory (PinnedRange::Segments' errors).
  [[nodiscard]] absl::StatusOr<std::vector<DmaSegment>> Segments(const PinnedRange& pin,
                                                                 uint64_t max_segment = 0) const;

  int container_fd() const { return container_fd_; }
  [[nodiscard]] IovaMapperStats stats() const;

  // DmaAddressSpace.
  bool DeviceAddress(uintptr_t va, uint64_t* addr, uint64_t* contiguous) const override;

 private:
  struct Mapping {
    size_t length = 0;
    uint64_t iova = 0;
  };

  IovaMapper(Runtime& rt, int container_fd, const IovaMapperOptions& options);
  absl::Status MemoryAdded(const MemoryRange& range) override;
  void MemoryRemoving(const MemoryRange& range) override;
  // The destructor's work outside a fork() child: stop observing, unmap everything.
  void UnmapAll();
  // An IOVA for `length` bytes aligned to `align`, or ResourceExhausted.
  absl::StatusOr<uint64_t> TakeIova(size_t length, size_t align) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same from IOVAs never handed out (at and above next_iova_), or nullopt.
  std::optional<uint64_t> TakeFreshIova(size_t length, size_t align)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void GiveIova(uint64_t iova, size_t length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // GiveIova, or, with no heap to record the hole, the IOVAs left unused for good.
  void GiveIovaOrDrop(uint64_t iova, size_t length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Runtime& rt_;
  Os& os_;
  const int container_fd_;  // the program's number, for messages
  int held_fd_ = -1;        // the mapper's own descriptor of the container, for every call
  const IovaMapperOptions options_;
  bool observing_ = false;
  mutable std::shared_mutex mu_;  // std::shared_mutex: visible to ThreadSanitizer
  std::map<uintptr_t, Mapping> mapped_ ABSL_GUARDED_BY(mu_);  // by start address
  std::map<uint64_t, uint64_t> holes_ ABSL_GUARDED_BY(mu_);   // free IOVA start -> length
  uint64_t next_iova_ ABSL_GUARDED_BY(mu_);                   // everything above is free
  IovaMapperStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hugemm

#endif  // HUGEMM_VFIO_H_
