// Fault injection: every OS call of an operation fails once, in turn (FaultyOs,
// SweepFailures), for Backing::Map of every kind, allocation with pool growth, the
// kernel pin holder and Runtime::MapBuffer. After each run the status names the call
// that failed (or the failure was one the operation may absorb, such as an unreadable
// PFN), and nothing is left behind: no mapping, no descriptor, no file, no
// registration, the pools as they were.
//
// On the fake machine every kind runs without root; on the real OS the hugetlb,
// hugetlbfs, anon and allocator sweeps unwind real huge page mappings.
#include <linux/mempolicy.h>

#include <filesystem>
#include <set>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "hugemm/backing.h"
#include "hugemm/runtime.h"
#include "runtime/api/kernel_pin_table.h"
#include "runtime/sys/pagemap.h"
#include "tests/fake_os.h"
#include "tests/faulty_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;

// Failures an operation may absorb: PFNs it cannot read are recorded as unknown, a
// device's physical ranges are best effort, and what gives something back (close,
// munmap, io_uring unregister) has released it whatever it reports.
bool MayBeAbsorbed(OsCall call) {
  switch (call) {
    case OsCall::kOpen:   // of /proc/self/pagemap
    case OsCall::kPread:  // of /proc/self/pagemap
    case OsCall::kStat:   // of a device's mappingN directory
    case OsCall::kReadFile:
    case OsCall::kClose:
    case OsCall::kMunmap:
    case OsCall::kIoUringUnregisterBuffers:
    case OsCall::kIoUringUpdateBuffers:  // emptying a slot, or device memory left unpinned
      return true;
    default:
      return false;
  }
}

void ExpectNamedOrAbsorbed(const FailedRun& run) {
  if (run.status.ok()) {
    EXPECT_TRUE(MayBeAbsorbed(run.call)) << OsCallName(run.call) << " failed unnoticed";
  } else {
    EXPECT_THAT(run.status.message(), HasSubstr(run.injected));
  }
}

// A fake machine behind a failing Os, and what it looked like before the sweep.
class FakeSweep {
 public:
  explicit FakeSweep(FakeMachine machine = {}) : fake_(std::move(machine)), os_(fake_) {
    for (const FakeMachine::Mount& m : mounts_) files_.push_back(fake_.FilesIn(m.path));
  }

  FaultyOs& os() { return os_; }
  FakeOs& fake() { return fake_; }

  void Run(absl::FunctionRef<absl::Status()> op, int min_calls = 5) {
    const HugePagePool pool2m = fake_.Pool(kPageSize2M);
    const HugePagePool pool1g = fake_.Pool(kPageSize1G);
    const size_t mappings = fake_.live_mappings();
    const size_t fds = fake_.open_fds();
    const size_t pinned = fake_.pinned_bytes();
    int runs = 0;
    SweepFailures(os_, ENOMEM, op, [&](const FailedRun& run) {
      ++runs;
      ExpectNamedOrAbsorbed(run);
      EXPECT_EQ(fake_.live_mappings(), mappings) << "a mapping was left behind";
      EXPECT_EQ(fake_.open_fds(), fds) << "a descriptor was left open";
      EXPECT_EQ(fake_.pinned_bytes(), pinned) << "a kernel pin was left";
      EXPECT_EQ(fake_.Pool(kPageSize2M).free, pool2m.free);
      EXPECT_EQ(fake_.Pool(kPageSize2M).resv, pool2m.resv);
      EXPECT_EQ(fake_.Pool(kPageSize1G).free, pool1g.free);
      EXPECT_EQ(fake_.Pool(kPageSize1G).resv, pool1g.resv);
      for (size_t i = 0; i < mounts_.size(); ++i) {
        EXPECT_EQ(fake_.FilesIn(mounts_[i].path), files_[i]) << "a file was left behind";
      }
    });
    EXPECT_GE(runs, min_calls) << "the operation made fewer calls than it should";
  }

 private:
  FakeOs fake_;
  FaultyOs os_;
  const std::vector<FakeMachine::Mount> mounts_ = FakeMachine{}.mounts;
  std::vector<std::vector<std::string>> files_;
};

