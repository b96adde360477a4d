// Pins under a device: a buffer freed while a READ into it is in flight keeps its folios
// until the driver reaps the completion, so no new buffer is given memory the controller
// may still write; the data lands where it was sent. The same sequence with the driver's
// pins switched off hands the in-flight memory to a new buffer at once. In IOVA mode the
// same holds for the buffer's IOVAs: mapped until the completion is reaped, no longer.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <optional>
#include <vector>

#include "gtest/gtest.h"
#include "tests/nvme/vm_device.h"

namespace nvme_test {
namespace {

constexpr uint64_t kBlock = 512;
constexpr uint64_t kOffset = 32 << 20;  // in the host's pattern
constexpr size_t kBuffers = 8;

struct Frames {
  uint64_t first = 0;
  uint64_t count = 0;
  bool Overlaps(const Frames& o) const {
    return first < o.first + o.count && o.first < first + count;
  }
};

class NvmePinVmTest : public testing::Test {
 protected:
  void Start(bool pin_io) {
    std::string why;
    const nvme::MappedBar* bar = Device(&why);
    if (bar == nullptr) GTEST_SKIP() << why;
    absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    std::string error;
    iova_ = AttachIova(*rt_, &error);
    ASSERT_EQ(error, "");
    absl::StatusOr<std::unique_ptr<nvme::Controller>> ctrl =
        nvme::Controller::Start(*rt_, bar->registers(), {.pin_io = pin_io, .iova = iova_.get()});
    ASSERT_TRUE(ctrl.ok()) << ctrl.status();
    ctrl_ = std::move(*ctrl);
  }

  Frames FramesOf(const hugemm::Buffer& buf) {
    std::optional<hugemm::Translation> t = rt_->Translate(buf.data());
    EXPECT_TRUE(t.has_value());
    return {t ? t->pfn : 0, buf.size() / kPage};
  }

  // A READ of the whole of `victim` (one command), then the buffer freed with the READ
  // in flight, then kBuffers new allocator buffers of its size. Returns how many of them
  // got frames of the victim; `landed` says whether the READ's data is at the victim's
  // old address once the completion is reaped.
  size_t FreeWithReadInFlight(bool* landed) {
    absl::StatusOr<hugemm::Buffer> victim = rt_->Allocate(ctrl_->max_transfer());
    EXPECT_TRUE(victim.ok()) << victim.status();
    if (!victim.ok()) return 0;
    std::byte* va = victim->data();
    const size_t n = victim->size();
    std::memset(va, static_cast<int>(kMarker), n);
    const Frames in_flight = FramesOf(*victim);
    EXPECT_TRUE(ctrl_->SubmitRead(kOffset / kBlock, va, n).ok());
    EXPECT_TRUE(victim->Free().ok());

    std::vector<hugemm::Buffer> fresh;
    size_t reused = 0;
    for (size_t i = 0; i < kBuffers; ++i) {
      absl::StatusOr<hugemm::Buffer> b = rt_->Allocate(n);
      EXPECT_TRUE(b.ok()) << b.status();
      if (!b.ok()) break;
      reused += FramesOf(*b).Overlaps(in_flight);
      fresh.push_back(std::move(*b));
    }
    EXPECT_EQ(ctrl_->in_flight(), 1u) << "the completion was reaped too early for the test";
    std::vector<nvme::IoResult> done;
    EXPECT_TRUE(ctrl_->Drain(&done).ok());
    EXPECT_EQ(done.size(), 1u);
    // Nothing has allocated since the reap: the folio is back in its pool untouched.
    *landed = PatternProblem(kReadSeed, kOffset, va, n).empty();
    return reused;
  }

