// The fake machine keeps the kernel's rules, seen through hugemm's own sys readers:
// pools that move on mmap, prefault and the last close; sysfs, mounts, smaps, pagemap
// and kpageflags written from the model. And the failing Os fails what it is told to.
#include "tests/fake_os.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/system_info.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/pagemap.h"
#include "tests/faulty_os.h"
#include "tests/test_util.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace hugemm::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr unsigned kHuge2M = MFD_HUGETLB | (21u << MFD_HUGE_SHIFT);

FakeMachine TwoNodes() { return {.nodes = 2, .pools = {{kPageSize2M, 4}, {kPageSize1G, 1}}}; }

// A shared mapping of `pages` 2M pages of a fresh hugetlb memfd; the fd stays open.
struct HugeMapping {
  int fd = -1;
  std::byte* data = nullptr;
  size_t length = 0;
};

HugeMapping MapHuge(Os& os, size_t pages, int flags = MAP_SHARED) {
  HugeMapping m;
  m.length = pages * kPageSize2M;
  absl::StatusOr<int> fd = os.MemfdCreate("test", kHuge2M);
  EXPECT_TRUE(fd.ok()) << fd.status();
  m.fd = *fd;
  EXPECT_TRUE(os.Ftruncate(m.fd, static_cast<off_t>(m.length)).ok());
  absl::StatusOr<void*> p = os.Mmap(nullptr, m.length, PROT_READ | PROT_WRITE, flags, m.fd, 0);
  EXPECT_TRUE(p.ok()) << p.status();
  m.data = p.ok() ? static_cast<std::byte*>(*p) : nullptr;
  return m;
}

TEST(FakeOs, SysfsShowsThePoolsNodesAndMounts) {
  FakeOs os(TwoNodes());
  absl::StatusOr<std::vector<size_t>> sizes = sys::HugePageSizes(os, "/sys");
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_THAT(*sizes, ElementsAre(kPageSize2M, kPageSize1G));
  absl::StatusOr<std::vector<int>> nodes = sys::OnlineNodes(os, "/sys");
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  EXPECT_THAT(*nodes, ElementsAre(0, 1));
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(os, kPageSize2M, "/sys");
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(pool->nr, 8);
  EXPECT_EQ(pool->free, 8);
  ASSERT_EQ(pool->nodes.size(), 2u);
  EXPECT_EQ(pool->nodes[1].free, 4);
  EXPECT_EQ(sys::DefaultHugePageSize(os), kPageSize2M);
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os);
  ASSERT_TRUE(mounts.ok()) << mounts.status();
  ASSERT_EQ(mounts->size(), 2u);
  EXPECT_EQ((*mounts)[1].path, "/fake/hugepages1G");
  EXPECT_EQ((*mounts)[1].page_size, kPageSize1G);
  absl::StatusOr<SystemInfo> info = CollectSystemInfo("/sys", os);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pools.size(), 2u);
  EXPECT_TRUE(info->can_read_pfns);
  EXPECT_TRUE(info->can_read_kpageflags);
  EXPECT_EQ(os.live_mappings(), 0u) << "collecting must leave nothing mapped";
  EXPECT_EQ(os.open_fds(), 0u);
}

TEST(FakeOs, MmapReservesThePrefaultTakesTheLastCloseGivesBack) {
  FakeOs os(TwoNodes());
  HugeMapping m = MapHuge(os, 2);
  EXPECT_EQ(os.Pool(kPageSize2M).resv, 2);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 8);
  ASSERT_TRUE(os.Madvise(m.data, m.length, MADV_POPULATE_WRITE).ok());
  EXPECT_EQ(os.Pool(kPageSize2M).resv, 0);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 6);
  std::memcpy(m.data + 12345, "fake", 4);  // real memory behind it
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 6) << "the file still holds its pages";
  ASSERT_TRUE(os.Close(m.fd).ok());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 8);
  EXPECT_EQ(os.live_mappings(), 0u);
  EXPECT_EQ(os.open_fds(), 0u);
}

