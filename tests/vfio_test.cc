// The IOVA mapper: every extent and buffer of a runtime mapped into a VFIO container once,
// at an IOVA aligned to its page size, unmapped before it goes; DMA segments in IOVA space.
// The container is the fake machine's (FakeOs answers the ioctls; no IOMMU here) for the
// bookkeeping and the error paths, and a recording one over real huge pages for the
// segments. The device itself is driven in the VM (tests/nvme, IOVA mode).
#include "hugemm/vfio.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_vfio.h"
#include "hugemm/runtime.h"
#include "runtime/api/c_bridge.h"
#include "tests/fake_os.h"
#include "tests/recording_vfio.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;

// Fails the nth VFIO map (counting from 1) or every unmap when asked to.
class FailingVfio : public OsWrapper {
 public:
  explicit FailingVfio(Os& target) : OsWrapper(target) {}
  absl::Status VfioMapDma(int fd, const void* va, size_t length, uint64_t iova) override {
    if (++maps_ == fail_map_) return ErrnoStatus(EPERM, "VFIO_IOMMU_MAP_DMA");
    return OsWrapper::VfioMapDma(fd, va, length, iova);
  }
  absl::Status VfioUnmapDma(int fd, uint64_t iova, size_t length) override {
    if (fail_unmaps_) return ErrnoStatus(EIO, "VFIO_IOMMU_UNMAP_DMA");
    return OsWrapper::VfioUnmapDma(fd, iova, length);
  }
  absl::StatusOr<int> Duplicate(int fd) override {
    if (fail_duplicate_) return ErrnoStatus(EMFILE, "fcntl F_DUPFD_CLOEXEC");
    return OsWrapper::Duplicate(fd);
  }
  int maps_ = 0;
  int fail_map_ = 0;
  bool fail_unmaps_ = false;
  bool fail_duplicate_ = false;
};

class VfioFakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.os = &os_});
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    absl::StatusOr<int> fd = os_.OpenVfioContainer();
    ASSERT_TRUE(fd.ok()) << fd.status();
    container_ = *fd;
  }
  void TearDown() override { (void)os_.Close(container_); }

  FakeOs os_;
  std::unique_ptr<Runtime> rt_;
  int container_ = -1;
};

// A program that closes its container while the mapper lives and opens another, which
// takes the same number: the mapper holds the first by a descriptor of its own and maps
// and unmaps there only, so the new one keeps exactly the program's own mappings.
TEST_F(VfioFakeTest, AContainerClosedFirstLeavesTheNextOneOfItsNumberAlone) {
  const size_t fds_before = os_.open_fds();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(os_.open_fds(), fds_before + 1) << "the mapper's own descriptor";
  absl::StatusOr<Buffer> before = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(before.ok()) << before.status();
  HUGEMM_ASSERT_OK(os_.Close(container_));
  absl::StatusOr<int> next = os_.OpenVfioContainer();
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(*next, container_) << "a new descriptor takes the lowest free number";
  absl::StatusOr<void*> own =
      os_.Mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(own.ok()) << own.status();
  HUGEMM_ASSERT_OK(os_.VfioMapDma(*next, *own, 4096, uint64_t{1} << 38));
  const std::map<uint64_t, iovec> program = os_.VfioMappings(*next);

  absl::StatusOr<Buffer> after = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE((*m)->Iova(after->data()).has_value());
  HUGEMM_ASSERT_OK(before->Free());
  EXPECT_EQ(os_.VfioMappings(*next).size(), program.size()) << "nothing mapped or unmapped there";
  ::testing::internal::CaptureStderr();
  m->reset();
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "every unmap found its mapping";
  EXPECT_EQ(os_.VfioMappings(*next).size(), program.size());
  EXPECT_EQ(os_.open_fds(), fds_before) << "the mapper's descriptor closed";
  HUGEMM_ASSERT_OK(os_.Munmap(*own, 4096));
}

TEST_F(VfioFakeTest, MapsWhatIsHeldThenEachExtentOnceAndUnmapsBeforeItGoes) {
  absl::StatusOr<Buffer> before = rt_->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(before.ok()) << before.status();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  std::map<uint64_t, iovec> maps = os_.VfioMappings(container_);
  ASSERT_EQ(maps.size(), 1u) << "the buffer mapped before the mapper came";
  EXPECT_EQ(maps.begin()->second.iov_base, before->data());
  EXPECT_EQ(maps.begin()->first % kPageSize2M, 0u);
  EXPECT_EQ((*m)->Iova(before->data() + 5000), maps.begin()->first + 5000);

  // A hundred 4K allocations come from one pool extent: one mapping, not a hundred.
  std::vector<Buffer> small;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<Buffer> b = rt_->Allocate(4096);
    ASSERT_TRUE(b.ok()) << b.status();
    small.push_back(std::move(*b));
  }
  EXPECT_EQ(os_.VfioMappings(container_).size(), 2u);
  EXPECT_EQ((*m)->stats().maps, 2u);
  for (const Buffer& b : small) EXPECT_TRUE((*m)->Iova(b.data()).has_value());
  small.clear();
  EXPECT_EQ(os_.VfioMappings(container_).size(), 2u) << "the extent stays in its pool";
  EXPECT_GT(rt_->allocator().Shrink(), 0u);
  EXPECT_EQ(os_.VfioMappings(container_).size(), 1u) << "unmapped before the pool let it go";

  HUGEMM_ASSERT_OK(before->Free());
  EXPECT_TRUE(os_.VfioMappings(container_).empty());
  EXPECT_EQ((*m)->stats().unmaps, 2u);
  EXPECT_EQ((*m)->stats().mappings, 0u);
}

