// Fixed buffers and per-I/O pins around a program's ring: an SQE filled as READ_FIXED or
// WRITE_FIXED with the folios under it pinned, its completion unpinning them.
#include <liburing.h>

#include "absl/strings/str_cat.h"
#include "hugemm/io.h"

namespace hugemm {

absl::StatusOr<std::unique_ptr<IoRing>> IoRing::Attach(Runtime& runtime, int ring_fd,
                                                       const IoRingOptions& options) {
  absl::StatusOr<std::unique_ptr<IoPins>> pins = IoPins::Create(runtime, options.max_in_flight);
  if (!pins.ok()) return pins.status();
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed =
      FixedBuffers::Attach(runtime, ring_fd, options.fixed);
  if (!fixed.ok()) return fixed.status();
  std::unique_ptr<IoRing> io(new IoRing());
  io->fixed_ = std::move(*fixed);
  io->pins_ = std::move(*pins);
  return io;
}

absl::Status IoRing::Prepare(io_uring_sqe* sqe, bool read, int fd, const void* buf, unsigned length,
                             uint64_t offset, uint64_t user_data) {
  if (sqe == nullptr || length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        read ? "read" : "write", " of ", length, " bytes: ", sqe == nullptr ? "no SQE" : "empty"));
  }
  const int index = fixed_->Find(buf, length);
  if (index < 0) return fixed_->IndexOf(buf, length).status();
  absl::StatusOr<uint64_t> token = pins_->PinFor(buf, length, read, user_data, /*prepared=*/true);
  if (!token.ok()) return token.status();
  if (read) {
    io_uring_prep_read_fixed(sqe, fd, const_cast<void*>(buf), length, offset, index);
  } else {
    io_uring_prep_write_fixed(sqe, fd, buf, length, offset, index);
  }
  io_uring_sqe_set_data64(sqe, *token);
  return absl::OkStatus();
}

absl::Status IoRing::PrepareRead(io_uring_sqe* sqe, int fd, void* buf, unsigned length,
                                 uint64_t offset, uint64_t user_data) {
  return Prepare(sqe, /*read=*/true, fd, buf, length, offset, user_data);
}

absl::Status IoRing::PrepareWrite(io_uring_sqe* sqe, int fd, const void* buf, unsigned length,
                                  uint64_t offset, uint64_t user_data) {
  return Prepare(sqe, /*read=*/false, fd, buf, length, offset, user_data);
}

absl::StatusOr<uint64_t> IoRing::Complete(const io_uring_cqe* cqe) {
  if (cqe == nullptr) return absl::InvalidArgumentError("complete: no CQE");
  uint64_t user_data = 0;
  if (absl::Status st = pins_->Release(cqe->user_data, &user_data, /*prepared=*/true); !st.ok())
    return st;
  return user_data;
}

absl::StatusOr<uint64_t> IoRing::Cancel(const io_uring_sqe* sqe) {
  if (sqe == nullptr) return absl::InvalidArgumentError("cancel: no SQE");
  uint64_t user_data = 0;
  if (absl::Status st = pins_->Release(sqe->user_data, &user_data, /*prepared=*/true); !st.ok())
    return st;
  return user_data;
}

}  // namespace hugemm
