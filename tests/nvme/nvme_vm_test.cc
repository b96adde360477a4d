// The userspace NVMe driver (examples/nvme) against qemu's NVMe controller in the VM, in
// physical mode, with queues, PRP lists and data in each memory kind: the host's pattern
// READ into hugemm buffers and checked at their virtual addresses; WRITEs that the host
// finds in the image after the VM stops (nvme_image check); a shifted PRP entry caught.
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/hugemm_vfio.h"
#include "tests/nvme/vm_device.h"

namespace nvme_test {
namespace {

constexpr uint64_t kBlock = 512;

// The test's own mapping of one 4K page of `va` at `iova` in the real container: 0, or
// the kernel's errno (EEXIST while hugemm still maps that IOVA).
int MapPageAt(uint64_t iova, void* va) {
  vfio_iommu_type1_dma_map map = {};
  map.argsz = sizeof map;
  map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  map.vaddr = reinterpret_cast<uintptr_t>(va);
  map.iova = iova;
  map.size = kPage;
  return ioctl(VfioContainer(), VFIO_IOMMU_MAP_DMA, &map) == 0 ? 0 : errno;
}

// Takes MapPageAt's page away again: 0, or the kernel's errno.
int UnmapPageAt(uint64_t iova) {
  vfio_iommu_type1_dma_unmap unmap = {};
  unmap.argsz = sizeof unmap;
  unmap.iova = iova;
  unmap.size = kPage;
  return ioctl(VfioContainer(), VFIO_IOMMU_UNMAP_DMA, &unmap) == 0 ? 0 : errno;
}

// One suite per setup, its tests run together: the runtime and the data buffer live
// for the suite (the kernel zeroes 1G pages once, not per test), the controller is
// started afresh for each test. Two setups never hold device-DAX memory at once.
template <typename SetupConstant>
class NvmeVmTest : public testing::Test {
 protected:
  static constexpr nvme_test::Setup kSetup = SetupConstant::value;

  struct Memory {
    std::unique_ptr<hugemm::Runtime> rt;
    std::unique_ptr<hugemm::IovaMapper> iova;  // IOVA mode; dropped before the runtime
    hugemm::Buffer buf;                        // dropped before the runtime
    std::string error;
  };

  static void SetUpTestSuite() {
    memory_ = new Memory;
    std::string why;
    if (Device(&why) == nullptr) return;
    absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
    if (!rt.ok()) {
      memory_->error = rt.status().ToString();
      return;
    }
    memory_->rt = std::move(*rt);
    memory_->iova = AttachIova(*memory_->rt, &memory_->error);
    if (!memory_->error.empty()) return;
    absl::StatusOr<hugemm::Buffer> buf = DataBuffer(*memory_->rt, kSetup);
    if (!buf.ok()) {
      memory_->error = buf.status().ToString();
      return;
    }
    memory_->buf = std::move(*buf);
  }
  static void TearDownTestSuite() {
    delete memory_;
    memory_ = nullptr;
  }

  void SetUp() override {
    std::string why;
    const nvme::MappedBar* bar = Device(&why);
    if (bar == nullptr) GTEST_SKIP() << why;
    ASSERT_EQ(memory_->error, "");
    absl::StatusOr<std::unique_ptr<nvme::Controller>> ctrl =
        nvme::Controller::Start(*memory_->rt, bar->registers(),
                                {.memory = QueueMemory(kSetup), .iova = memory_->iova.get()});
    ASSERT_TRUE(ctrl.ok()) << ctrl.status();
    ctrl_ = std::move(*ctrl);
    ASSERT_EQ(ctrl_->ns().block_size, kBlock);
  }

  const hugemm::Buffer& buf() const { return memory_->buf; }

  // READs `n` bytes of the host's pattern from image `offset` to `dst`, then checks
  // them at dst's virtual addresses and a page either side for stray bytes.
  void ReadAndCheck(uint64_t offset, std::byte* dst, size_t n) {
    std::memset(dst - kPage, static_cast<int>(kMarker), n + 2 * kPage);
    ASSERT_TRUE(ctrl_->Read(offset / kBlock, dst, n).ok());
    EXPECT_EQ(PatternProblem(kReadSeed, offset, dst, n), "");
    EXPECT_TRUE(Untouched(dst - kPage, kPage)) << "the page before the buffer was written";
    EXPECT_TRUE(Untouched(dst + n, kPage)) << "the page after the buffer was written";
  }

