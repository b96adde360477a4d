// The C API over hugemm::IoRing: statuses become negative errnos (the kernel's own where
// one caused the failure) plus hugemm_last_error's message.
#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "hugemm/hugemm_io.h"
#include "hugemm/io.h"
#include "runtime/api/c_bridge.h"

struct hugemm_io {
  std::unique_ptr<hugemm::IoRing> ring;  // null once the runtime is closed
  hugemm_runtime* rt = nullptr;          // the runtime, until it is closed
};

namespace {

int Ok() { return hugemm::bridge::CApiOk(); }

// The kernel's errno where it said no (EBUSY, EBADF, ...), else the status code's.
int Fail(const char* fn, const absl::Status& st) { return hugemm::bridge::CApiFailKernel(fn, st); }

int Invalid(const char* what) { return hugemm::bridge::CApiFail(EINVAL, what); }

int Closed(const char* fn) { return hugemm::bridge::CApiClosed(fn, "io", "hugemm_io_detach"); }

}  // namespace

extern "C" {

int hugemm_io_attach(hugemm_runtime* rt, int ring_fd, const hugemm_io_options* options,
                     hugemm_io** out) try {
  if (out == nullptr) return Invalid("hugemm_io_attach: out is NULL");
  *out = nullptr;
  if (rt == nullptr) return Invalid("hugemm_io_attach: NULL runtime");
  hugemm::IoRingOptions o;
  if (options != nullptr) {
    switch (options->mode) {
      case HUGEMM_IO_AUTO:
        o.fixed.mode = hugemm::FixedBufferMode::kAuto;
        break;
      case HUGEMM_IO_CLONE:
        o.fixed.mode = hugemm::FixedBufferMode::kClone;
        break;
      case HUGEMM_IO_IOVEC:
        o.fixed.mode = hugemm::FixedBufferMode::kIovec;
        break;
      default:
        return hugemm::bridge::CApiFail(
            EINVAL, absl::StrCat("hugemm_io_attach: unknown mode ", options->mode));
    }
    if (options->max_in_flight != 0) o.max_in_flight = options->max_in_flight;
  }
  absl::StatusOr<std::unique_ptr<hugemm::IoRing>> ring =
      hugemm::IoRing::Attach(*rt->rt, ring_fd, o);
  if (!ring.ok()) return Fail(__func__, ring.status());
  auto* io = new hugemm_io{std::move(*ring), rt};
  hugemm::bridge::CApiAdopt<&hugemm_io::ring>(rt, io);
  *out = io;
  return Ok();
}
HUGEMM_C_CATCH

void hugemm_io_detach(hugemm_io* io) try { hugemm::bridge::CApiRelease<&hugemm_io::ring>(io); }
HUGEMM_C_CATCH_VOID

int hugemm_io_mode(const hugemm_io* io) try {
  if (io == nullptr) return Invalid("hugemm_io_mode: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_mode");
  return io->ring->fixed().mode() == hugemm::FixedBufferMode::kClone ? HUGEMM_IO_CLONE
                                                                     : HUGEMM_IO_IOVEC;
}
HUGEMM_C_CATCH

int hugemm_io_buffer_index(const hugemm_io* io, const void* addr, size_t length) try {
  if (io == nullptr) return Invalid("hugemm_io_buffer_index: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_buffer_index");
  const int index = io->ring->fixed().Find(addr, length);
  if (index >= 0) return index;
  // Why not, in words; a buffer that another thread's allocation mapped in between is
  // found this time.
  absl::StatusOr<int> why = io->ring->fixed().IndexOf(addr, length);
  if (why.ok()) return *why;
  return Fail(__func__, why.status());
}
HUGEMM_C_CATCH

int hugemm_io_prep_read(hugemm_io* io, struct io_uring_sqe* sqe, int fd, void* buf, unsigned length,
                        uint64_t offset, uint64_t user_data) try {
  if (io == nullptr) return Invalid("hugemm_io_prep_read: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_prep_read");
  if (absl::Status st = io->ring->PrepareRead(sqe, fd, buf, length, offset, user_data); !st.ok()) {
    return Fail(__func__, st);
  }
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_io_prep_write(hugemm_io* io, struct io_uring_sqe* sqe, int fd, const void* buf,
                         unsigned length, uint64_t offset, uint64_t user_data) try {
  if (io == nullptr) return Invalid("hugemm_io_prep_write: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_prep_write");
  if (absl::Status st = io->ring->PrepareWrite(sqe, fd, buf, length, offset, user_data); !st.ok()) {
    return Fail(__func__, st);
  }
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_io_complete(hugemm_io* io, const struct io_uring_cqe* cqe, uint64_t* user_data) try {
  if (io == nullptr) return Invalid("hugemm_io_complete: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_complete");
  absl::StatusOr<uint64_t> u = io->ring->Complete(cqe);
  if (!u.ok()) return Fail(__func__, u.status());
  if (user_data != nullptr) *user_data = *u;
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_io_cancel(hugemm_io* io, const struct io_uring_sqe* sqe, uint64_t* user_data) try {
  if (io == nullptr) return Invalid("hugemm_io_cancel: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_cancel");
  absl::StatusOr<uint64_t> u = io->ring->Cancel(sqe);
  if (!u.ok()) return Fail(__func__, u.status());
  if (user_data != nullptr) *user_data = *u;
  return Ok();
}
HUGEMM_C_CATCH

unsigned hugemm_io_in_flight(const hugemm_io* io) {
  return io == nullptr || io->ring == nullptr ? 0 : static_cast<unsigned>(io->ring->in_flight());
}

int hugemm_io_pin(hugemm_io* io, const void* addr, size_t length, int device_writes,
                  uint64_t* token) try {
  if (io == nullptr || token == nullptr) return Invalid("hugemm_io_pin: NULL io or token");
  if (io->ring == nullptr) return Closed("hugemm_io_pin");
  absl::StatusOr<uint64_t> t = io->ring->pins().Pin(addr, length, device_writes != 0);
  if (!t.ok()) return Fail(__func__, t.status());
  *token = *t;
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_io_unpin(hugemm_io* io, uint64_t token) try {
  if (io == nullptr) return Invalid("hugemm_io_unpin: NULL io");
  if (io->ring == nullptr) return Closed("hugemm_io_unpin");
  if (absl::Status st = io->ring->pins().Unpin(token); !st.ok()) return Fail(__func__, st);
  return Ok();
}
HUGEMM_C_CATCH

}  // extern "C"