TEST_F(VfioFakeTest, IovasAreAlignedToThePageSizeAndAFreedOneIsNotHandedOutAtOnce) {
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(*rt_, container_, {.iova_base = 0x1000});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> a =
      rt_->Allocate(4096, {.backing = BackingKind::kAnon, .page_size = kPageSize4K});
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<Buffer> b = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(b.ok()) << b.status();
  const uint64_t ib = *(*m)->Iova(b->data());
  EXPECT_EQ(ib % kPageSize2M, 0u) << "a 2M range at a 2M-aligned IOVA, above the 4K extent";
  HUGEMM_ASSERT_OK(b->Free());
  absl::StatusOr<Buffer> c = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(*(*m)->Iova(c->data()), ib) << "a stale IOVA of the freed buffer reaches the new one";
  EXPECT_EQ(*(*m)->Iova(c->data()) % kPageSize2M, 0u);
}

TEST_F(VfioFakeTest, FreedIovasAreHandedOutAgainOnlyOnceTheWindowHasNoFreshRoom) {
  const uint64_t base = uint64_t{1} << 32;
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(
      *rt_, container_, {.iova_base = base, .iova_limit = base + 5 * kPageSize2M});
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<uint64_t> iovas;
  std::vector<Buffer> held;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Buffer> b = rt_->MapBuffer(kPageSize2M);
    ASSERT_TRUE(b.ok()) << b.status();
    iovas.push_back(*(*m)->Iova(b->data()));
    HUGEMM_ASSERT_OK(b->Free());
  }
  EXPECT_EQ(iovas, (std::vector<uint64_t>{base, base + kPageSize2M, base + 2 * kPageSize2M}))
      << "each buffer at IOVAs no freed buffer had";
  // A 4M buffer takes the last 4M never handed out; then the freed IOVAs come back,
  // lowest first.
  absl::StatusOr<Buffer> big = rt_->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(*(*m)->Iova(big->data()), base + 3 * kPageSize2M);
  absl::StatusOr<Buffer> again = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*(*m)->Iova(again->data()), base);
  HUGEMM_ASSERT_OK(big->Free());
  // Freed IOVAs next to each other make one range again.
  absl::StatusOr<Buffer> large = rt_->MapBuffer(4 * kPageSize2M);
  ASSERT_TRUE(large.ok()) << large.status();
  EXPECT_EQ(*(*m)->Iova(large->data()), base + kPageSize2M);
  absl::StatusOr<Buffer> full = rt_->MapBuffer(kPageSize2M);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << full.status();
}

// A freed range and the alignment gap a later mapping leaves right above it are one hole:
// a 2M mapping fits there once the fresh part of the window is gone.
TEST_F(VfioFakeTest, AFreedRangeAndTheAlignmentGapAboveItAreOneHole) {
  const uint64_t base = uint64_t{1} << 32;
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(
      *rt_, container_, {.iova_base = base, .iova_limit = base + 2 * kPageSize2M});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> small =
      rt_->MapBuffer(4096, {.backing = BackingKind::kAnon, .page_size = kPageSize4K});
  ASSERT_TRUE(small.ok()) << small.status();
  EXPECT_EQ(*(*m)->Iova(small->data()), base);
  HUGEMM_ASSERT_OK(small->Free());
  absl::StatusOr<Buffer> first = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*(*m)->Iova(first->data()), base + kPageSize2M) << "the fresh part first";
  absl::StatusOr<Buffer> second = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(*(*m)->Iova(second->data()), base);
}

TEST_F(VfioFakeTest, SegmentsAreRunsInIovaSpaceWithTheMaximumHonoured) {
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> buf = rt_->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  const uint64_t base = *(*m)->Iova(buf->data());
  // Across the boundary of the two folios, from mid-page: one run in IOVA space.
  std::byte* va = buf->data() + kPageSize2M - 3 * 4096 + 100;
  DmaSegment segs[8];
  std::vector<FolioSpan> pinned;
  absl::StatusOr<size_t> n = (*m)->PinSegments(va, 6 * 4096, kGupPin | kGupWrite, 0, segs, &pinned);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(segs[0].phys_addr, base + (va - buf->data()));
  EXPECT_EQ(segs[0].length, 6u * 4096);
  EXPECT_EQ(pinned.size(), 2u) << "one span per folio";
  EXPECT_TRUE(rt_->pinner().MaybeDmaPinned(va));
  rt_->pinner().UnpinFolios(pinned, RefKind::kPin, true);
  // The maximum: 16K runs, the first cut short at the start's page.
  n = (*m)->PinSegments(va, 6 * 4096, kGupPin, 16384, segs, &pinned);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(segs[0].length, 16384u);
  EXPECT_EQ(segs[1].phys_addr, segs[0].phys_addr + 16384);
  HUGEMM_ASSERT_OK(rt_->pinner().UnpinRange(va, 6 * 4096, RefKind::kPin));
  // Too little room: nothing stays pinned.
  n = (*m)->PinSegments(va, 6 * 4096, kGupPin, 4096, absl::MakeSpan(segs, 3));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kResourceExhausted) << n.status();
  EXPECT_FALSE(rt_->pinner().MaybeDmaPinned(va));
  // A handle's segments say the same.
  absl::StatusOr<PinnedRange> pin = rt_->pinner().Pin(va, 6 * 4096, kGupPin);
  ASSERT_TRUE(pin.ok()) << pin.status();
  absl::StatusOr<std::vector<DmaSegment>> all = (*m)->Segments(*pin);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].phys_addr, base + (va - buf->data()));
}

