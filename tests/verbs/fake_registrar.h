// A registrar for machines without an RDMA device. It does to the memory what ibv_reg_mr
// does to it, a long-term kernel pin of every page (io_uring fixed buffers take the same
// FOLL_LONGTERM pin), and remembers the frames it pinned, so that a test can hold a
// registration against what the process maps now: a registration is stale when it was
// deregistered or when its frames are not the ones under its addresses any more, which
// is exactly when a NIC using it would read or write the wrong memory.
#ifndef HUGEMM_TESTS_VERBS_FAKE_REGISTRAR_H_
#define HUGEMM_TESTS_VERBS_FAKE_REGISTRAR_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/verbs.h"

struct io_uring;

namespace hugemm::testing {

// Frames under [addr, addr + length) from /proc/self/pagemap, one per 4K page (0 where
// none is present or the process may not read them).
std::vector<uint64_t> PagemapFrames(const void* addr, size_t length);
// Whether this process reads real frames from pagemap (root).
bool CanReadFrames();

// What ibv_reg_mr does to the pages: a FOLL_LONGTERM kernel pin, here taken by registering
// the range as an io_uring fixed buffer of a ring of its own, and dropped with the ring.
class KernelLongtermPin {
 public:
  static absl::StatusOr<std::unique_ptr<KernelLongtermPin>> Create(void* addr, size_t length);
  ~KernelLongtermPin();
  KernelLongtermPin(const KernelLongtermPin&) = delete;
  KernelLongtermPin& operator=(const KernelLongtermPin&) = delete;

 private:
  KernelLongtermPin() = default;
  std::unique_ptr<::io_uring> ring_;
};

class FakeRegistrar final : public MrRegistrar {
 public:
  FakeRegistrar() = default;
  ~FakeRegistrar() override;

  absl::StatusOr<ibv_mr*> Register(ibv_pd* pd, void* addr, size_t length, int access) override;
  absl::Status Deregister(ibv_mr* mr) override;

  // The next Register fails with `status`.
  void FailNextRegister(absl::Status status);

  // Why using `mr` for [addr, addr + length) would touch the wrong memory, or nullopt if
  // it would not.
  std::optional<std::string> Stale(const ibv_mr* mr, const void* addr, size_t length) const;
  // Registrations alive now, and calls so far.
  size_t live() const;
  size_t registered() const;
  size_t deregistered() const;
  // Whether `mr` is registered now.
  bool IsLive(const ibv_mr* mr) const;

 private:
  struct Record {
    std::unique_ptr<ibv_mr> mr;
    std::vector<uint64_t> frames;
    std::unique_ptr<KernelLongtermPin> pin;
    bool live = true;
  };
  mutable std::mutex mu_;
  std::map<const ibv_mr*, Record> records_;
  std::optional<absl::Status> fail_next_;
  size_t registered_ = 0;
  size_t deregistered_ = 0;
  uint32_t next_key_ = 1;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_VERBS_FAKE_REGISTRAR_H_
