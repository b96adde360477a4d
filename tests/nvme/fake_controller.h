// A stand-in NVMe controller for the host, which has none: a thread that watches ordinary
// memory standing in for BAR0 and reaches the driver's queues at their IOVAs, through the
// mappings a recording VFIO container saw. It does what Controller::Start needs (ready
// follows CC.EN, IDENTIFY, queue creation and deletion, shutdown), takes I/O commands
// without ever completing them, and can be told to ignore CC.EN = 0: a controller that
// does not stop. The real controller is driven in the VM (nvme_vm_test).
#ifndef HUGEMM_TESTS_NVME_FAKE_CONTROLLER_H_
#define HUGEMM_TESTS_NVME_FAKE_CONTROLLER_H_

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "hugemm/os.h"
#include "nvme/nvme_spec.h"

namespace nvme_test {

// VFIO_IOMMU_MAP_DMA and UNMAP as a table (IOVA -> the process's memory), over the real
// OS otherwise. Thread-safe.
class RecordingContainer : public hugemm::OsWrapper {
 public:
  RecordingContainer() : OsWrapper(hugemm::Os::Default()) {}
  absl::Status VfioMapDma(int, const void* va, size_t length, uint64_t iova) override;
  absl::Status VfioUnmapDma(int, uint64_t iova, size_t length) override;
  absl::Status VfioCheckContainer(int) override { return absl::OkStatus(); }
  // The container is a number only, kContainer: the mapper's own descriptor of it is
  // the same number, and closing it closes nothing.
  static constexpr int kContainer = 1000;
  absl::StatusOr<int> Duplicate(int fd) override {
    return fd == kContainer ? fd : OsWrapper::Duplicate(fd);
  }
  absl::Status Close(int fd) override {
    return fd == kContainer ? absl::OkStatus() : OsWrapper::Close(fd);
  }
  // The byte at `iova`, or nullptr when nothing maps `length` bytes there.
  volatile std::byte* At(uint64_t iova, size_t length);

 private:
  std::mutex mu_;
  std::map<uint64_t, iovec> maps_;
};

struct FakeControllerOptions {
  uint8_t mdts = 7;  // IDENTIFY's MDTS: (4K << 0) << mdts bytes per command, 0 = no limit
  uint64_t blocks = uint64_t{1} << 24;  // namespace 1, 512-byte blocks
  bool stops = true;                    // false: CSTS.RDY stays 1 after CC.EN = 0
};

// Thread safety: the controller runs on its own thread; io_commands() may be called
// from any other.
class FakeController {
 public:
  // CAP of qemu's controller: MQES 2047, CQR, TO 1 (500 ms), DSTRD 0, CSS NVM, MPS 4K.
  static constexpr uint64_t kCap = 0x7ff | 1ull << 16 | 1ull << 24 | 1ull << 37;

  // `bar` holds `bar_bytes` (at least 0x2000) and outlives the controller, as does
  // `dma`.
  FakeController(uint32_t* bar, size_t bar_bytes, RecordingContainer& dma,
                 const FakeControllerOptions& options = {});
  ~FakeController();
  FakeController(const FakeController&) = delete;
  FakeController& operator=(const FakeController&) = delete;

  // The I/O commands fetched so far.
  std::vector<nvme::Command> io_commands();

 private:
  void Run();
  void Step();
  void Admin(const nvme::Command& cmd);
  uint32_t Reg(uint32_t offset) const;
  void SetReg(uint32_t offset, uint32_t value);
  bool Read(uint64_t iova, void* out, size_t n);
  bool Write(uint64_t iova, const void* in, size_t n);

  volatile uint32_t* const bar_;
  RecordingContainer& dma_;
  const FakeControllerOptions options_;
  std::atomic<bool> stop_{false};

  // The controller thread's own state.
  uint64_t asq_ = 0, acq_ = 0;
  uint32_t admin_depth_ = 0, admin_head_ = 0, acq_tail_ = 0;
  bool phase_ = true;
  uint32_t io_depth_ = 0, io_head_ = 0;
  uint64_t io_sq_ = 0;

  std::mutex mu_;
  std::vector<nvme::Command> io_commands_;

  std::thread thread_;  // last: starts once everything above is set
};

}  // namespace nvme_test

#endif  // HUGEMM_TESTS_NVME_FAKE_CONTROLLER_H_