TEST_F(VfioFakeTest, MemoryTheMapperDoesNotMapIsRefusedAndNothingStaysPinned) {
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> buf = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  // Memory registered as external is the program's own: the mapper never saw it.
  absl::StatusOr<void*> own =
      os_.Mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(own.ok()) << own.status();
  absl::StatusOr<uint64_t> ext = rt_->RegisterExternal(*own, 8192);
  ASSERT_TRUE(ext.ok()) << ext.status();
  DmaSegment segs[4];
  absl::StatusOr<size_t> n = (*m)->PinSegments(*own, 8192, kGupPin, 0, segs);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("VFIO container"));
  EXPECT_THAT(n.status().message(), HasSubstr("device's address space"));
  EXPECT_FALSE(rt_->pinner().MaybeDmaPinned(*own));
  EXPECT_FALSE((*m)->Iova(*own).has_value());
  HUGEMM_ASSERT_OK(rt_->UnregisterExternal(*ext));
  HUGEMM_ASSERT_OK(os_.Munmap(*own, 8192));
}

// Two runtimes, each with its mapper: a mapper maps and pins only its own runtime's
// memory; two mappers share a container in disjoint IOVA windows, and one going leaves
// the other's mappings (vfio.h: in one window, the kernel would refuse the second's maps).
TEST_F(VfioFakeTest, TwoRuntimesMapOnlyTheirOwnMemory) {
  absl::StatusOr<std::unique_ptr<Runtime>> other = Runtime::Open({.os = &os_});
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  const uint64_t base = uint64_t{1} << 38;
  absl::StatusOr<std::unique_ptr<IovaMapper>> m2 =
      IovaMapper::Attach(**other, container_, {.iova_base = base});
  ASSERT_TRUE(m2.ok()) << m2.status();
  absl::StatusOr<Buffer> mine = rt_->MapBuffer(kPageSize2M);
  absl::StatusOr<Buffer> theirs = (*other)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(mine.ok() && theirs.ok());
  EXPECT_EQ(os_.VfioMappings(container_).size(), 2u);
  EXPECT_EQ((*m)->stats().mappings, 1u);
  EXPECT_EQ((*m2)->stats().mappings, 1u);
  EXPECT_FALSE((*m)->Iova(theirs->data()).has_value());
  ASSERT_TRUE((*m2)->Iova(theirs->data()).has_value());
  EXPECT_GE(*(*m2)->Iova(theirs->data()), base);
  DmaSegment segs[2];
  absl::StatusOr<size_t> n = (*m)->PinSegments(theirs->data(), kPageSize2M, kGupPin, 0, segs);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound) << n.status();
  EXPECT_FALSE((*other)->pinner().MaybeDmaPinned(theirs->data()));
  m2->reset();
  HUGEMM_ASSERT_OK(theirs->Free());
  other->reset();
  std::map<uint64_t, iovec> maps = os_.VfioMappings(container_);
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_EQ(maps.begin()->second.iov_base, mine->data());
  HUGEMM_ASSERT_OK(mine->Free());
  EXPECT_TRUE(os_.VfioMappings(container_).empty());
}

// No descriptor left for the mapper's own copy of the container: ResourceExhausted with
// EMFILE (-EMFILE in C), nothing held, and memory that comes after is mapped nowhere.
TEST_F(VfioFakeTest, NoDescriptorLeftForTheMapperFailsTheAttachAndHoldsNothing) {
  FailingVfio vfio(os_);
  vfio.fail_duplicate_ = true;
  const size_t fds = os_.open_fds();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(*rt_, container_, {.os = &vfio});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kResourceExhausted) << m.status();
  EXPECT_EQ(ErrnoOf(m.status()), EMFILE);
  EXPECT_THAT(m.status().message(), HasSubstr("VFIO container"));
  EXPECT_EQ(os_.open_fds(), fds);
  absl::StatusOr<Buffer> b = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(os_.VfioMappings(container_).empty()) << "no observer was left behind";
}

