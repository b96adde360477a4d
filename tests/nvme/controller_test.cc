// The controller bring-up's refusals, against ordinary memory standing in for BAR0 (no
// NVMe device exists on the host): each one a clear status, and nothing left allocated
// or pinned behind it. Then what needs a running controller the VM's cannot play: one
// that does not stop when disabled, one with no transfer limit (a thread stands in for
// it, fake_controller.h). The real controller is driven in the VM (nvme_vm_test).
#include "nvme/controller.h"

#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/vfio.h"
#include "tests/nvme/fake_controller.h"
#include "tests/test_util.h"

namespace nvme {
namespace {

using nvme_test::FakeController;
using nvme_test::RecordingContainer;

// CAP of qemu's controller: MQES 2047, CQR, TO 1 (500 ms), DSTRD 0, CSS NVM, MPS 4K..4K.
constexpr uint64_t kCap = 0x7ff | 1ull << 16 | 1ull << 24 | 1ull << 37;

class FakeBar {
 public:
  explicit FakeBar(size_t bytes = 0x2000) : words_(bytes / 4) {}
  Registers registers() { return Registers(words_.data(), words_.size() * 4); }
  void Set32(uint32_t offset, uint32_t v) { words_[offset / 4] = v; }
  void Set64(uint32_t offset, uint64_t v) {
    Set32(offset, static_cast<uint32_t>(v));
    Set32(offset + 4, static_cast<uint32_t>(v >> 32));
  }
  uint32_t Get32(uint32_t offset) const { return words_[offset / 4]; }

 private:
  std::vector<uint32_t> words_;
};

class ControllerTest : public testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(hugemm::kPageSize2M, 1);
    absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
  }

  // Every folio the allocator holds is free again: nothing stays allocated or pinned.
  void ExpectNothingHeld() {
    rt_->allocator().FlushThreadCache();
    for (const hugemm::PoolStats& s : rt_->allocator().Stats()) {
      EXPECT_EQ(s.free_bytes, s.mapped_bytes) << s.describe;
    }
  }

  std::unique_ptr<hugemm::Runtime> rt_;
};

