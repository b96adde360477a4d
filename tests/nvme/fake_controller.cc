#include "tests/nvme/fake_controller.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iterator>

namespace nvme_test {

// The controller thread shares BAR0 and the queues with the driver the way a device
// does: plain loads and stores ordered by the hardware, not by the language. Its own
// accesses are left out of ThreadSanitizer's view, as a device's are.
#define FAKE_DEVICE_ACCESS __attribute__((no_sanitize("thread")))

using nvme::Command;
using nvme::Completion;

absl::Status RecordingContainer::VfioMapDma(int, const void* va, size_t length, uint64_t iova) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!maps_.emplace(iova, iovec{const_cast<void*>(va), length}).second) {
    return absl::AlreadyExistsError("VFIO_IOMMU_MAP_DMA: IOVA mapped already");
  }
  return absl::OkStatus();
}

absl::Status RecordingContainer::VfioUnmapDma(int, uint64_t iova, size_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = maps_.find(iova);
  if (it == maps_.end() || it->second.iov_len != length) {
    return absl::InvalidArgumentError("VFIO_IOMMU_UNMAP_DMA: no such mapping");
  }
  maps_.erase(it);
  return absl::OkStatus();
}

volatile std::byte* RecordingContainer::At(uint64_t iova, size_t length) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = maps_.upper_bound(iova);
  if (it == maps_.begin()) return nullptr;
  --it;
  const uint64_t offset = iova - it->first;
  if (offset > it->second.iov_len || length > it->second.iov_len - offset) return nullptr;
  return static_cast<volatile std::byte*>(it->second.iov_base) + offset;
}

FakeController::FakeController(uint32_t* bar, size_t bar_bytes, RecordingContainer& dma,
                               const FakeControllerOptions& options)
    : bar_(bar), dma_(dma), options_(options) {
  (void)bar_bytes;
  SetReg(nvme::kRegCap, static_cast<uint32_t>(kCap));
  SetReg(nvme::kRegCap + 4, static_cast<uint32_t>(kCap >> 32));
  thread_ = std::thread([this] { Run(); });
}

FakeController::~FakeController() {
  stop_.store(true);
  thread_.join();
}

std::vector<Command> FakeController::io_commands() {
  std::lock_guard<std::mutex> lock(mu_);
  return io_commands_;
}

void FakeController::Run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    Step();
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

FAKE_DEVICE_ACCESS uint32_t FakeController::Reg(uint32_t offset) const { return bar_[offset / 4]; }

FAKE_DEVICE_ACCESS void FakeController::SetReg(uint32_t offset, uint32_t value) {
  bar_[offset / 4] = value;
}

FAKE_DEVICE_ACCESS bool FakeController::Read(uint64_t iova, void* out, size_t n) {
  volatile std::byte* p = dma_.At(iova, n);
  if (p == nullptr) return false;
  auto* o = static_cast<std::byte*>(out);
  for (size_t i = 0; i < n; ++i) o[i] = p[i];
  return true;
}

FAKE_DEVICE_ACCESS bool FakeController::Write(uint64_t iova, const void* in, size_t n) {
  volatile std::byte* p = dma_.At(iova, n);
  if (p == nullptr) return false;
  const auto* i8 = static_cast<const std::byte*>(in);
  for (size_t i = 0; i < n; ++i) p[i] = i8[i];
  return true;
}

FAKE_DEVICE_ACCESS void FakeController::Step() {
  const uint32_t cc = Reg(nvme::kRegCc);
  const uint32_t csts = Reg(nvme::kRegCsts);
  const bool ready = (csts & nvme::kCstsReady) != 0;
  if ((cc & nvme::kCcEnable) != 0 && !ready) {
    admin_depth_ = (Reg(nvme::kRegAqa) & 0xfff) + 1;
    asq_ = Reg(nvme::kRegAsq) | uint64_t{Reg(nvme::kRegAsq + 4)} << 32;
    acq_ = Reg(nvme::kRegAcq) | uint64_t{Reg(nvme::kRegAcq + 4)} << 32;
    admin_head_ = acq_tail_ = io_head_ = io_depth_ = 0;
    phase_ = true;
    SetReg(nvme::kRegCsts, nvme::kCstsReady);
    return;
  }
  if ((cc & nvme::kCcEnable) == 0) {
    if (ready && options_.stops) SetReg(nvme::kRegCsts, 0);
    return;
  }
  if ((cc & nvme::kCcShnMask) == nvme::kCcShnNormal) {
    SetReg(nvme::kRegCsts, (csts & ~nvme::kCstsShstMask) | nvme::kCstsShstComplete);
  }
  const uint32_t admin_tail = Reg(nvme::kRegDoorbells);
  while (admin_head_ != admin_tail && admin_tail < admin_depth_) {
    Command cmd;
    if (!Read(asq_ + uint64_t{admin_head_} * sizeof cmd, &cmd, sizeof cmd)) break;
    admin_head_ = (admin_head_ + 1) % admin_depth_;
    Admin(cmd);
  }
  const uint32_t io_tail = Reg(nvme::kRegDoorbells + 8);  // queue 1, stride 4
  while (io_depth_ != 0 && io_head_ != io_tail && io_tail < io_depth_) {
    Command cmd;
    if (!Read(io_sq_ + uint64_t{io_head_} * sizeof cmd, &cmd, sizeof cmd)) break;
    io_head_ = (io_head_ + 1) % io_depth_;
    std::lock_guard<std::mutex> lock(mu_);
    io_commands_.push_back(cmd);  // taken, never completed
  }
}

FAKE_DEVICE_ACCESS void FakeController::Admin(const Command& cmd) {
  if (cmd.opcode == nvme::kAdminIdentify) {
    std::byte data[nvme::kIdentifySize] = {};
    auto put = [&](size_t at, const void* v, size_t n) { std::memcpy(data + at, v, n); };
    if ((cmd.cdw10 & 0xff) == nvme::kCnsController) {
      const uint16_t vid = 0x1b36;
      const uint32_t nn = 1;
      put(nvme::kIdCtrlVid, &vid, sizeof vid);
      put(nvme::kIdCtrlSn, "fake-nvme0          ", 20);
      put(nvme::kIdCtrlMdts, &options_.mdts, 1);
      put(nvme::kIdCtrlNn, &nn, sizeof nn);
    } else {
      const uint32_t lbaf0 = 9u << 16;  // 512-byte blocks, no metadata
      put(nvme::kIdNsNsze, &options_.blocks, sizeof options_.blocks);
      put(nvme::kIdNsLbaf0, &lbaf0, sizeof lbaf0);
    }
    Write(cmd.prp1, data, sizeof data);
  } else if (cmd.opcode == nvme::kAdminCreateIoSq) {
    io_sq_ = cmd.prp1;
    io_depth_ = (cmd.cdw10 >> 16) + 1;
    io_head_ = 0;
  } else if (cmd.opcode == nvme::kAdminDeleteIoSq) {
    io_depth_ = 0;
  }
  Completion c{.sq_head = static_cast<uint16_t>(admin_head_), .cid = cmd.cid};
  const uint64_t at = acq_ + uint64_t{acq_tail_} * sizeof c;
  // The entry first, its phase tag last: the driver reads the rest only after the tag.
  Write(at, &c, offsetof(Completion, status));
  std::atomic_signal_fence(std::memory_order_seq_cst);
  const uint16_t status = phase_ ? 1 : 0;
  Write(at + offsetof(Completion, status), &status, sizeof status);
  if (++acq_tail_ == admin_depth_) {
    acq_tail_ = 0;
    phase_ = !phase_;
  }
}

}  // namespace nvme_test
