// The kernel long-term pin holder: io_uring fixed-buffer registration, through the Os.
#include "hugemm/kernel_pin.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hugemm/page_size.h"

namespace hugemm {
namespace {

// io_uring's IORING_MAX_REG_BUFFERS.
constexpr size_t kMaxBuffers = size_t{1} << 14;

// What the kernel's errno means here, after the call's own message.
std::string Why(const absl::Status& status) {
  std::string why;
  switch (ErrnoOf(status)) {
    case EPERM:
      why = "; io_uring is disabled for this process (sysctl kernel.io_uring_disabled)";
      break;
    case ENOMEM:
      why =
          "; RLIMIT_MEMLOCK is too low for this much pinned memory (raise it or grant "
          "CAP_IPC_LOCK)";
      break;
    case EFAULT:
      why = "; part of the memory is not mapped";
      break;
    case EOPNOTSUPP:
      why = "; the kernel will not long-term pin this kind of memory";
      break;
  }
  return absl::StrCat(status.message(), why);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KernelPinHolder>> KernelPinHolder::Create(
    const std::vector<PinRegion>& regions, Os& os) {
  std::vector<iovec> iov;
  size_t bytes = 0;
  for (const PinRegion& r : regions) {
    const auto va = reinterpret_cast<uintptr_t>(r.data);
    if (r.data == nullptr || r.length == 0 || va % kPageSize4K != 0 ||
        r.length % kPageSize4K != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "kernel pin of [0x%x, +%u): not a non-empty page-aligned region", va, r.length));
    }
    for (size_t off = 0; off < r.length; off += kMaxBuffer) {
      iov.push_back({static_cast<std::byte*>(r.data) + off, std::min(kMaxBuffer, r.length - off)});
    }
    bytes += r.length;
  }
  if (iov.empty()) return absl::InvalidArgumentError("kernel pin: no regions");
  if (iov.size() > kMaxBuffers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("kernel pin of %s needs %u io_uring buffers; the limit is %u",
                        HumanBytes(bytes), iov.size(), kMaxBuffers));
  }
  absl::StatusOr<int> ring = os.IoUringSetup(1);
  if (!ring.ok()) {
    return absl::UnavailableError(absl::StrCat("kernel pin: ", Why(ring.status())));
  }
  if (absl::Status st = os.IoUringRegisterBuffers(*ring, iov); !st.ok()) {
    (void)os.Close(*ring);
    const int err = ErrnoOf(st);
    const auto code = err == ENOMEM || err == EAGAIN ? absl::StatusCode::kResourceExhausted
                      : err == EFAULT                ? absl::StatusCode::kInvalidArgument
                                                     : absl::StatusCode::kFailedPrecondition;
    return absl::Status(
        code,
        absl::StrFormat("kernel pin of %s from 0x%x (%u io_uring buffers): %s", HumanBytes(bytes),
                        reinterpret_cast<uintptr_t>(regions[0].data), iov.size(), Why(st)));
  }
  std::unique_ptr<KernelPinHolder> holder(new KernelPinHolder(os));
  holder->ring_fd_ = *ring;
  holder->bytes_ = bytes;
  holder->buffers_ = iov.size();
  return holder;
}

KernelPinHolder::~KernelPinHolder() {
  if (ring_fd_ < 0) return;
  // Closing the ring would drop the pins too; unregistering first makes it immediate
  // rather than whenever the ring's last reference goes.
  (void)os_.IoUringUnregisterBuffers(ring_fd_);
  (void)os_.Close(ring_fd_);
}

}  // namespace hugemm