TEST(FakeOs, APoolRunsOutAtTheMmapOrAtTheFault) {
  FakeOs os({.pools = {{kPageSize2M, 2}}});
  absl::StatusOr<int> fd = os.MemfdCreate("big", kHuge2M);
  ASSERT_TRUE(fd.ok());
  ASSERT_TRUE(os.Ftruncate(*fd, 3 * kPageSize2M).ok());
  absl::StatusOr<void*> p =
      os.Mmap(nullptr, 3 * kPageSize2M, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(ErrnoOf(p.status()), ENOMEM);
  p = os.Mmap(nullptr, 3 * kPageSize2M, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, *fd, 0);
  ASSERT_TRUE(p.ok()) << p.status();
  absl::Status st = os.Madvise(*p, 3 * kPageSize2M, MADV_POPULATE_WRITE);
  EXPECT_EQ(ErrnoOf(st), ENOMEM) << st;
  EXPECT_EQ(os.Pool(kPageSize2M).free, 0);
  ASSERT_TRUE(os.Munmap(*p, 3 * kPageSize2M).ok());
  ASSERT_TRUE(os.Close(*fd).ok());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 2);
}

TEST(FakeOs, PagemapAndKpageflagsDescribeCompoundPages) {
  FakeOs os(TwoNodes());
  HugeMapping m = MapHuge(os, 2);
  ASSERT_TRUE(os.Madvise(m.data, m.length, MADV_POPULATE_WRITE).ok());
  absl::StatusOr<std::vector<uint64_t>> pfns = sys::ReadPfnRange(os, m.data, 1024);
  ASSERT_TRUE(pfns.ok()) << pfns.status();
  EXPECT_EQ((*pfns)[0] % 512, 0u) << "head PFN aligned to 2M";
  for (size_t i = 1; i < 512; ++i) ASSERT_EQ((*pfns)[i], (*pfns)[0] + i);
  absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(os, (*pfns)[0], 3);
  ASSERT_TRUE(flags.ok()) << flags.status();
  EXPECT_TRUE((*flags)[0] >> sys::kKpfCompoundHead & 1);
  EXPECT_TRUE((*flags)[1] >> sys::kKpfCompoundTail & 1);
  EXPECT_TRUE(sys::CanReadPfns(os));
  absl::StatusOr<size_t> kps = sys::KernelPageSizeAt(os, m.data + 4096);
  ASSERT_TRUE(kps.ok()) << kps.status();
  EXPECT_EQ(*kps, kPageSize2M);
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  ASSERT_TRUE(os.Close(m.fd).ok());
}

TEST(FakeOs, WithoutRootPfnsAreHiddenAndKpageflagsClosed) {
  FakeOs os({.root = false});
  EXPECT_FALSE(sys::CanReadPfns(os));
  absl::StatusOr<std::vector<uint64_t>> flags = sys::ReadKpageflags(os, 0, 1);
  EXPECT_EQ(ErrnoOf(flags.status()), EACCES);
  EXPECT_EQ(os.open_fds(), 0u);
}

TEST(FakeOs, BindPlacesPagesOnThatNodeAndSmapsShowsDontfork) {
  FakeOs os(TwoNodes());
  HugeMapping m = MapHuge(os, 2);
  ASSERT_TRUE(os.BindToNode(m.data, m.length, 1).ok());
  EXPECT_EQ(ErrnoOf(os.BindToNode(m.data, m.length, 2)), EINVAL) << "no node 2";
  ASSERT_TRUE(os.Madvise(m.data, m.length, MADV_POPULATE_WRITE).ok());
  ASSERT_TRUE(os.Madvise(m.data, kPageSize2M, MADV_DONTFORK).ok());
  absl::StatusOr<int> node = os.NodeOfAddress(m.data + kPageSize2M);
  ASSERT_TRUE(node.ok());
  EXPECT_EQ(*node, 1);
  HugePagePool pool = os.Pool(kPageSize2M);
  EXPECT_EQ(pool.nodes[0].free, 4);
  EXPECT_EQ(pool.nodes[1].free, 2);
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas(os);
  ASSERT_TRUE(vmas.ok()) << vmas.status();
  ASSERT_EQ(vmas->size(), 2u) << "the DONTFORK range is a VMA of its own";
  EXPECT_THAT((*vmas)[0].flags, HasSubstr("dc"));
  EXPECT_THAT((*vmas)[1].flags, ::testing::Not(HasSubstr("dc")));
  EXPECT_EQ((*vmas)[0].kernel_page_size, kPageSize2M);
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  ASSERT_TRUE(os.Close(m.fd).ok());
}