TEST_F(ControllerTest, RefusesBadOptionsAndATooSmallBar) {
  FakeBar bar;
  bar.Set64(kRegCap, kCap);
  EXPECT_EQ(Controller::Start(*rt_, Registers(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  FakeBar tiny(0x800);
  EXPECT_EQ(Controller::Start(*rt_, tiny.registers(), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Controller::Start(*rt_, bar.registers(), {.admin_depth = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Controller::Start(*rt_, bar.registers(), {.io_depth = 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Controller::Start(*rt_, bar.registers(), {.max_transfer = 512}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bar.Get32(kRegCc), 0u) << "a refused start touched the controller";
}

TEST_F(ControllerTest, RefusesAControllerWithoutTheNvmCommandSetOr4KPages) {
  FakeBar bar;
  bar.Set64(kRegCap, kCap & ~(1ull << 37));
  bar.Set32(kRegCc, kCcEnable);  // whoever runs it now keeps it running
  absl::StatusOr<std::unique_ptr<Controller>> c = Controller::Start(*rt_, bar.registers(), {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("NVM command set"), std::string::npos) << c.status();
  bar.Set64(kRegCap, kCap | 1ull << 48);  // MPSMIN 8K
  c = Controller::Start(*rt_, bar.registers(), {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("4 KiB"), std::string::npos) << c.status();
  EXPECT_EQ(bar.Get32(kRegCc), kCcEnable) << "a controller refused at CAP was disabled";
  ExpectNothingHeld();
}

TEST_F(ControllerTest, AControllerThatNeverGetsReadyTimesOutAfterCapTo) {
  FakeBar bar;
  bar.Set64(kRegCap, kCap);  // CSTS.RDY stays 0 whatever CC says
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<Controller>> c = Controller::Start(*rt_, bar.registers(), {});
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(c.status().message().find("CAP.TO = 1 x 500 ms"), std::string::npos) << c.status();
  // It was told where the admin queues are, then disabled again when the start failed.
  EXPECT_NE(bar.Get32(kRegAsq), 0u);
  EXPECT_EQ(bar.Get32(kRegCc) & kCcEnable, 0u);
  ExpectNothingHeld();
}

TEST_F(ControllerTest, AFatalStatusIsReportedAsOne) {
  FakeBar bar;
  bar.Set64(kRegCap, kCap);
  bar.Set32(kRegCsts, kCstsFatal);
  absl::StatusOr<std::unique_ptr<Controller>> c = Controller::Start(*rt_, bar.registers(), {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(c.status().message().find("fatal"), std::string::npos) << c.status();
  ExpectNothingHeld();
}

TEST_F(ControllerTest, ADeviceGoneFromTheBusReadsAllOnes) {
  FakeBar bar;
  bar.Set64(kRegCap, kCap);
  bar.Set32(kRegCsts, 0xffffffff);
  absl::StatusOr<std::unique_ptr<Controller>> c = Controller::Start(*rt_, bar.registers(), {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable);
  ExpectNothingHeld();
}

// A runtime's memory at IOVAs of a recording container, for the stand-in controller.
class FakeControllerTest : public ControllerTest {
 protected:
  void SetUp() override {
    ControllerTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    absl::StatusOr<std::unique_ptr<hugemm::IovaMapper>> mapper =
        hugemm::IovaMapper::Attach(*rt_, kNoContainer, {.os = &dma_});
    ASSERT_TRUE(mapper.ok()) << mapper.status();
    mapper_ = std::move(*mapper);
  }
  void TearDown() override { mapper_.reset(); }

  Registers registers() { return Registers(bar_.data(), bar_.size() * 4); }

  // Every I/O command the stand-in has taken, once it has taken `n`.
  static std::vector<Command> AwaitIo(FakeController& fake, size_t n) {
    for (int i = 0; i < 2000 && fake.io_commands().size() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return fake.io_commands();
  }

  // Starts a controller on the stand-in, submits a READ into `data` that the stand-in
  // takes but never completes, and tears the controller down: with `stops`, the stand-in
  // clears CSTS.RDY when CC.EN is cleared; without, it goes on as if still running.
  void TearDownWithAReadInFlight(void* data, bool stops) {
    FakeController fake(bar_.data(), bar_.size() * 4, dma_, {.stops = stops});
    absl::StatusOr<std::unique_ptr<Controller>> c = Controller::Start(
        *rt_, registers(),
        {.io_depth = 4, .command_timeout = std::chrono::milliseconds(1000), .iova = mapper_.get()});
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE((*c)->SubmitRead(0, data, 4096).ok());
    ASSERT_EQ(AwaitIo(fake, 1).size(), 1u);
    c->reset();
  }

  int32_t PinsAt(const void* p) {
    absl::StatusOr<hugemm::FolioInfo> info = rt_->FolioInfoAt(p);
    return info.ok() ? info->pincount : -1;
  }

  static constexpr int kNoContainer = RecordingContainer::kContainer;  // answers every call
  RecordingContainer dma_;
  std::unique_ptr<hugemm::IovaMapper> mapper_;  // dropped before the runtime
  std::vector<uint32_t> bar_ = std::vector<uint32_t>(0x2000 / 4);
};

TEST_F(FakeControllerTest, AControllerThatDoesNotStopKeepsItsMemoryPinned) {
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  // The READ never completes, and CC.EN = 0 leaves CSTS.RDY set: the controller may
  // still write into the buffer and reads its queues.
  ASSERT_NO_FATAL_FAILURE(TearDownWithAReadInFlight(buf->data(), /*stops=*/false));
  EXPECT_GT(PinsAt(buf->data()), 0) << "the data under a READ the controller may still do "
                                       "went back while the controller runs";
  ASSERT_TRUE(buf->Free().ok());
  rt_->allocator().FlushThreadCache();
  size_t held = 0;
  for (const hugemm::PoolStats& s : rt_->allocator().Stats()) held += s.mapped_bytes - s.free_bytes;
  EXPECT_GT(held, 0u) << "the queues went back to the pool while the controller runs";
}

TEST_F(FakeControllerTest, AControllerThatStopsGivesItsMemoryBack) {
  // The control: stopped, the same controller lets everything go.
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_NO_FATAL_FAILURE(TearDownWithAReadInFlight(buf->data(), /*stops=*/true));
  EXPECT_EQ(PinsAt(buf->data()), 0);
  ExpectNothingHeld();
}

TEST_F(FakeControllerTest, ACommandNeverAsksForMoreBlocksThanNlbHolds) {
  // No MDTS: only the 16-bit block count limits a command.
  FakeController fake(bar_.data(), bar_.size() * 4, dma_, {.mdts = 0});
  absl::StatusOr<std::unique_ptr<Controller>> c =
      Controller::Start(*rt_, registers(),
                        {.io_depth = 2,
                         .max_transfer = 64 << 20,
                         .command_timeout = std::chrono::milliseconds(1000),
                         .iova = mapper_.get()});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->max_transfer(), 65536u * 512);
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer((*c)->max_transfer());
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_TRUE((*c)->SubmitRead(0, buf->data(), (*c)->max_transfer()).ok());
  std::vector<Command> io = AwaitIo(fake, 1);
  ASSERT_EQ(io.size(), 1u);
  EXPECT_EQ(io[0].cdw12, 0xffffu) << "NLB, 0's based, with nothing above its 16 bits";
}

TEST(StatusTest, NamesTheCodesADriverMeets) {
  // Status field bits 15:1: SC 0x80 of type 0 is LBA Out of Range; DNR is bit 15.
  EXPECT_EQ(DescribeStatus(0x80 << 1 | 1 << 15), "SCT 0 SC 0x80 (LBA Out of Range), do not retry");
  EXPECT_EQ(DescribeStatus(0x02 << 9 | 0x81 << 1), "SCT 2 SC 0x81");
}

}  // namespace
}  // namespace nvme
