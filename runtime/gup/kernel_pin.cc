// The kernel long-term pin holder: io_uring fixed-buffer registration.
#include "hugemm/kernel_pin.h"

#include <liburing.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"
#include "hugemm/page_size.h"

namespace hugemm {
namespace {

// io_uring's IORING_MAX_REG_BUFFERS.
constexpr size_t kMaxBuffers = size_t{1} << 14;

std::string Why(int err) {
  switch (err) {
    case EPERM:
      return "io_uring is disabled for this process (sysctl kernel.io_uring_disabled)";
    case ENOMEM:
      return "RLIMIT_MEMLOCK is too low for this much pinned memory (raise it or grant "
             "CAP_IPC_LOCK)";
    case EFAULT:
      return "part of the memory is not mapped";
    case EOPNOTSUPP:
      return "the kernel will not long-term pin this kind of memory";
    default:
      return std::strerror(err);
  }
}

}  // namespace

struct KernelPinHolder::Ring {
  io_uring ring;
};

absl::StatusOr<std::unique_ptr<KernelPinHolder>> KernelPinHolder::Create(
    const std::vector<PinRegion>& regions) {
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
  auto ring = std::make_unique<Ring>();
  if (int rc = io_uring_queue_init(1, &ring->ring, 0); rc < 0) {
    return absl::UnavailableError(absl::StrFormat("kernel pin: io_uring_queue_init: %s", Why(-rc)));
  }
  if (int rc =
          io_uring_register_buffers(&ring->ring, iov.data(), static_cast<unsigned>(iov.size()));
      rc < 0) {
    io_uring_queue_exit(&ring->ring);
    const auto code = rc == -ENOMEM || rc == -EAGAIN ? absl::StatusCode::kResourceExhausted
                      : rc == -EFAULT                ? absl::StatusCode::kInvalidArgument
                                                     : absl::StatusCode::kFailedPrecondition;
    return absl::Status(
        code,
        absl::StrFormat("kernel pin of %s from 0x%x (%u io_uring buffers): %s", HumanBytes(bytes),
                        reinterpret_cast<uintptr_t>(regions[0].data), iov.size(), Why(-rc)));
  }
  std::unique_ptr<KernelPinHolder> holder(new KernelPinHolder());
  holder->ring_ = std::move(ring);
  holder->bytes_ = bytes;
  holder->buffers_ = iov.size();
  return holder;
}

KernelPinHolder::~KernelPinHolder() {
  if (ring_ == nullptr) return;
  // Closing the ring would drop the pins too; unregistering first makes it immediate
  // rather than whenever the ring's last reference goes.
  io_uring_unregister_buffers(&ring_->ring);
  io_uring_queue_exit(&ring_->ring);
}

}  // namespace hugemm