  // WRITEs write case `c` from `src`, filled with what the host expects at its offset.
  void WriteCase(const nvme_test::WriteCase& c, std::byte* src) {
    const uint64_t at = WriteOffset(kSetup, c, kIovaMode);
    FillPattern(kWriteSeed, at, src, c.length);
    if (c.shifted_page >= 0) ctrl_->InjectPrpFault({.entry = c.shifted_page, .delta = kPage});
    ASSERT_TRUE(ctrl_->Write(at / kBlock, src, c.length).ok()) << c.name;
  }

  static Memory* memory_;
  std::unique_ptr<nvme::Controller> ctrl_;
};

template <typename SetupConstant>
typename NvmeVmTest<SetupConstant>::Memory* NvmeVmTest<SetupConstant>::memory_ = nullptr;

template <Setup S>
using SetupIs = std::integral_constant<Setup, S>;
using Setups = testing::Types<SetupIs<Setup::kHugetlb2M>, SetupIs<Setup::kHugetlb1G>,
                              SetupIs<Setup::kDevDaxData>, SetupIs<Setup::kDevDaxQueues>>;
struct SetupNames {
  template <typename T>
  static std::string GetName(int) {
    constexpr const char* kNames[] = {"Hugetlb2M", "Hugetlb1G", "DevDaxData", "DevDaxQueues"};
    return kNames[static_cast<int>(T::value)];
  }
};
TYPED_TEST_SUITE(NvmeVmTest, Setups, SetupNames);

TYPED_TEST(NvmeVmTest, ReadsTheHostPatternAtTheBufferAddresses) {
  // One block ending where a folio ends; two pages across a folio boundary (PRP2 names
  // the second); a PRP list for a transfer starting mid-page and crossing a boundary.
  this->ReadAndCheck(3 * kBlock, BeforeBoundary(this->buf(), kBlock), kBlock);
  this->ReadAndCheck((1 << 20) + 5 * kBlock, BeforeBoundary(this->buf(), 2048), 4096);
  this->ReadAndCheck((2 << 20) + 9 * kBlock, BeforeBoundary(this->buf(), (100 << 10) + 512),
                     (300 << 10) + 512);
  EXPECT_GE(this->ctrl_->stats().with_prp_list, 1u);
  EXPECT_EQ(this->ctrl_->stats().commands, 3u);
}

TYPED_TEST(NvmeVmTest, ManyCommandsInFlightOverManySegments) {
  // 64K segments: every command is built from eight or more of them, and the transfer
  // is eight commands, all in flight at once.
  this->ctrl_->set_max_segment(64 << 10);
  this->ReadAndCheck((8 << 20) + 7 * kBlock, BeforeBoundary(this->buf(), (1 << 20) + 1536),
                     4 << 20);
  EXPECT_GE(this->ctrl_->stats().commands, (4u << 20) / this->ctrl_->max_transfer());
  EXPECT_GE(this->ctrl_->stats().max_segments, this->ctrl_->max_transfer() / (64 << 10));
  EXPECT_GE(this->ctrl_->stats().max_in_flight, 8u);
}

TYPED_TEST(NvmeVmTest, WritesWhatTheHostFindsInTheImage) {
  // The placements of the read cases, and the many-commands one with 64K segments.
  const size_t before[] = {kBlock, 2048, (100 << 10) + 512, (1 << 20) + 1536};
  size_t i = 0;
  for (const nvme_test::WriteCase& c : kWriteCases) {
    if (c.shifted_page >= 0) continue;
    this->ctrl_->set_max_segment(c.length > this->ctrl_->max_transfer() ? 64 << 10 : 0);
    this->WriteCase(c, BeforeBoundary(this->buf(), before[i++]));
  }
  EXPECT_EQ(i, std::size(before));
}

TYPED_TEST(NvmeVmTest, AReadToAnAddressOnePageOffIsCaught) {
  constexpr uint64_t kOffset = 16 << 20;
  constexpr size_t kLength = 64 << 10;
  std::byte* dst = this->buf().data() + kPage;  // page 5 and page 6 of the transfer share a folio
  // The same READ, right: the check passes.
  this->ReadAndCheck(kOffset, dst, kLength);
  // PRP entry 5 one page on: the controller writes page 5's data into page 6 and
  // reports success. Only the data shows it.
  std::memset(dst, static_cast<int>(kMarker), kLength);
  this->ctrl_->InjectPrpFault({.entry = 5, .delta = kPage});
  ASSERT_TRUE(this->ctrl_->Read(kOffset / kBlock, dst, kLength).ok());
  std::optional<size_t> bad = FirstMismatch(kReadSeed, kOffset, dst, kLength);
  ASSERT_TRUE(bad.has_value()) << "the check missed a page written one page off";
  EXPECT_EQ(*bad, 5 * kPage) << PatternProblem(kReadSeed, kOffset, dst, kLength);
  EXPECT_TRUE(Untouched(dst + 5 * kPage, kPage)) << "page 5 was written after all";
  EXPECT_EQ(PatternProblem(kReadSeed, kOffset, dst, 5 * kPage), "");
}

TYPED_TEST(NvmeVmTest, InIovaModeTheMemoryIsMappedOnceNotPerIo) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  const hugemm::IovaMapper& iova = *this->memory_->iova;
  const uint64_t maps = iova.stats().maps;
  EXPECT_GE(iova.stats().mappings, 2u) << "the queues' pool extent and the data buffer";
  std::optional<uint64_t> at = iova.Iova(this->buf().data());
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(*at % this->buf().folio_size(), 0u) << "an IOVA the IOMMU can map with huge pages";
  this->ctrl_->set_max_segment(64 << 10);
  this->ReadAndCheck((8 << 20) + 7 * kBlock, BeforeBoundary(this->buf(), (1 << 20) + 1536),
                     2 << 20);
  EXPECT_EQ(iova.stats().maps, maps) << "no VFIO_IOMMU_MAP_DMA per I/O";
}

TYPED_TEST(NvmeVmTest, InIovaModeAPhysicalAddressMissesAndOnlyTheDataShowsIt) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  constexpr uint64_t kOffset = 20 << 20;
  constexpr size_t kLength = 64 << 10;
  std::byte* dst = this->buf().data() + kPage;
  std::byte* page5 = dst + 5 * kPage;
  std::optional<hugemm::Translation> t = this->memory_->rt->Translate(page5);
  std::optional<uint64_t> iova = this->memory_->iova->Iova(page5);
  ASSERT_TRUE(t.has_value() && iova.has_value());
  const uint64_t phys = t->pfn << 12;
  ASSERT_NE(phys, *iova) << "the IOVA is the physical address: the case proves nothing";
  EXPECT_GE(*iova, uint64_t{1} << 37) << "an IOVA outside the test's window";
  // PRP entry 5 names page 5 by its physical address, as physical mode would: behind the
  // IOMMU that is another IOVA. The command still completes with status 0.
  std::memset(dst, static_cast<int>(kMarker), kLength);
  this->ctrl_->InjectPrpFault(
      {.entry = 5, .delta = static_cast<int64_t>(phys) - static_cast<int64_t>(*iova)});
  ASSERT_TRUE(this->ctrl_->Read(kOffset / kBlock, dst, kLength).ok());
  EXPECT_EQ(PatternProblem(kReadSeed, kOffset, dst, 5 * kPage), "");
  EXPECT_TRUE(Untouched(page5, kPage)) << "page 5 was reached by its physical address";
  EXPECT_EQ(PatternProblem(kReadSeed, kOffset + 6 * kPage, page5 + kPage, kLength - 6 * kPage), "");
}