absl::Status MapAndDrop(Os& os, const BackingOptions& options, const MapRequest& request) {
  BackingOptions o = options;
  o.os = &os;
  absl::StatusOr<std::shared_ptr<Backing>> backing = Backing::Create(o);
  if (!backing.ok()) return backing.status();
  absl::StatusOr<Extent> extent = (*backing)->Map(request);
  if (!extent.ok()) return extent.status();
  return extent->Unmap();
}

TEST(FaultInjectionOnFake, Hugetlb2M) {
  FakeSweep sweep;
  sweep.Run([&] {
    return MapAndDrop(sweep.os(), {.kind = BackingKind::kHugetlb}, {.length = 2 * kPageSize2M});
  });
}

TEST(FaultInjectionOnFake, Hugetlb1G) {
  FakeSweep sweep;
  sweep.Run([&] {
    return MapAndDrop(sweep.os(), {.kind = BackingKind::kHugetlb, .page_size = kPageSize1G},
                      {.length = kPageSize1G});
  });
}

TEST(FaultInjectionOnFake, Hugetlb2MOnANode) {
  FakeSweep sweep({.nodes = 2});
  sweep.Run([&] {
    return MapAndDrop(sweep.os(), {.kind = BackingKind::kHugetlb},
                      {.length = 2 * kPageSize2M, .node = 1});
  });
}

TEST(FaultInjectionOnFake, HugetlbfsPrivateFile) {
  FakeSweep sweep;
  sweep.Run([&] {
    return MapAndDrop(sweep.os(), {.kind = BackingKind::kHugetlbfs}, {.length = kPageSize2M});
  });
}

TEST(FaultInjectionOnFake, HugetlbfsNamedFile) {
  FakeSweep sweep;
  sweep.Run([&] {
    absl::Status st = MapAndDrop(sweep.os(), {.kind = BackingKind::kHugetlbfs},
                                 {.length = kPageSize2M, .name = "named"});
    // A named file outlives its mapping by design: the run removes it once mapped (its
    // unmap may have failed since), and the sweep checks that no failed map made it.
    if (st.ok() || absl::StrContains(st.message(), "unmap extent")) {
      EXPECT_TRUE(sweep.fake().Unlink("/fake/hugepages/named").ok());
    }
    return st;
  });
}

TEST(FaultInjectionOnFake, Anon) {
  FakeSweep sweep;
  sweep.Run([&] {
    return MapAndDrop(sweep.os(), {.kind = BackingKind::kAnon}, {.length = 8 * kPageSize4K});
  });
}

TEST(FaultInjectionOnFake, DevDax2MAnd1G) {
  for (size_t align : {kPageSize2M, kPageSize1G}) {
    SCOPED_TRACE(PageSizeName(align));
    FakeSweep sweep({.dax = {{.name = "dax0.0", .size = 2 * align, .align = align}}});
    sweep.Run([&] {
      return MapAndDrop(sweep.os(), {.kind = BackingKind::kDevDax, .devdax_path = "/dev/dax0.0"},
                        {.length = align});
    });
  }
}

// Allocation that grows a new pool, from the first call to the allocator's end.
absl::Status AllocateAndDrop(Os& os, const AllocatorOptions& options, int order,
                             const AllocOptions& request) {
  AllocatorOptions o = options;
  o.os = &os;
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create(o);
  if (!alloc.ok()) return alloc.status();
  absl::StatusOr<FolioHandle> h = (*alloc)->AllocateOrder(order, request);
  if (!h.ok()) return h.status();
  h->Reset();
  return absl::OkStatus();
}