TEST_F(VfioFakeTest, AMapTheKernelRefusesFailsTheAllocationAndLeavesNothing) {
  FailingVfio vfio(os_);
  absl::StatusOr<Buffer> held = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(held.ok());
  absl::StatusOr<Buffer> held2 = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(held2.ok());
  // At attach: the second held range is refused; the first is unmapped again.
  vfio.fail_map_ = 2;
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(*rt_, container_, {.os = &vfio});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(ErrnoOf(m.status()), EPERM) << m.status();
  EXPECT_THAT(m.status().message(), HasSubstr("IOVA mapping of"));
  EXPECT_THAT(m.status().message(), HasSubstr("hugetlb 2M buffer"));
  EXPECT_TRUE(os_.VfioMappings(container_).empty());
  // Later: MapBuffer fails with the kernel's word and gives its memory back.
  vfio.maps_ = 0;
  vfio.fail_map_ = 3;
  m = IovaMapper::Attach(*rt_, container_, {.os = &vfio});
  ASSERT_TRUE(m.ok()) << m.status();
  const size_t mappings = os_.live_mappings();
  absl::StatusOr<Buffer> refused = rt_->MapBuffer(kPageSize2M);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ErrnoOf(refused.status()), EPERM) << refused.status();
  EXPECT_EQ(os_.live_mappings(), mappings);
  EXPECT_EQ(os_.VfioMappings(container_).size(), 2u);
  EXPECT_EQ((*m)->stats().mappings, 2u);
  // Dropping the mapper unmaps all it mapped.
  m->reset();
  EXPECT_TRUE(os_.VfioMappings(container_).empty());
}

TEST_F(VfioFakeTest, ARefusedUnmapNeverHandsItsIovasOutAgain) {
  FailingVfio vfio(os_);
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(*rt_, container_, {.os = &vfio});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> a = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(a.ok());
  const uint64_t ia = *(*m)->Iova(a->data());
  vfio.fail_unmaps_ = true;
  HUGEMM_ASSERT_OK(a->Free());
  vfio.fail_unmaps_ = false;
  EXPECT_EQ((*m)->stats().unmap_failures, 1u);
  absl::StatusOr<Buffer> b = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(*(*m)->Iova(b->data()), ia);
  // The fake still holds the old mapping: take it away, as the kernel would at close.
  HUGEMM_ASSERT_OK(os_.VfioUnmapDma(container_, ia, kPageSize2M));
}

TEST_F(VfioFakeTest, AFullWindowIsResourceExhaustedNamingTheRange) {
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(
      *rt_, container_, {.iova_base = 1ull << 32, .iova_limit = (1ull << 32) + kPageSize2M});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> a = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<Buffer> b = rt_->MapBuffer(kPageSize2M);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_THAT(b.status().message(), HasSubstr("no room for 2 MiB"));
}