TYPED_TEST(NvmeVmTest, WritesFromAnAddressOnePageOffForTheHostToCatch) {
  for (const nvme_test::WriteCase& c : kWriteCases) {
    if (c.shifted_page >= 0) this->WriteCase(c, this->buf().data() + kPage);
  }
}

class NvmeVmDriverTest : public testing::Test {
 protected:
  void SetUp() override {
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
        nvme::Controller::Start(*rt_, bar->registers(), {.io_depth = 16, .iova = iova_.get()});
    ASSERT_TRUE(ctrl.ok()) << ctrl.status();
    ctrl_ = std::move(*ctrl);
  }

  // The pins on the folio under `p` now (-1: not mapped).
  int32_t PinsAt(const void* p) const {
    absl::StatusOr<hugemm::FolioInfo> info = rt_->FolioInfoAt(p);
    return info.ok() ? info->pincount : -1;
  }

  // Every folio of the runtime's pools is free again: the controller's queues, PRP lists
  // and identify data went back, and nothing of them stays pinned.
  void ExpectPoolsIdle() {
    rt_->allocator().FlushThreadCache();
    for (const hugemm::PoolStats& s : rt_->allocator().Stats()) {
      EXPECT_EQ(s.free_bytes, s.mapped_bytes) << s.describe;
    }
  }

