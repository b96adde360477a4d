// The stand-in registrar: a kernel long-term pin and the frames it pinned.
#include "tests/verbs/fake_registrar.h"

#include <fcntl.h>
#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_format.h"

namespace hugemm::testing {

std::vector<uint64_t> PagemapFrames(const void* addr, size_t length) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t first = a / 4096, last = (a + length - 1) / 4096;
  std::vector<uint64_t> words(last - first + 1, 0);
  const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return words;
  const ssize_t want = static_cast<ssize_t>(words.size() * 8);
  if (pread(fd, words.data(), want, static_cast<off_t>(first * 8)) != want)
    words.assign(words.size(), 0);
  close(fd);
  for (uint64_t& w : words) w = (w >> 63) ? (w & ((uint64_t{1} << 55) - 1)) : 0;
  return words;
}

absl::StatusOr<std::unique_ptr<KernelLongtermPin>> KernelLongtermPin::Create(void* addr,
                                                                             size_t length) {
  std::unique_ptr<KernelLongtermPin> pin(new KernelLongtermPin());
  pin->ring_ = std::make_unique<::io_uring>();
  if (int err = io_uring_queue_init(1, pin->ring_.get(), 0); err < 0) {
    pin->ring_.reset();
    return absl::ErrnoToStatus(-err, "io_uring_queue_init");
  }
  const iovec iov{addr, length};
  if (int err = io_uring_register_buffers(pin->ring_.get(), &iov, 1); err < 0) {
    return absl::ErrnoToStatus(-err, absl::StrFormat("pinning %p+%zu", addr, length));
  }
  return pin;
}

KernelLongtermPin::~KernelLongtermPin() {
  if (ring_ != nullptr) io_uring_queue_exit(ring_.get());
}

bool CanReadFrames() {
  static const bool can = [] {
    // Written at run time, so its page is present: a static's page of .data need not be
    // (nothing may have touched it yet), and pagemap shows no frame for it then.
    const std::vector<int> probe(1, 1);
    return PagemapFrames(probe.data(), sizeof(int))[0] != 0;
  }();
  return can;
}

FakeRegistrar::~FakeRegistrar() = default;

absl::StatusOr<ibv_mr*> FakeRegistrar::Register(ibv_pd* pd, void* addr, size_t length, int access) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_next_) {
    absl::Status st = std::move(*fail_next_);
    fail_next_.reset();
    return st;
  }
  Record r;
  absl::StatusOr<std::unique_ptr<KernelLongtermPin>> pin = KernelLongtermPin::Create(addr, length);
  if (!pin.ok()) return pin.status();
  r.pin = std::move(*pin);
  r.frames = PagemapFrames(addr, length);
  r.mr = std::make_unique<ibv_mr>();
  r.mr->pd = pd;
  r.mr->addr = addr;
  r.mr->length = length;
  r.mr->lkey = r.mr->rkey = next_key_++;
  (void)access;
  ibv_mr* mr = r.mr.get();
  records_.emplace(mr, std::move(r));
  ++registered_;
  return mr;
}

absl::Status FakeRegistrar::Deregister(ibv_mr* mr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(mr);
  if (it == records_.end() || !it->second.live) {
    return absl::NotFoundError(absl::StrFormat("deregistering %p twice or never registered", mr));
  }
  it->second.live = false;
  it->second.pin.reset();  // the memory can go back to the kernel now
  ++deregistered_;
  return absl::OkStatus();
}

void FakeRegistrar::FailNextRegister(absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = std::move(status);
}

std::optional<std::string> FakeRegistrar::Stale(const ibv_mr* mr, const void* addr,
                                                size_t length) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(mr);
  if (it == records_.end()) return "an MR this registrar never made";
  const Record& r = it->second;
  if (!r.live) return absl::StrFormat("MR %u was deregistered", r.mr->lkey);
  const auto start = reinterpret_cast<uintptr_t>(r.mr->addr);
  const auto a = reinterpret_cast<uintptr_t>(addr);
  if (a < start || a + length > start + r.mr->length) {
    return absl::StrFormat("MR %u does not cover [%p, +%u)", r.mr->lkey, addr, length);
  }
  const std::vector<uint64_t> now = PagemapFrames(addr, length);
  const size_t first = a / 4096 - start / 4096;
  for (size_t i = 0; i < now.size(); ++i) {
    if (now[i] != r.frames[first + i]) {
      return absl::StrFormat("MR %u maps frame 0x%x at 0x%x, the process maps 0x%x", r.mr->lkey,
                             r.frames[first + i], (a & ~uintptr_t{4095}) + i * 4096, now[i]);
    }
  }
  return std::nullopt;
}

size_t FakeRegistrar::live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_ - deregistered_;
}

size_t FakeRegistrar::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_;
}

size_t FakeRegistrar::deregistered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return deregistered_;
}

bool FakeRegistrar::IsLive(const ibv_mr* mr) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(mr);
  return it != records_.end() && it->second.live;
}

}  // namespace hugemm::testing