TEST_F(VfioFakeTest, BadArgumentsAreRefused) {
  EXPECT_EQ(IovaMapper::Attach(*rt_, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IovaMapper::Attach(*rt_, container_, {.iova_base = 0x1234}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IovaMapper::Attach(*rt_, container_, {.iova_base = 1 << 20, .iova_limit = 1 << 20})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A descriptor that is no container: the kernel's ENOTTY, once there is memory to map.
  absl::StatusOr<Buffer> a = rt_->MapBuffer(kPageSize2M);
  ASSERT_TRUE(a.ok());
  absl::StatusOr<int> fd = os_.IoUringSetup(1);
  ASSERT_TRUE(fd.ok());
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, *fd);
  EXPECT_EQ(ErrnoOf(m.status()), ENOTTY) << m.status();
  HUGEMM_ASSERT_OK(os_.Close(*fd));
}

TEST(VfioRealMemory, SegmentsOfPhysicallyScatteredFoliosAreOneIovaRun) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
  RecordingVfio vfio;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(**rt, RecordingVfio::kContainer, {.os = &vfio});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(8 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(vfio.size(), 1u);
  std::vector<DmaSegment> phys(64), iova(64);
  absl::StatusOr<size_t> np =
      (*rt)->pinner().PinSegments(buf->data(), buf->size(), kGupPin, 0, absl::MakeSpan(phys));
  ASSERT_TRUE(np.ok()) << np.status();
  absl::StatusOr<size_t> ni =
      (*m)->PinSegments(buf->data(), buf->size(), kGupPin, 0, absl::MakeSpan(iova));
  ASSERT_TRUE(ni.ok()) << ni.status();
  ASSERT_EQ(*ni, 1u) << "the whole buffer is one IOVA run, whatever its " << *np
                     << " physical runs";
  EXPECT_EQ(iova[0].phys_addr, *(*m)->Iova(buf->data()));
  EXPECT_EQ(iova[0].length, buf->size());
  EXPECT_EQ(iova[0].phys_addr % kPageSize2M, 0u);
  // With a 1M maximum: 16 runs, back to back.
  ni = (*m)->PinSegments(buf->data(), buf->size(), kGupPin, 1 << 20, absl::MakeSpan(iova));
  ASSERT_TRUE(ni.ok()) << ni.status();
  ASSERT_EQ(*ni, 16u);
  for (size_t i = 1; i < *ni; ++i) {
    EXPECT_EQ(iova[i].phys_addr, iova[i - 1].phys_addr + (1 << 20));
  }
  for (int i = 0; i < 3; ++i) {
    HUGEMM_ASSERT_OK((*rt)->pinner().UnpinRange(buf->data(), buf->size(), RefKind::kPin));
  }
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_EQ(vfio.size(), 0u);
  m->reset();
}

TEST(VfioRealMemory, PinsOnManyThreadsWhileExtentsComeAndGo) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  RecordingVfio vfio;
  // Frees go straight back to the pool (no magazine keeps a folio, and so its extent),
  // so an extent is idle whenever its folios are, and the shrinker can take it.
  RuntimeOptions options;
  options.allocator.thread_cache = false;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open(options);
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m =
      IovaMapper::Attach(**rt, RecordingVfio::kContainer, {.os = &vfio});
  ASSERT_TRUE(m.ok()) << m.status();
  std::atomic<int> wrong{0};
  std::atomic<int> pinners_left{3};
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      DmaSegment segs[4];
      std::vector<FolioSpan> pinned;
      // At least 200 rounds, and on until the shrinker has taken an extent under them.
      for (int i = 0; i < 200 || ((*m)->stats().unmaps == 0 && absl::Now() < deadline); ++i) {
        // Whole 2M folios and small ones, from extents the shrinker may take.
        absl::StatusOr<Buffer> b = (*rt)->Allocate(i % 3 == 0 ? kPageSize2M : 64 << 10);
        if (!b.ok()) continue;  // another run may hold the pool's pages
        pinned.clear();
        absl::StatusOr<size_t> n =
            (*m)->PinSegments(b->data(), b->size(), kGupPin | kGupWrite, 0, segs, &pinned);
        if (!n.ok() || *n != 1 || segs[0].phys_addr != *(*m)->Iova(b->data()) ||
            segs[0].length != b->size()) {
          ++wrong;
        }
        if (n.ok()) (*rt)->pinner().UnpinFolios(pinned, RefKind::kPin, true);
      }
      --pinners_left;
    });
  }
  threads.emplace_back([&] {
    while (pinners_left.load() > 0) (void)(*rt)->allocator().Shrink();
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT((*m)->stats().unmaps, 0u) << "the shrinker took extents while others pinned";
  EXPECT_EQ((*m)->stats().unmap_failures, 0u);
  (void)(*rt)->allocator().Shrink();
  EXPECT_EQ((*m)->stats().mappings, vfio.size());
  m->reset();
  EXPECT_EQ(vfio.size(), 0u);
}

// A space that gives each 4K page of one buffer an address of its own, 8K apart: runs
// split inside a folio.
class ScatteredSpace : public DmaAddressSpace {
 public:
  ScatteredSpace(const std::byte* base, size_t size)
      : base_(reinterpret_cast<uintptr_t>(base)), size_(size) {}
  bool DeviceAddress(uintptr_t va, uint64_t* addr, uint64_t* contiguous) const override {
    if (va < base_ || va - base_ >= size_) return false;
    const uint64_t off = va - base_;
    *addr = 0x10000000 + (off / 4096) * 8192 + off % 4096;
    *contiguous = 4096 - off % 4096;
    return true;
  }

 private:
  uintptr_t base_;
  size_t size_;
};

TEST(DmaAddressSpace, RunsSplitInsideAFolioAndAFullOutputLeavesNothing) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  const ScatteredSpace space(buf->data(), 4 * 4096);  // the space knows four pages
  Pinner& pinner = (*rt)->pinner();
  DmaSegment segs[8];
  absl::StatusOr<size_t> n =
      pinner.PinSegments(buf->data() + 100, 4 * 4096 - 100, kGupPin, 0, segs, nullptr, &space);
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 4u);
  EXPECT_EQ(segs[0].phys_addr, 0x10000000u + 100);
  EXPECT_EQ(segs[0].length, 4096u - 100);
  EXPECT_EQ(segs[3].phys_addr, 0x10000000u + 3 * 8192);
  EXPECT_EQ(segs[3].length, 4096u);
  HUGEMM_ASSERT_OK(pinner.UnpinRange(buf->data() + 100, 4 * 4096 - 100, RefKind::kPin));
  // Three segments for four runs: refused, with nothing pinned; a partial pin takes the
  // three pages they reach, inside the folio.
  n = pinner.PinSegments(buf->data(), 4 * 4096, kGupPin, 0, absl::MakeSpan(segs, 3), nullptr,
                         &space);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kResourceExhausted) << n.status();
  EXPECT_FALSE(pinner.MaybeDmaPinned(buf->data()));
  std::vector<FolioSpan> part;
  n = pinner.PinSegments(buf->data(), 4 * 4096, kGupPin | kGupPartial, 0, absl::MakeSpan(segs, 3),
                         &part, &space);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(segs[2].phys_addr, 0x10000000u + 2 * 8192);
  ASSERT_EQ(part.size(), 1u);
  EXPECT_EQ(part[0].pages, 3u);
  pinner.UnpinFolios(part, RefKind::kPin);
  EXPECT_FALSE(pinner.MaybeDmaPinned(buf->data()));
  // A page the space does not know: FailedPrecondition naming it.
  n = pinner.PinSegments(buf->data(), 5 * 4096, kGupPin, 0, segs, nullptr, &space);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("device's address space"));
  EXPECT_FALSE(pinner.MaybeDmaPinned(buf->data()));
  // A handle's segments in the space, and the same refusal.
  absl::StatusOr<PinnedRange> pin = pinner.Pin(buf->data(), 5 * 4096, kGupPin);
  ASSERT_TRUE(pin.ok()) << pin.status();
  absl::StatusOr<std::vector<DmaSegment>> all = pin->Segments(0, &space);
  EXPECT_EQ(all.status().code(), absl::StatusCode::kFailedPrecondition) << all.status();
  // It names the first byte the space has no address for, not the folio's start.
  EXPECT_THAT(all.status().message(),
              HasSubstr(absl::StrFormat("0x%x has no address",
                                        reinterpret_cast<uintptr_t>(buf->data()) + 4 * 4096)))
      << all.status();
  PinnedRange four = std::move(*pin);
  four.Release();
  pin = pinner.Pin(buf->data(), 4 * 4096, kGupPin);
  ASSERT_TRUE(pin.ok()) << pin.status();
  all = pin->Segments(8192, &space);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 4u);
}