  // A controller afresh on the same function, which must read the host's pattern.
  void ExpectANewControllerReads(std::byte* dst) {
    std::string why;
    const nvme::MappedBar* bar = Device(&why);
    ASSERT_NE(bar, nullptr) << why;
    absl::StatusOr<std::unique_ptr<nvme::Controller>> ctrl =
        nvme::Controller::Start(*rt_, bar->registers(), {.io_depth = 16, .iova = iova_.get()});
    ASSERT_TRUE(ctrl.ok()) << ctrl.status();
    ctrl_ = std::move(*ctrl);
    std::memset(dst, static_cast<int>(kMarker), 8 * kPage);
    ASSERT_TRUE(ctrl_->Read((6 << 20) / kBlock, dst, 8 * kPage).ok());
    EXPECT_EQ(PatternProblem(kReadSeed, 6 << 20, dst, 8 * kPage), "");
  }

  static size_t OpenFds() {
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ++n;
    }
    return n;
  }

  std::unique_ptr<hugemm::Runtime> rt_;
  std::unique_ptr<hugemm::IovaMapper> iova_;  // dropped before the runtime
  std::unique_ptr<nvme::Controller> ctrl_;    // dropped before the mapper
};

TEST_F(NvmeVmDriverTest, IdentifiesTheHarnessController) {
  const char* serial = std::getenv("HUGEMM_TEST_NVME_SERIAL");
  const char* size = std::getenv("HUGEMM_TEST_NVME_SIZE");
  ASSERT_NE(serial, nullptr);
  ASSERT_NE(size, nullptr);
  EXPECT_EQ(ctrl_->info().serial, serial);
  EXPECT_EQ(ctrl_->info().vendor, 0x1b36);
  EXPECT_EQ(ctrl_->ns().bytes(), std::strtoull(size, nullptr, 10));
  EXPECT_EQ(ctrl_->slots(), 15u);
  EXPECT_GT(ctrl_->max_transfer(), 0u);
}