TEST(FakeOs, HugetlbfsFilesLiveInTheirMountUntilUnlinked) {
  FakeOs os;
  const std::string path = "/fake/hugepages/shared";
  absl::StatusOr<int> fd = os.Open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ErrnoOf(os.Open(path, O_RDWR | O_CREAT | O_EXCL, 0600).status()), EEXIST);
  EXPECT_THAT(os.FilesIn("/fake/hugepages"), ElementsAre("shared"));
  ASSERT_TRUE(os.Ftruncate(*fd, kPageSize2M).ok());
  EXPECT_EQ(ErrnoOf(os.Ftruncate(*fd, 4096)), EINVAL) << "hugetlbfs sizes are whole pages";
  absl::StatusOr<void*> p =
      os.Mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(os.Madvise(*p, kPageSize2M, MADV_POPULATE_WRITE).ok());
  std::memcpy(*p, "kept", 4);
  ASSERT_TRUE(os.Munmap(*p, kPageSize2M).ok());
  ASSERT_TRUE(os.Close(*fd).ok());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 31) << "a linked file keeps its page";
  // A second open sees the same bytes.
  fd = os.Open(path, O_RDWR, 0);
  ASSERT_TRUE(fd.ok());
  char buf[4];
  ASSERT_TRUE(os.Pread(*fd, buf, 4, 0).ok());
  EXPECT_EQ(std::memcmp(buf, "kept", 4), 0);
  ASSERT_TRUE(os.Close(*fd).ok());
  ASSERT_TRUE(os.Unlink(path).ok());
  EXPECT_TRUE(os.FilesIn("/fake/hugepages").empty());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
  EXPECT_EQ(ErrnoOf(os.Open(path, O_RDWR, 0).status()), ENOENT);
}

TEST(FakeOs, DaxDevicesAppearInSysfsAndRefusePrivateMappings) {
  FakeOs os({.dax = {{.name = "dax0.0", .size = 4 * kPageSize2M, .align = kPageSize2M}}});
  absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice("/dev/dax0.0", "/sys", os);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size, 4 * kPageSize2M);
  ASSERT_EQ(info->ranges.size(), 1u);
  EXPECT_EQ(info->ranges[0].phys % kPageSize1G, 0u);
  absl::StatusOr<int> fd = os.Open("/dev/dax0.0", O_RDWR, 0);
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(ErrnoOf(os.Mmap(nullptr, kPageSize2M, PROT_READ, MAP_PRIVATE, *fd, 0).status()),
            EINVAL);
  ASSERT_TRUE(os.Close(*fd).ok());
}

TEST(FakeOs, KernelPinsNeedMappedMemory) {
  FakeOs os;
  HugeMapping m = MapHuge(os, 1);
  absl::StatusOr<int> ring = os.IoUringSetup(1);
  ASSERT_TRUE(ring.ok());
  iovec bad = {reinterpret_cast<void*>(uintptr_t{1} << 46), 4096};
  EXPECT_EQ(ErrnoOf(os.IoUringRegisterBuffers(*ring, {&bad, 1})), EFAULT);
  iovec good = {m.data, m.length};
  ASSERT_TRUE(os.IoUringRegisterBuffers(*ring, {&good, 1}).ok());
  EXPECT_EQ(os.pinned_bytes(), kPageSize2M);
  EXPECT_EQ(ErrnoOf(os.IoUringRegisterBuffers(*ring, {&good, 1})), EBUSY);
  ASSERT_TRUE(os.Close(*ring).ok());
  EXPECT_EQ(os.pinned_bytes(), 0u);
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  ASSERT_TRUE(os.Close(m.fd).ok());
}