TEST(DmaAddressSpace, APartialPinCountsOnlyTheSegmentsOfWhatItPinned) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  // Two pages before the folio boundary, three after: five runs, room for four.
  std::byte* start = buf->data() + kPageSize2M - 2 * 4096;
  const ScatteredSpace space(start, 5 * 4096);
  DmaSegment segs[4];
  std::vector<FolioSpan> pinned;
  absl::StatusOr<size_t> n =
      (*rt)->pinner().PinSegments(start, 5 * 4096, kGupPin | kGupPartial, 0, segs, &pinned, &space);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 4u) << "the first folio's two runs and two of the second's three";
  ASSERT_EQ(pinned.size(), 2u);
  EXPECT_EQ(pinned[0].pages, 2u);
  EXPECT_EQ(pinned[1].pages, 2u) << "the second folio's third page is not pinned";
  EXPECT_EQ(pinned[1].first_page, 0u);
  (*rt)->pinner().UnpinFolios(pinned, RefKind::kPin);
  EXPECT_FALSE((*rt)->pinner().MaybeDmaPinned(start));
  EXPECT_FALSE((*rt)->pinner().MaybeDmaPinned(start + kPageSize2M));
}

TEST(VfioCApi, AttachPinSegmentsUnpinDetach) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_vfio* vfio = nullptr;
  EXPECT_EQ(hugemm_vfio_attach(nullptr, 3, nullptr, &vfio), -EINVAL);
  EXPECT_EQ(hugemm_vfio_attach(rt, 3, nullptr, nullptr), -EINVAL);
  EXPECT_EQ(hugemm_vfio_attach(rt, -1, nullptr, &vfio), -EINVAL);
  EXPECT_THAT(hugemm_last_error(), HasSubstr("container descriptor"));
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, 2 << 20, nullptr, &buf), 0) << hugemm_last_error();
  // A descriptor that is no VFIO container: the kernel's ENOTTY comes back.
  EXPECT_EQ(hugemm_vfio_attach(rt, 0, nullptr, &vfio), -ENOTTY) << hugemm_last_error();
  EXPECT_THAT(hugemm_last_error(), HasSubstr("not a VFIO container"));
  EXPECT_EQ(vfio, nullptr);
  EXPECT_EQ(hugemm_vfio_iova(nullptr, buf.data, nullptr), -EINVAL);
  EXPECT_EQ(hugemm_vfio_pin_segments(nullptr, buf.data, 4096, HUGEMM_PIN, 0, nullptr, 0), -EINVAL);
  EXPECT_EQ(hugemm_vfio_stats(nullptr, nullptr, nullptr), -EINVAL);
  hugemm_vfio_detach(nullptr);
  EXPECT_EQ(hugemm_free(rt, buf.data), 0);
  hugemm_close(rt);
}

// The descriptor is checked when the mapper attaches, not when the first memory comes:
// a runtime that holds nothing yet is refused at once, and nothing stays observing it.
TEST(VfioCApi, ADescriptorThatIsNoContainerIsRefusedBeforeAnyMemory) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  const int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  hugemm_vfio* vfio = nullptr;
  EXPECT_EQ(hugemm_vfio_attach(rt, devnull, nullptr, &vfio), -ENOTTY) << hugemm_last_error();
  EXPECT_THAT(hugemm_last_error(), HasSubstr("not a VFIO container"));
  EXPECT_EQ(vfio, nullptr);
  ASSERT_EQ(close(devnull), 0);
  EXPECT_EQ(hugemm_vfio_attach(rt, devnull, nullptr, &vfio), -EBADF) << hugemm_last_error();
  EXPECT_THAT(hugemm_last_error(), HasSubstr("not open"));
  EXPECT_EQ(vfio, nullptr);
  // Open, but with O_PATH: the same errno, and a message that does not call it closed.
  const int path_only = open("/dev/null", O_PATH | O_CLOEXEC);
  ASSERT_GE(path_only, 0);
  EXPECT_EQ(hugemm_vfio_attach(rt, path_only, nullptr, &vfio), -EBADF) << hugemm_last_error();
  EXPECT_THAT(hugemm_last_error(), HasSubstr("opened with O_PATH"));
  EXPECT_EQ(vfio, nullptr);
  ASSERT_EQ(close(path_only), 0);
  // Nothing observes the runtime: memory comes as before.
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, 2 << 20, nullptr, &buf), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(rt, buf.data), 0);
  hugemm_close(rt);
}