TEST_F(NvmeVmDriverTest, RefusesBadRequestsWithoutSubmitting) {
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* p = buf->data();
  const uint64_t blocks = ctrl_->ns().blocks;
  EXPECT_EQ(ctrl_->SubmitRead(0, p, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctrl_->SubmitRead(0, p, 100).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctrl_->SubmitRead(blocks, p, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctrl_->SubmitRead(blocks - 1, p, 2 * kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctrl_->SubmitRead(0, p, ctrl_->max_transfer() + kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ctrl_->SubmitRead(0, p + 2, kBlock).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::byte> heap(2 * kPage);  // not hugemm's: nothing to pin
  absl::StatusOr<uint16_t> cid = ctrl_->SubmitWrite(0, heap.data(), kBlock);
  EXPECT_FALSE(cid.ok());
  EXPECT_NE(cid.status().message().find("WRITE"), std::string::npos) << cid.status();
  EXPECT_EQ(ctrl_->in_flight(), 0u);
  EXPECT_EQ(ctrl_->stats().commands, 0u);
  // Every slot busy: the next submission waits for a reap.
  for (size_t i = 0; i < ctrl_->slots(); ++i) {
    ASSERT_TRUE(ctrl_->SubmitRead(i, p + i * kPage, kBlock).ok());
  }
  EXPECT_EQ(ctrl_->SubmitRead(0, p, kBlock).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ctrl_->Read(0, p, kBlock).code(), absl::StatusCode::kFailedPrecondition);
  std::vector<nvme::IoResult> done;
  ASSERT_TRUE(ctrl_->Drain(&done).ok());
  EXPECT_EQ(done.size(), ctrl_->slots());
}

TEST_F(NvmeVmDriverTest, ThePhaseTagSurvivesManyWraps) {
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  // Sixteen-entry queues, 200 commands: the completion ring wraps a dozen times.
  std::vector<nvme::IoResult> done;
  auto check = [&] {
    for (const nvme::IoResult& r : done) {
      ASSERT_TRUE(r.status.ok()) << r.status;
      const uint64_t slot = (r.tag - (4 << 20)) / (kPage + kBlock);
      ASSERT_EQ(PatternProblem(kReadSeed, r.tag, buf->data() + slot * kPage, kBlock), "");
    }
    done.clear();
  };
  for (uint64_t i = 0; i < 200;) {
    while (i < 200 && ctrl_->in_flight() < ctrl_->slots()) {
      const uint64_t offset = (i % 64) * (kPage + kBlock) + (4 << 20);
      absl::StatusOr<uint16_t> cid =
          ctrl_->SubmitRead(offset / kBlock, buf->data() + (i % 64) * kPage, kBlock, offset);
      ASSERT_TRUE(cid.ok()) << cid.status();
      ++i;
    }
    ASSERT_TRUE(ctrl_->Poll(&done).ok());
    check();
  }
  ASSERT_TRUE(ctrl_->Drain(&done).ok());
  check();
  EXPECT_EQ(ctrl_->stats().commands, 200u);
  EXPECT_GE(ctrl_->stats().io_queue_wraps, 12u);
}

// The C twin of the mapper against the real container: what it maps the kernel holds
// (a second mapping at that IOVA is refused), segments are IOVAs, and a freed buffer
// leaves the container at once (its IOVA can be mapped again).
TEST_F(NvmeVmDriverTest, InIovaModeTheCApiMapsIntoTheContainerAndAFreeUnmaps) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  hugemm_runtime* crt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &crt), 0) << hugemm_last_error();
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(crt, hugemm::kPageSize2M, nullptr, &buf), 0) << hugemm_last_error();
  // A window of its own, above the one the C++ mapper of this test hands out from.
  const hugemm_vfio_options options = {uint64_t{1} << 38, 0};
  hugemm_vfio* vfio = nullptr;
  ASSERT_EQ(hugemm_vfio_attach(crt, VfioContainer(), &options, &vfio), 0) << hugemm_last_error();
  size_t mappings = 0;
  ASSERT_EQ(hugemm_vfio_stats(vfio, &mappings, nullptr), 0);
  uint64_t iova = 0;
  ASSERT_EQ(hugemm_vfio_iova(vfio, buf.data, &iova), 0) << hugemm_last_error();
  EXPECT_GE(iova, options.iova_base);
  EXPECT_EQ(iova % hugemm::kPageSize2M, 0u);
  void* page = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  static_cast<volatile char*>(page)[0] = 1;
  EXPECT_EQ(MapPageAt(iova, page), EEXIST) << "the kernel does not hold the buffer's IOVA";

  hugemm_dma_segment segs[4];
  const long n = hugemm_vfio_pin_segments(vfio, static_cast<char*>(buf.data) + 512, 2 * kPage,
                                          HUGEMM_PIN | HUGEMM_WRITE, 0, segs, 4);
  ASSERT_EQ(n, 1) << hugemm_last_error();
  EXPECT_EQ(segs[0].phys_addr, iova + 512);
  EXPECT_EQ(segs[0].length, 2 * kPage);
  EXPECT_EQ(hugemm_unpin_range(crt, static_cast<char*>(buf.data) + 512, 2 * kPage, HUGEMM_PIN, 1),
            0)
      << hugemm_last_error();

  ASSERT_EQ(hugemm_free(crt, buf.data), 0) << hugemm_last_error();
  size_t after = 0;
  ASSERT_EQ(hugemm_vfio_stats(vfio, &after, nullptr), 0);
  EXPECT_EQ(after, mappings - 1);
  EXPECT_EQ(hugemm_vfio_iova(vfio, buf.data, &iova), -ENOENT);
  // The kernel let go of it too: the IOVA takes another mapping, which goes again.
  ASSERT_EQ(MapPageAt(iova, page), 0) << "the freed buffer's IOVA is still mapped";
  EXPECT_EQ(UnmapPageAt(iova), 0);
  munmap(page, kPage);
  hugemm_vfio_detach(vfio);
  hugemm_close(crt);
}

// What the C mapper leaves behind in the real container and the process: after the
// detach, with a pin still outstanding, every IOVA it mapped (a buffer, an allocation's
// pool extent) takes a new mapping; the pin is then released through the runtime, and
// after hugemm_close the process has the descriptors it had before hugemm_open.
TEST_F(NvmeVmDriverTest, InIovaModeTheCApiLeavesNothingMappedAfterDetachAndNothingOpenAfterClose) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  const size_t fds = OpenFds();
  hugemm_runtime* crt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &crt), 0) << hugemm_last_error();
  const hugemm_vfio_options options = {uint64_t{1} << 38, 0};
  hugemm_vfio* vfio = nullptr;
  ASSERT_EQ(hugemm_vfio_attach(crt, VfioContainer(), &options, &vfio), 0) << hugemm_last_error();
  hugemm_buffer buf, small;
  ASSERT_EQ(hugemm_map_buffer(crt, hugemm::kPageSize2M, nullptr, &buf), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_alloc(crt, kPage, nullptr, 0, &small), 0) << hugemm_last_error();
  uint64_t iovas[2] = {};
  ASSERT_EQ(hugemm_vfio_iova(vfio, buf.data, &iovas[0]), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_vfio_iova(vfio, small.data, &iovas[1]), 0) << hugemm_last_error();
  size_t mappings = 0;
  ASSERT_EQ(hugemm_vfio_stats(vfio, &mappings, nullptr), 0);
  EXPECT_EQ(mappings, 2u) << "the buffer and the allocation's pool extent";
  hugemm_dma_segment seg;
  ASSERT_EQ(hugemm_vfio_pin_segments(vfio, buf.data, kPage, HUGEMM_PIN | HUGEMM_WRITE, 0, &seg, 1),
            1)
      << hugemm_last_error();
  EXPECT_EQ(seg.phys_addr, iovas[0]);
  hugemm_vfio_detach(vfio);

  void* page = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(page, MAP_FAILED);
  static_cast<volatile char*>(page)[0] = 1;
  for (uint64_t iova : iovas) {
    const int err = MapPageAt(iova, page);
    EXPECT_EQ(err, 0) << "IOVA 0x" << std::hex << iova
                      << " still mapped after the detach: " << std::strerror(err);
    (void)UnmapPageAt(iova);
  }
  munmap(page, kPage);

  EXPECT_EQ(hugemm_unpin_range(crt, buf.data, kPage, HUGEMM_PIN, 1), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(crt, buf.data), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(crt, small.data), 0) << hugemm_last_error();
  hugemm_close(crt);
  EXPECT_EQ(OpenFds(), fds);
}