  std::unique_ptr<hugemm::Runtime> rt_;
  std::unique_ptr<hugemm::IovaMapper> iova_;  // IOVA mode; dropped before the runtime
  std::unique_ptr<nvme::Controller> ctrl_;    // dropped before the mapper
};

TEST_F(NvmePinVmTest, AFreedBufferKeepsItsFoliosUntilTheReadIsReaped) {
  Start(/*pin_io=*/true);
  if (IsSkipped()) return;
  bool landed = false;
  EXPECT_EQ(FreeWithReadInFlight(&landed), 0u) << "a new buffer got frames under a READ";
  EXPECT_TRUE(landed) << "the READ's data is not where it was sent";
}

TEST_F(NvmePinVmTest, WithoutPinsTheFreedFoliosGoToANewBufferAtOnce) {
  // The control: the check above is able to fail.
  Start(/*pin_io=*/false);
  if (IsSkipped()) return;
  bool landed = false;
  EXPECT_GE(FreeWithReadInFlight(&landed), 1u) << "no new buffer reused the freed frames";
}

TEST_F(NvmePinVmTest, AFreedMappedBufferStaysMappedUntilTheReadIsReaped) {
  Start(/*pin_io=*/true);
  if (IsSkipped()) return;
  absl::StatusOr<hugemm::Buffer> victim = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(victim.ok()) << victim.status();
  std::byte* va = victim->data();
  const Frames in_flight = FramesOf(*victim);
  const std::optional<uint64_t> iova = iova_ ? iova_->Iova(va) : std::nullopt;
  const size_t mappings = iova_ ? iova_->stats().mappings : 0;
  ASSERT_TRUE(ctrl_->SubmitRead(kOffset / kBlock, va, ctrl_->max_transfer()).ok());
  ASSERT_TRUE(victim->Free().ok());
  unsigned char resident = 0;
  EXPECT_EQ(mincore(va, kPage, &resident), 0) << "unmapped with a READ in flight";
  if (iova_) {
    // The controller writes at the buffer's IOVA: it stays mapped, to the same memory.
    ASSERT_TRUE(iova.has_value());
    EXPECT_EQ(iova_->Iova(va), iova) << "the IOVA went with a READ in flight";
    EXPECT_EQ(iova_->stats().mappings, mappings);
  }
  std::vector<hugemm::Buffer> fresh;
  for (size_t i = 0; i < 4; ++i) {
    absl::StatusOr<hugemm::Buffer> b = rt_->MapBuffer(hugemm::kPageSize2M);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_FALSE(FramesOf(*b).Overlaps(in_flight));
    fresh.push_back(std::move(*b));
  }
  ASSERT_EQ(ctrl_->in_flight(), 1u);
  std::vector<nvme::IoResult> done;
  ASSERT_TRUE(ctrl_->Drain(&done).ok());
  ASSERT_EQ(done.size(), 1u);
  EXPECT_TRUE(done[0].status.ok()) << done[0].status;
  // The last pin went with the reap, and the memory with it.
  errno = 0;
  EXPECT_EQ(mincore(va, kPage, &resident), -1);
  EXPECT_EQ(errno, ENOMEM);
  if (iova_) {
    // And the IOVA with it: the device no longer reaches that memory.
    EXPECT_FALSE(iova_->Iova(va).has_value());
    EXPECT_EQ(iova_->stats().mappings, mappings - 1 + fresh.size());
  }
}

// A driver that keeps an IOVA past its buffer's free (a stale address in a command) must
// meet the IOMMU, not the memory mapped next: the mapper hands out IOVAs no freed buffer
// had while its window has any.
TEST_F(NvmePinVmTest, InIovaModeAStaleIovaOfAFreedBufferReachesNoNewBuffer) {
  Start(/*pin_io=*/true);
  if (IsSkipped()) return;
  if (!iova_) GTEST_SKIP() << "physical mode";
  absl::StatusOr<hugemm::Buffer> victim = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(victim.ok()) << victim.status();
  const std::optional<uint64_t> stale = iova_->Iova(victim->data());
  ASSERT_TRUE(stale.has_value());
  ASSERT_TRUE(victim->Free().ok());
  ASSERT_FALSE(iova_->Iova(victim->data()).has_value()) << "no pin: unmapped at the free";
  std::vector<hugemm::Buffer> fresh;
  for (size_t i = 0; i < 4; ++i) {
    absl::StatusOr<hugemm::Buffer> b = rt_->MapBuffer(hugemm::kPageSize2M);
    ASSERT_TRUE(b.ok()) << b.status();
    std::memset(b->data(), static_cast<int>(kMarker), b->size());
    EXPECT_NE(iova_->Iova(b->data()), stale) << "buffer " << i << " has the freed one's IOVA";
    fresh.push_back(std::move(*b));
  }
  // A READ of one page whose PRP1 is the stale IOVA. The IOMMU refuses the write; the
  // controller's status for it varies, the memory is what counts.
  std::byte* dst = fresh[0].data();
  const std::optional<uint64_t> at = iova_->Iova(dst);
  ASSERT_TRUE(at.has_value());
  ctrl_->InjectPrpFault(
      {.entry = 0, .delta = static_cast<int64_t>(*stale) - static_cast<int64_t>(*at)});
  const absl::Status st = ctrl_->Read(kOffset / kBlock, dst, kPage);
  std::cout << "READ at a stale IOVA: " << st << "\n";
  for (size_t i = 0; i < fresh.size(); ++i) {
    EXPECT_TRUE(Untouched(fresh[i].data(), fresh[i].size()))
        << "the READ at the stale IOVA wrote into buffer " << i;
  }
}

}  // namespace
}  // namespace nvme_test