TEST(FakeOs, SparseTablesAreFilledSlotBySlotAndClonedAsTheKernelAllows) {
  FakeOs os({.memlock_bytes = 2 * kPageSize2M, .io_uring_clone = FakeMachine::Clone::kWhole});
  HugeMapping m = MapHuge(os, 2);
  absl::StatusOr<int> src = os.IoUringSetup(1);
  absl::StatusOr<int> dst = os.IoUringSetup(1);
  ASSERT_TRUE(src.ok() && dst.ok());
  ASSERT_TRUE(os.IoUringRegisterSparseBuffers(*src, 4).ok());
  EXPECT_EQ(ErrnoOf(os.IoUringRegisterSparseBuffers(*src, 4)), EBUSY);
  const iovec first = {m.data, kPageSize2M};
  const iovec second = {static_cast<std::byte*>(m.data) + kPageSize2M, kPageSize2M};
  ASSERT_TRUE(os.IoUringUpdateBuffers(*src, 2, {&first, 1}).ok());
  EXPECT_EQ(os.RingSlotOf(*src, 2).iov_base, m.data);
  EXPECT_EQ(ErrnoOf(os.IoUringUpdateBuffers(*src, 4, {&first, 1})), EINVAL) << "past the table";
  // A whole clone pins nothing more; 6.12 takes no ranges.
  ASSERT_TRUE(os.IoUringCloneBuffers(*dst, *src, {}).ok());
  EXPECT_EQ(os.RingSlotOf(*dst, 2).iov_base, m.data);
  EXPECT_EQ(os.pinned_bytes(), kPageSize2M);
  EXPECT_EQ(ErrnoOf(os.IoUringCloneBuffers(*dst, *src, {})), EBUSY);
  // 6.12 refuses a destination with a table before it reads the range (as seen there).
  EXPECT_EQ(ErrnoOf(os.IoUringCloneBuffers(
                *dst, *src, {.src_slot = 2, .dst_slot = 2, .slots = 1, .replace = true})),
            EBUSY);
  absl::StatusOr<int> bare = os.IoUringSetup(1);
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(
      ErrnoOf(os.IoUringCloneBuffers(*bare, *src, {.src_slot = 2, .dst_slot = 2, .slots = 1})),
      EINVAL)
      << "6.12 takes no ranges";
  ASSERT_TRUE(os.Close(*bare).ok());
  // The destination's own update pins again, up to RLIMIT_MEMLOCK.
  ASSERT_TRUE(os.IoUringUpdateBuffers(*dst, 3, {&second, 1}).ok());
  EXPECT_EQ(os.pinned_bytes(), 2 * kPageSize2M);
  const iovec both = {m.data, 2 * kPageSize2M};
  absl::Status over = os.IoUringUpdateBuffers(*src, 0, {&both, 1});
  EXPECT_EQ(ErrnoOf(over), ENOMEM) << over << " pinned " << os.pinned_bytes();
  const iovec empty = {nullptr, 0};
  ASSERT_TRUE(os.IoUringUpdateBuffers(*src, 2, {&empty, 1}).ok());
  EXPECT_EQ(os.RingSlotOf(*src, 2).iov_base, nullptr);
  EXPECT_EQ(os.RingSlotOf(*dst, 2).iov_base, m.data) << "a clone is a snapshot";
  ASSERT_TRUE(os.Close(*src).ok());
  ASSERT_TRUE(os.Close(*dst).ok());
  EXPECT_EQ(os.pinned_bytes(), 0u);
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  ASSERT_TRUE(os.Close(m.fd).ok());
}