// Windows against the real container: a second runtime attached over IOVAs the first
// one uses is refused with the kernel's EEXIST and maps nothing; a disjoint window works;
// one too small for the runtime's memory is -ENOMEM and an inverted one -EINVAL, both
// leaving nothing attached.
TEST_F(NvmeVmDriverTest, InIovaModeWindowsThatOverlapOrDoNotFitAreRefusedLeavingNothing) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  hugemm_runtime* rts[2] = {};
  hugemm_buffer bufs[2];
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(hugemm_open(nullptr, &rts[i]), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_map_buffer(rts[i], hugemm::kPageSize2M, nullptr, &bufs[i]), 0)
        << hugemm_last_error();
  }
  const uint64_t base = uint64_t{1} << 38;
  const hugemm_vfio_options first = {base, 0};
  hugemm_vfio* a = nullptr;
  ASSERT_EQ(hugemm_vfio_attach(rts[0], VfioContainer(), &first, &a), 0) << hugemm_last_error();
  hugemm_vfio* b = nullptr;
  EXPECT_EQ(hugemm_vfio_attach(rts[1], VfioContainer(), &first, &b), -EEXIST)
      << hugemm_last_error();
  EXPECT_NE(std::strstr(hugemm_last_error(), "IOVA mapping of"), nullptr) << hugemm_last_error();
  EXPECT_EQ(b, nullptr);
  const hugemm_vfio_options tiny = {base + (uint64_t{1} << 36),
                                    base + (uint64_t{1} << 36) + 16 * kPage};
  EXPECT_EQ(hugemm_vfio_attach(rts[1], VfioContainer(), &tiny, &b), -ENOMEM) << hugemm_last_error();
  EXPECT_NE(std::strstr(hugemm_last_error(), "no room"), nullptr) << hugemm_last_error();
  const hugemm_vfio_options inverted = {tiny.iova_limit, tiny.iova_base};
  EXPECT_EQ(hugemm_vfio_attach(rts[1], VfioContainer(), &inverted, &b), -EINVAL)
      << hugemm_last_error();
  EXPECT_EQ(b, nullptr);
  const hugemm_vfio_options second = {tiny.iova_base, 0};
  ASSERT_EQ(hugemm_vfio_attach(rts[1], VfioContainer(), &second, &b), 0) << hugemm_last_error();
  uint64_t ia = 0, ib = 0;
  ASSERT_EQ(hugemm_vfio_iova(a, bufs[0].data, &ia), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_vfio_iova(b, bufs[1].data, &ib), 0) << hugemm_last_error();
  EXPECT_EQ(ia, base);
  EXPECT_EQ(ib, tiny.iova_base);
  // The refused attaches left nothing: each mapper maps its runtime's buffer only.
  for (hugemm_vfio* v : {a, b}) {
    size_t mappings = 0;
    ASSERT_EQ(hugemm_vfio_stats(v, &mappings, nullptr), 0);
    EXPECT_EQ(mappings, 1u);
  }
  hugemm_vfio_detach(b);
  hugemm_vfio_detach(a);
  for (hugemm_runtime* rt : rts) hugemm_close(rt);
}