TEST(FaultInjectionOnFake, AllocationGrowingEachKindOfPool) {
  const struct {
    const char* what;
    int order;
    AllocOptions request;
  } cases[] = {
      {"hugetlb 2M", 0, {}},
      {"hugetlb 1G", 9, {.page_size = kPageSize1G, .zero = false}},
      {"hugetlbfs 2M", 3, {.backing = BackingKind::kHugetlbfs}},
      {"devdax 2M",
       9,
       {.backing = BackingKind::kDevDax, .page_size = 0, .devdax_path = "/dev/dax0.0"}},
      {"anon", 0, {.backing = BackingKind::kAnon, .page_size = 0}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    FakeSweep sweep({.dax = {{.name = "dax0.0", .size = 4 * kPageSize2M}}});
    sweep.Run([&] {
      return AllocateAndDrop(sweep.os(), {.meta_reserve_bytes = 4096}, c.order, c.request);
    });
  }
}

// A pool that has one page in use grows a second; a failure leaves it with the first.
TEST(FaultInjectionOnFake, SecondGrowthOfAPool) {
  FakeSweep sweep;
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create({.os = &sweep.os()});
  ASSERT_TRUE(alloc.ok());
  absl::StatusOr<FolioHandle> first = (*alloc)->Allocate(kPageSize2M);
  ASSERT_TRUE(first.ok()) << first.status();
  sweep.Run([&]() -> absl::Status {
    absl::StatusOr<FolioHandle> second = (*alloc)->Allocate(kPageSize2M);
    if (second.ok()) {
      second->Reset();
      (*alloc)->Shrink();  // the second page goes back; the first is in use
    }
    std::vector<PoolStats> stats = (*alloc)->Stats();
    EXPECT_EQ(stats.size(), 1u);
    EXPECT_EQ(stats[0].extents, 1u);
    EXPECT_EQ(stats[0].folios, 1u) << "a descriptor was left behind";
    EXPECT_EQ(first->folio()->refcount(), 1);
    return second.status();
  });
}

TEST(FaultInjectionOnFake, KernelPinTable) {
  FakeSweep sweep;
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .os = &sweep.fake()});
  ASSERT_TRUE(backing.ok());
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(extent.ok());
  const MemoryRange range{
      .data = extent->data(), .length = extent->size(), .page_size = kPageSize2M};
  sweep.Run(
      [&]() -> absl::Status {
        absl::StatusOr<std::unique_ptr<api_internal::KernelPinTable>> table =
            api_internal::KernelPinTable::Create(sweep.os(), {.slots = 8});
        if (!table.ok()) return table.status();
        if (absl::Status st = (*table)->MemoryAdded(range); !st.ok()) return st;
        EXPECT_EQ(sweep.fake().pinned_bytes(), extent->size());
        EXPECT_EQ((*table)->Find(extent->data() + 4096, 4096), 0);
        (*table)->MemoryRemoving(range);
        EXPECT_EQ(sweep.fake().pinned_bytes(), 0u);
        return absl::OkStatus();
      },
      /*min_calls=*/5);
}

TEST(FaultInjectionOnFake, RuntimeMapBufferWithKernelPins) {
  FakeSweep sweep;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.os = &sweep.os()});
  ASSERT_TRUE(rt.ok()) << rt.status();
  for (BackingKind kind : {BackingKind::kHugetlb, BackingKind::kHugetlbfs}) {
    SCOPED_TRACE(BackingKindName(kind));
    sweep.Run([&]() -> absl::Status {
      absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(2 * kPageSize2M, {.backing = kind});
      if (!buf.ok()) return buf.status();
      EXPECT_EQ(sweep.fake().pinned_bytes(), 2 * kPageSize2M);
      EXPECT_TRUE((*rt)->Translate(buf->data()).has_value());
      return buf->Free();
    });
  }
}

// --- the real OS ---------------------------------------------------------------------

// The allocator's errors keep the errno of the OS call that failed (ErrnoOf), as every
// annotated status does: a pool's growth, and the backing a new pool is made with.
TEST(FaultInjection, AllocationErrorsKeepTheOsErrno) {
  FaultyOs os(Os::Default());
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create({.os = &os});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  os.FailNth(OsCall::kMemfdCreate, 1, EMFILE);  // the pool's first growth
  absl::Status st = (*alloc)->Allocate(kPageSize4K).status();
  ASSERT_TRUE(os.fired()) << os.Log();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
  EXPECT_EQ(ErrnoOf(st), EMFILE) << st;
  os.FailNth(OsCall::kListDir, 1, EACCES);  // the sysfs page sizes, for a new 1G pool
  st = (*alloc)->Allocate(kPageSize4K, {.page_size = kPageSize1G}).status();
  ASSERT_TRUE(os.fired()) << os.Log();
  EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
  EXPECT_EQ(ErrnoOf(st), EACCES) << st;
  EXPECT_THAT(st.message(), HasSubstr("hugetlb 1G pool")) << st;
  EXPECT_EQ(os.live_mapping_bytes(), 0u);
}

