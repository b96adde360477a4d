// PFN stability: one kernel long-term pin per page for the life of a mapping.
//
// A PFN handed to a device must not change while the device may use it. Device-DAX
// pages never move, but hugetlb pages can be migrated by the kernel (memory offlining,
// compaction that makes room for gigantic pages) unless something holds a long-term pin
// on them: the kernel never migrates a page with a FOLL_LONGTERM pin (it moves such
// pages out of movable zones before pinning them instead). A user-space program can get
// exactly that pin without a driver by registering the memory as io_uring fixed buffers:
// io_uring_register_buffers pins every page with FOLL_LONGTERM and holds the pins until
// the buffers are unregistered or the ring is closed.
//
// The choice: the runtime holds one such registration per mapping whose PFNs it hands
// out (DMA segments, page PFNs), on by default, made right after the memory is mapped
// and the PFNs read, released when it is unmapped. It costs one ring (a file descriptor
// and a few pages) per mapping and counts against RLIMIT_MEMLOCK for processes without
// CAP_IPC_LOCK; it is accounted as pinned memory (VmPin in /proc/self/status).
//
//   auto holder = hugemm::KernelPinHolder::Create({{extent.data(), extent.size()}});
//
// io_uring limits a registered buffer to 1 GiB, so larger regions are registered as
// several buffers, split on 1 GiB boundaries from the region's start.
#ifndef HUGEMM_KERNEL_PIN_H_
#define HUGEMM_KERNEL_PIN_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/os.h"

namespace hugemm {

struct PinRegion {
  void* data = nullptr;
  size_t length = 0;
};

class KernelPinHolder {
 public:
  static constexpr size_t kMaxBuffer = size_t{1} << 30;  // io_uring's per-buffer limit

  // Pins every page of every region (page-aligned, non-empty) until destroyed, through
  // `os`'s io_uring calls. Errors name the region and what the kernel said: EPERM
  // (io_uring disabled by sysctl), ENOMEM (RLIMIT_MEMLOCK too low), EFAULT (not mapped),
  // EOPNOTSUPP (memory the kernel will not long-term pin).
  static absl::StatusOr<std::unique_ptr<KernelPinHolder>> Create(
      const std::vector<PinRegion>& regions, Os& os = Os::Default());
  ~KernelPinHolder();
  KernelPinHolder(const KernelPinHolder&) = delete;
  KernelPinHolder& operator=(const KernelPinHolder&) = delete;

  size_t bytes() const { return bytes_; }
  size_t buffers() const { return buffers_; }

 private:
  explicit KernelPinHolder(Os& os) : os_(os) {}
  Os& os_;
  int ring_fd_ = -1;
  size_t bytes_ = 0;
  size_t buffers_ = 0;
};

}  // namespace hugemm

#endif  // HUGEMM_KERNEL_PIN_H_