// A container the program has not finished setting up (no group, no IOMMU) is refused
// when the mapper attaches, with the step it misses, even by a runtime holding nothing.
TEST_F(NvmeVmDriverTest, InIovaModeAContainerWithNoIommuIsRefusedAtAttach) {
  if (!kIovaMode) GTEST_SKIP() << "physical mode";
  const int bare = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  ASSERT_GE(bare, 0) << "/dev/vfio/vfio: " << std::strerror(errno);
  ASSERT_EQ(ioctl(bare, VFIO_GET_API_VERSION), VFIO_API_VERSION);
  hugemm_runtime* crt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &crt), 0) << hugemm_last_error();
  hugemm_vfio* vfio = nullptr;
  EXPECT_EQ(hugemm_vfio_attach(crt, bare, nullptr, &vfio), -EINVAL) << hugemm_last_error();
  EXPECT_NE(std::strstr(hugemm_last_error(), "VFIO_SET_IOMMU"), nullptr) << hugemm_last_error();
  EXPECT_EQ(vfio, nullptr);
  hugemm_close(crt);
  close(bare);
}

TEST_F(NvmeVmDriverTest, ACommandTheControllerFailsComesBackWithItsStatusAndLeavesNothing) {
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  constexpr uint64_t kOffset = 24 << 20;
  constexpr size_t kLength = 16 * kPage;  // a PRP list
  std::byte* bad = buf->data();
  std::byte* good = bad + kLength;
  std::memset(bad, static_cast<int>(kMarker), 2 * kLength);
  const hugemm::IovaMapperStats mapped = iova_ ? iova_->stats() : hugemm::IovaMapperStats{};
  const size_t fds = OpenFds();
  // List entry 2 eight bytes into its page: the controller refuses the list (4.3), while
  // a correct READ beside it is in flight too.
  ctrl_->InjectPrpFault({.entry = 2, .delta = 8});
  ASSERT_TRUE(ctrl_->SubmitRead(kOffset / kBlock, bad, kLength, /*tag=*/1).ok());
  ASSERT_TRUE(ctrl_->SubmitRead((kOffset + kLength) / kBlock, good, kLength, /*tag=*/2).ok());
  EXPECT_GT(PinsAt(bad), 0);
  std::vector<nvme::IoResult> done;
  ASSERT_TRUE(ctrl_->Drain(&done).ok());
  ASSERT_EQ(done.size(), 2u);
  for (const nvme::IoResult& r : done) {
    if (r.tag == 1) {
      EXPECT_EQ(r.status.code(), absl::StatusCode::kDataLoss) << r.status;
      EXPECT_NE(r.status.message().find("SC 0x13 (PRP Offset Invalid), do not retry"),
                std::string::npos)
          << r.status;
      EXPECT_NE(r.status.message().find("READ at block"), std::string::npos) << r.status;
    } else {
      EXPECT_TRUE(r.status.ok()) << r.status;
    }
  }
  EXPECT_TRUE(Untouched(bad, kLength)) << "the refused READ wrote data";
  EXPECT_EQ(PatternProblem(kReadSeed, kOffset + kLength, good, kLength), "");
  // Nothing of either command stays: no pin, no mapping, no descriptor.
  EXPECT_EQ(PinsAt(bad), 0);
  EXPECT_EQ(ctrl_->in_flight(), 0u);
  EXPECT_EQ(OpenFds(), fds);
  if (iova_) {
    EXPECT_EQ(iova_->stats().mappings, mapped.mappings);
    EXPECT_EQ(iova_->stats().maps, mapped.maps);
  }
  // The queue goes on: the same READ, right.
  ASSERT_TRUE(ctrl_->Read(kOffset / kBlock, bad, kLength).ok());
  EXPECT_EQ(PatternProblem(kReadSeed, kOffset, bad, kLength), "");
  EXPECT_EQ(PinsAt(bad), 0);
}