// PFNs the kernel will not show are absorbed (unknown, as for a process without
// CAP_SYS_ADMIN), but no descriptor left to read pagemap with is the process's shortage:
// the map fails with EMFILE, as hugemm.h promises of every call that opens a descriptor,
// instead of mapping memory without PFNs and blaming the privilege.
TEST(FaultInjection, NoDescriptorForPagemapFailsTheMapWithEmfile) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  FaultyOs os(Os::Default());
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .os = &os});
  ASSERT_TRUE(backing.ok()) << backing.status();
  os.FailNth(OsCall::kOpen, 1, EMFILE);  // the only open of a hugetlb map: pagemap
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = kPageSize2M});
  ASSERT_TRUE(os.fired()) << os.Log();
  EXPECT_EQ(extent.status().code(), absl::StatusCode::kResourceExhausted) << extent.status();
  EXPECT_EQ(ErrnoOf(extent.status()), EMFILE) << extent.status();
  EXPECT_THAT(extent.status().message(), HasSubstr("pagemap"));
  EXPECT_EQ(os.live_mapping_bytes(), 0u);
  os.FailNth(OsCall::kOpen, 1, EACCES);
  extent = (*backing)->Map({.length = kPageSize2M});
  ASSERT_TRUE(os.fired()) << os.Log();
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_FALSE(extent->pfns_known());
}

// An Os call that fails without an errno (err 0) still fails: ErrnoStatus never makes
// it an OK status, so the mapping whose prefault failed is not handed out.
TEST(FaultInjection, AFailureWithoutAnErrnoIsStillAFailure) {
  const absl::Status st = ErrnoStatus(0, "madvise");
  EXPECT_EQ(st.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(st.message(), "madvise: failed without an errno");
  EXPECT_EQ(ErrnoOf(st), 0);
  EXPECT_EQ(ErrnoStatus(ENOMEM, "mmap").code(), absl::StatusCode::kResourceExhausted);

  FaultyOs os(Os::Default());
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kAnon, .os = &os});
  ASSERT_TRUE(backing.ok()) << backing.status();
  os.FailNth(OsCall::kMadvise, 1, 0);  // the prefault
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = 16 * kPageSize4K});
  ASSERT_FALSE(extent.ok()) << "a failed prefault was taken for a success";
  EXPECT_EQ(extent.status().code(), absl::StatusCode::kUnknown) << extent.status();
  EXPECT_EQ(os.live_mapping_bytes(), 0u) << "a mapping was left behind";
}

// What the process holds that a leak would change: its descriptors and huge page VMAs,
// and the memory policy of the thread (Map binds it to a node for a moment).
struct ProcessState {
  std::set<std::string> fds;
  std::set<std::pair<uintptr_t, uintptr_t>> huge_vmas;
  MemoryPolicy policy;

  static ProcessState Now() {
    ProcessState s;
    s.policy = ThreadPolicyNow();
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
      s.fds.insert(e.path().filename().string());
    }
    absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas(Os::Default());
    EXPECT_TRUE(vmas.ok()) << vmas.status();
    for (const sys::Vma& v : *vmas) {
      if (v.kernel_page_size > kPageSize4K) s.huge_vmas.insert({v.start, v.end});
    }
    return s;
  }
  bool operator==(const ProcessState&) const = default;
};