TEST(VfioCApi, PinSegmentsInIovaSpaceAndUnpinRange) {
  FakeOs os;
  absl::StatusOr<std::unique_ptr<Runtime>> opened = Runtime::Open({.os = &os});
  ASSERT_TRUE(opened.ok()) << opened.status();
  hugemm_runtime handle;
  handle.rt = std::move(*opened);
  hugemm_runtime* rt = &handle;
  absl::StatusOr<int> container = os.OpenVfioContainer();
  ASSERT_TRUE(container.ok());
  hugemm_vfio* vfio = nullptr;
  absl::StatusOr<Buffer> buf = rt->rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok());
  hugemm_vfio_options opts = {0x40000000, 0};
  ASSERT_EQ(hugemm_vfio_attach(rt, *container, &opts, &vfio), 0) << hugemm_last_error();
  size_t mappings = 0, bytes = 0;
  EXPECT_EQ(hugemm_vfio_stats(vfio, &mappings, &bytes), 0);
  EXPECT_EQ(mappings, 1u);
  EXPECT_EQ(bytes, kPageSize2M);
  uint64_t iova = 0;
  ASSERT_EQ(hugemm_vfio_iova(vfio, buf->data() + 8192, &iova), 0);
  EXPECT_EQ(iova, 0x40000000u + 8192);
  int local = 0;
  EXPECT_EQ(hugemm_vfio_iova(vfio, &local, &iova), -ENOENT);
  hugemm_dma_segment segs[4];
  long n = hugemm_vfio_pin_segments(vfio, buf->data() + 100, 3 * 4096, HUGEMM_PIN | HUGEMM_WRITE,
                                    8192, segs, 4);
  ASSERT_EQ(n, 2) << hugemm_last_error();
  EXPECT_EQ(segs[0].phys_addr, 0x40000000u + 100);
  EXPECT_EQ(segs[0].length, 8192u);
  EXPECT_EQ(segs[1].length, 3u * 4096 - 8192);
  EXPECT_EQ(hugemm_vfio_pin_segments(vfio, &local, 4, HUGEMM_PIN, 0, segs, 4), -ENOENT)
      << hugemm_last_error();
  EXPECT_EQ(hugemm_unpin_range(rt, buf->data() + 100, 3 * 4096, HUGEMM_PIN, 1), 0)
      << hugemm_last_error();
  EXPECT_FALSE(rt->rt->pinner().MaybeDmaPinned(buf->data()));
  hugemm_vfio_detach(vfio);
  EXPECT_TRUE(os.VfioMappings(*container).empty());
  HUGEMM_ASSERT_OK(os.Close(*container));
}

// A C runtime on the fake OS with a 2M buffer, and a mapper of a fake VFIO container
// attached to it (the buffer mapped there).
struct CMapperOnFake {
  FakeOs os;
  hugemm_runtime* rt = nullptr;  // hugemm_close deletes it
  std::optional<int> container;
  hugemm_buffer buf{};
  hugemm_vfio* vfio = nullptr;
};

void AttachCMapper(CMapperOnFake* m) {
  absl::StatusOr<std::unique_ptr<Runtime>> opened = Runtime::Open({.os = &m->os});
  ASSERT_TRUE(opened.ok()) << opened.status();
  m->rt = new hugemm_runtime;
  m->rt->rt = std::move(*opened);
  absl::StatusOr<int> container = m->os.OpenVfioContainer();
  ASSERT_TRUE(container.ok());
  m->container = *container;
  ASSERT_EQ(hugemm_map_buffer(m->rt, kPageSize2M, nullptr, &m->buf), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_vfio_attach(m->rt, *m->container, nullptr, &m->vfio), 0) << hugemm_last_error();
}

// hugemm_close detaches a mapper still attached: the container loses its mappings, the
// handle answers -EINVAL naming the closed runtime, and hugemm_vfio_detach frees it
// without touching the runtime that is gone (ASan: no use after free).
TEST(VfioCApi, CloseDetachesAMapperStillAttached) {
  CMapperOnFake m;
  ASSERT_NO_FATAL_FAILURE(AttachCMapper(&m));
  EXPECT_FALSE(m.os.VfioMappings(*m.container).empty());
  hugemm_close(m.rt);
  EXPECT_TRUE(m.os.VfioMappings(*m.container).empty())
      << "the closed runtime's memory stayed mapped";
  uint64_t iova = 0;
  EXPECT_EQ(hugemm_vfio_iova(m.vfio, m.buf.data, &iova), -EINVAL);
  EXPECT_THAT(hugemm_last_error(), HasSubstr("closed"));
  size_t mappings = 0;
  EXPECT_EQ(hugemm_vfio_stats(m.vfio, &mappings, nullptr), -EINVAL);
  hugemm_dma_segment seg;
  EXPECT_EQ(hugemm_vfio_pin_segments(m.vfio, m.buf.data, 4096, HUGEMM_PIN, 0, &seg, 1), -EINVAL);
  hugemm_vfio_detach(m.vfio);
  HUGEMM_ASSERT_OK(m.os.Close(*m.container));
}