TEST_F(NvmeVmDriverTest, TeardownWithEveryCommandInFlightNeitherHangsNorLeaks) {
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* p = buf->data();
  const size_t fds = OpenFds();
  for (size_t i = 0; i < ctrl_->slots(); ++i) {
    ASSERT_TRUE(ctrl_->SubmitRead(i, p + i * kPage, kBlock).ok());
  }
  ASSERT_EQ(ctrl_->in_flight(), ctrl_->slots());
  EXPECT_GT(PinsAt(p), 0);
  const auto start = std::chrono::steady_clock::now();
  ctrl_.reset();  // waits for the commands, deletes the queues, shuts down
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(PinsAt(p), 0);
  ExpectPoolsIdle();
  EXPECT_EQ(OpenFds(), fds);
  ExpectANewControllerReads(p + 64 * kPage);
}

TEST_F(NvmeVmDriverTest, AFunctionUnboundUnderTheDriverGivesAClearErrorNotAHang) {
  if (kIovaMode) GTEST_SKIP() << "vfio-pci lets the function go only once its file is closed";
  absl::StatusOr<hugemm::Buffer> buf = rt_->MapBuffer(hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* p = buf->data();
  std::memset(p, static_cast<int>(kMarker), 4 * kPage);
  const std::string bdf = std::getenv("HUGEMM_TEST_NVME_BDF");
  // Unbinding uio_pci_generic disables the function: bus mastering goes off, so the
  // controller can neither fetch a command nor post its completion.
  {
    std::ofstream unbind("/sys/bus/pci/devices/" + bdf + "/driver/unbind");
    unbind << bdf;
    unbind.close();
    ASSERT_TRUE(unbind.good()) << "unbinding " << bdf;
  }
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(ctrl_->SubmitRead(0, p, 4 * kPage).ok());
  std::vector<nvme::IoResult> done;
  absl::Status st = ctrl_->Drain(&done);
  EXPECT_FALSE(st.ok());
  std::cout << "Drain with the function unbound: " << st << "\n";
  ctrl_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_TRUE(Untouched(p, 4 * kPage));
  EXPECT_EQ(PinsAt(p), 0);
  ExpectPoolsIdle();
  // Back to uio_pci_generic with bus mastering on, for the next test and a new controller.
  nvme::PciFunction fn(bdf);
  ASSERT_TRUE(fn.BindDriver("uio_pci_generic").ok());
  ASSERT_TRUE(fn.EnableBusMaster().ok());
  ExpectANewControllerReads(p + 64 * kPage);
}

}  // namespace
}  // namespace nvme_test