void RealSweep(absl::FunctionRef<absl::Status(Os&)> op, size_t page_size) {
  FaultyOs os(Os::Default());
  const int64_t free_before = FreeHugePages(page_size);
  const ProcessState before = ProcessState::Now();
  SweepFailures(
      os, ENOMEM, [&] { return op(os); },
      [&](const FailedRun& run) {
        ExpectNamedOrAbsorbed(run);
        // The one thing a failure cannot undo: the thread's own policy refused back. The
        // error says the thread stays bound; the test gives the policy back itself.
        if (run.call == OsCall::kSetThreadMemoryPolicy && ThreadPolicyNow() != before.policy) {
          EXPECT_THAT(run.status.message(), HasSubstr("the thread stays bound to node"));
          EXPECT_TRUE(SetThreadPolicy(before.policy));
        }
        EXPECT_EQ(os.live_mapping_bytes(), 0u) << "a mapping was left behind";
        EXPECT_TRUE(os.live_fds().empty()) << "a descriptor was left open";
        EXPECT_TRUE(ProcessState::Now() == before) << "the process holds more than before";
      });
  // The pool is the whole machine's: another process may take pages meanwhile.
  EXPECT_EQ(FreeHugePages(page_size), free_before) << "huge pages were not given back";
}

TEST(FaultInjection, RealHugetlb2M) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  RealSweep(
      [](Os& os) {
        return MapAndDrop(os, {.kind = BackingKind::kHugetlb}, {.length = 2 * kPageSize2M});
      },
      kPageSize2M);
}

// On a node, under a policy of the thread's own (with a mode flag): Map binds the thread
// to the node for its mmap, and every path gives the policy back as it was.
TEST(FaultInjection, RealHugetlb2MOnANodeUnderAThreadPolicy) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const std::string mount = HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  const MemoryPolicy own = ThreadPolicyNow();
  ASSERT_TRUE(SetThreadPolicy(PolicyOf(MPOL_PREFERRED | MPOL_F_STATIC_NODES, {0})));
  for (BackingKind kind : {BackingKind::kHugetlb, BackingKind::kHugetlbfs}) {
    SCOPED_TRACE(BackingKindName(kind));
    RealSweep(
        [&](Os& os) {
          return MapAndDrop(os, {.kind = kind, .hugetlbfs_mount = mount},
                            {.length = 2 * kPageSize2M, .node = 0});
        },
        kPageSize2M);
  }
  EXPECT_EQ(DescribePolicy(ThreadPolicyNow()),
            DescribePolicy(PolicyOf(MPOL_PREFERRED | MPOL_F_STATIC_NODES, {0})));
  EXPECT_TRUE(SetThreadPolicy(own));
}

// A node the thread cannot be bound to (set_mempolicy's EINVAL: a node outside the
// process's cpuset) is mapped under the thread's own policy, and the mbind decides; the
// policy is not set back, as it never changed.
TEST(FaultInjection, ANodeTheThreadCannotBeBoundToIsMappedUnderItsOwnPolicy) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  FaultyOs os(Os::Default());
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .os = &os});
  ASSERT_TRUE(backing.ok()) << backing.status();
  const MemoryPolicy before = ThreadPolicyNow();
  os.FailNth(OsCall::kSetThreadMemoryPolicy, 1, EINVAL);
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = kPageSize2M, .node = 0});
  ASSERT_TRUE(os.fired()) << os.Log();
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_EQ(extent->node(), 0);
  const std::string log = os.Log();
  EXPECT_EQ(log.find("set_mempolicy"), log.rfind("set_mempolicy")) << log;
  EXPECT_EQ(DescribePolicy(ThreadPolicyNow()), DescribePolicy(before));
}

TEST(FaultInjection, RealHugetlb1G) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  RealSweep(
      [](Os& os) {
        return MapAndDrop(os, {.kind = BackingKind::kHugetlb, .page_size = kPageSize1G},
                          {.length = kPageSize1G});
      },
      kPageSize1G);
}

TEST(FaultInjection, RealHugetlbfs2M) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const std::string mount = HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  RealSweep(
      [&](Os& os) {
        return MapAndDrop(os, {.kind = BackingKind::kHugetlbfs, .hugetlbfs_mount = mount},
                          {.length = kPageSize2M});
      },
      kPageSize2M);
}

TEST(FaultInjection, RealAnon) {
  RealSweep(
      [](Os& os) {
        return MapAndDrop(os, {.kind = BackingKind::kAnon}, {.length = 8 * kPageSize4K});
      },
      kPageSize2M);
}

TEST(FaultInjection, RealAllocationWithPoolGrowth) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  RealSweep([](Os& os) { return AllocateAndDrop(os, {}, 0, {}); }, kPageSize2M);
}

}  // namespace
}  // namespace hugemm::testing