// Detach with a pin outstanding: the container loses every mapping at once, and the pin
// stays the runtime's until hugemm_unpin_range, after which the buffer frees.
TEST(VfioCApi, DetachWithAPinOutstandingLeavesThePinToTheRuntime) {
  CMapperOnFake m;
  ASSERT_NO_FATAL_FAILURE(AttachCMapper(&m));
  hugemm_dma_segment seg;
  ASSERT_EQ(hugemm_vfio_pin_segments(m.vfio, m.buf.data, 8192, HUGEMM_PIN, 0, &seg, 1), 1)
      << hugemm_last_error();
  hugemm_vfio_detach(m.vfio);
  EXPECT_TRUE(m.os.VfioMappings(*m.container).empty());
  EXPECT_TRUE(m.rt->rt->pinner().MaybeDmaPinned(m.buf.data));
  EXPECT_EQ(hugemm_unpin_range(m.rt, m.buf.data, 8192, HUGEMM_PIN, 1), 0) << hugemm_last_error();
  EXPECT_FALSE(m.rt->rt->pinner().MaybeDmaPinned(m.buf.data));
  const size_t mappings = m.os.live_mappings();
  EXPECT_EQ(hugemm_free(m.rt, m.buf.data), 0) << hugemm_last_error();
  EXPECT_LT(m.os.live_mappings(), mappings);
  hugemm_close(m.rt);
  HUGEMM_ASSERT_OK(m.os.Close(*m.container));
}

// The same through the C API: in a child, hugemm_vfio_attach is -EFAULT, and neither
// hugemm_close nor hugemm_vfio_detach unmaps the parent's mappings from the container.
TEST(VfioCApi, AChildOfForkClosingLeavesTheContainersMappings) {
  CMapperOnFake m;
  ASSERT_NO_FATAL_FAILURE(AttachCMapper(&m));
  const size_t mapped = m.os.VfioMappings(*m.container).size();
  ASSERT_EQ(mapped, 1u);

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    hugemm_vfio* other = nullptr;
    if (hugemm_vfio_attach(m.rt, *m.container, nullptr, &other) != -EFAULT || other != nullptr) {
      code = 1;
    }
    hugemm_close(m.rt);
    if (code == 0 && m.os.VfioMappings(*m.container).size() != mapped) code = 2;
    hugemm_vfio_detach(m.vfio);
    if (code == 0 && m.os.VfioMappings(*m.container).size() != mapped) code = 3;
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: hugemm_vfio_attach was not -EFAULT, 2: hugemm_close "
                                       "unmapped, 3: hugemm_vfio_detach unmapped";
  EXPECT_EQ(m.os.VfioMappings(*m.container).size(), mapped);
  EXPECT_EQ(hugemm_free(m.rt, m.buf.data), 0) << hugemm_last_error();
  hugemm_vfio_detach(m.vfio);
  hugemm_close(m.rt);
  HUGEMM_ASSERT_OK(m.os.Close(*m.container));
}

// A child of fork() shares the container with its parent (one kernel object, whose
// mappings the parent's devices use): dropping its copy of the mapper unmaps nothing, and
// it attaches no mapper of its own to the parent's runtime.
TEST_F(VfioFakeTest, AChildOfForkLeavesTheContainersMappings) {
  absl::StatusOr<Buffer> buf = rt_->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<Buffer> small = rt_->Allocate(4096);
  ASSERT_TRUE(small.ok()) << small.status();
  absl::StatusOr<std::unique_ptr<IovaMapper>> m = IovaMapper::Attach(*rt_, container_);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::map<uint64_t, iovec> mapped = os_.VfioMappings(container_);
  ASSERT_EQ(mapped.size(), 2u);
  const std::optional<uint64_t> iova = (*m)->Iova(buf->data());
  ASSERT_TRUE(iova.has_value());

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    absl::StatusOr<std::unique_ptr<IovaMapper>> other = IovaMapper::Attach(*rt_, container_);
    if (other.ok() || other.status().code() != absl::StatusCode::kFailedPrecondition) code = 1;
    if (other.ok()) (void)other->release();
    m->reset();
    if (code == 0 && os_.VfioMappings(container_).size() != mapped.size()) code = 2;
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: the child attached a mapper, 2: dropping the child's copy unmapped";
  EXPECT_EQ(os_.VfioMappings(container_).size(), mapped.size());
  EXPECT_EQ((*m)->Iova(buf->data()), iova);
  EXPECT_EQ(os_.VfioMappings(container_).count(*iova), 1u);
  HUGEMM_ASSERT_OK(buf->Free());
  HUGEMM_ASSERT_OK(small->Free());
  m->reset();
}

}  // namespace
}  // namespace hugemm::testing