TEST(FakeOs, RangedClonesReplaceOnlyTheirSlots) {
  FakeOs os;  // 6.13 and later
  HugeMapping m = MapHuge(os, 1);
  absl::StatusOr<int> src = os.IoUringSetup(1);
  absl::StatusOr<int> dst = os.IoUringSetup(1);
  ASSERT_TRUE(src.ok() && dst.ok());
  ASSERT_TRUE(os.IoUringRegisterSparseBuffers(*src, 4).ok());
  ASSERT_TRUE(os.IoUringRegisterSparseBuffers(*dst, 4).ok());
  const iovec v = {m.data, m.length};
  ASSERT_TRUE(os.IoUringUpdateBuffers(*dst, 0, {&v, 1}).ok());
  ASSERT_TRUE(os.IoUringUpdateBuffers(*src, 1, {&v, 1}).ok());
  EXPECT_EQ(ErrnoOf(os.IoUringCloneBuffers(*dst, *src, {.src_slot = 1, .dst_slot = 1, .slots = 1})),
            EBUSY);
  ASSERT_TRUE(os.IoUringCloneBuffers(*dst, *src,
                                     {.src_slot = 1, .dst_slot = 1, .slots = 1, .replace = true})
                  .ok());
  EXPECT_EQ(os.RingSlotOf(*dst, 0).iov_base, m.data) << "kept";
  EXPECT_EQ(os.RingSlotOf(*dst, 1).iov_base, m.data) << "cloned";
  EXPECT_EQ(os.pinned_bytes(), 2 * kPageSize2M) << "one pin per ring that registered it";
  FakeOs old({.io_uring_clone = FakeMachine::Clone::kNone});
  absl::StatusOr<int> a = old.IoUringSetup(1);
  absl::StatusOr<int> b = old.IoUringSetup(1);
  ASSERT_TRUE(old.IoUringRegisterSparseBuffers(*a, 1).ok());
  EXPECT_EQ(ErrnoOf(old.IoUringCloneBuffers(*b, *a, {})), EINVAL) << "before 6.12";
  ASSERT_TRUE(old.Close(*a).ok() && old.Close(*b).ok());
  ASSERT_TRUE(os.Close(*src).ok() && os.Close(*dst).ok());
  ASSERT_TRUE(os.Munmap(m.data, m.length).ok());
  ASSERT_TRUE(os.Close(m.fd).ok());
}

TEST(FaultyOs, FailsTheNthCallOrTheNthOfAKind) {
  FakeOs fake;
  FaultyOs os(fake);
  os.FailNth(2, EIO);
  EXPECT_TRUE(os.ReadFile("/proc/meminfo").ok());
  absl::StatusOr<std::string> second = os.ReadFile("/proc/meminfo");
  EXPECT_EQ(ErrnoOf(second.status()), EIO);
  EXPECT_THAT(second.status().message(), HasSubstr("/proc/meminfo"));
  EXPECT_TRUE(os.fired());
  EXPECT_EQ(os.fired_call(), OsCall::kReadFile);
  EXPECT_TRUE(os.ReadFile("/proc/meminfo").ok()) << "only the second";

  os.FailNth(OsCall::kMmap, 2, ENOMEM);
  EXPECT_TRUE(os.ReadFile("/proc/meminfo").ok());
  absl::StatusOr<void*> a = os.Mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(os.live_mapping_bytes(), 4096u);
  absl::StatusOr<void*> b = os.Mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_EQ(ErrnoOf(b.status()), ENOMEM);
  EXPECT_EQ(os.calls(), 3);

  // A failed release still releases.
  os.FailEvery(OsCall::kMunmap, EINVAL);
  EXPECT_FALSE(os.Munmap(*a, 4096).ok());
  EXPECT_EQ(os.live_mapping_bytes(), 0u);
  EXPECT_EQ(fake.live_mappings(), 0u);
}

TEST(FaultyOs, SweepFailsEachCallOnce) {
  FakeOs fake;
  FaultyOs os(fake);
  int runs = 0;
  SweepFailures(
      os, ENOMEM,
      [&]() -> absl::Status {
        absl::StatusOr<std::string> a = os.ReadFile("/proc/meminfo");
        if (!a.ok()) return a.status();
        return os.ReadFile("/proc/mounts").status();
      },
      [&](const FailedRun& run) {
        ++runs;
        EXPECT_FALSE(run.status.ok());
        EXPECT_THAT(run.status.message(), HasSubstr(run.injected));
      });
  EXPECT_EQ(runs, 2);
}

}  // namespace
}  // namespace hugemm::testing
