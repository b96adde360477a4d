// The facade on real huge pages: buffers mapped into the shadow table, the kernel pin
// that keeps their PFNs still, and memory kept until the last pin is gone.
#include "hugemm/runtime.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using testing::FreeHugePages;
using ::testing::HasSubstr;

class RuntimeTest : public ::testing::TestWithParam<size_t> {};

TEST_P(RuntimeTest, BufferIsMappedVerifiedAndKernelPinned) {
  const size_t page = GetParam();
  HUGEMM_NEED_HUGEPAGES(page, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = testing::VmPinKb();
  {
    absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(2 * page, {.page_size = page});
    ASSERT_TRUE(buf.ok()) << buf.status();
    EXPECT_EQ(buf->folio_size(), page);
    // The kernel holds a long-term pin on every page: VmPin grows by the buffer.
    EXPECT_EQ(testing::VmPinKb() - pinned_before, static_cast<int64_t>(2 * page / 1024));
    absl::StatusOr<VerifyReport> report = (*rt)->Verify(buf->data(), buf->size());
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->ok());
    EXPECT_EQ(report->leaves_checked[page], 2u);
    std::optional<Translation> t = (*rt)->Translate(buf->data() + page + 5 * 4096);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->page, 5u);
    absl::StatusOr<FolioInfo> info = (*rt)->FolioInfoAt(buf->data());
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->refcount, 2);  // the buffer's reference and the table's mapping
    EXPECT_EQ(info->size, page);
  }
  EXPECT_EQ(testing::VmPinKb(), pinned_before) << "the kernel pin outlived the buffer";
}

// Pages that freed allocations left in the runtime's pools are the runtime's to give back:
// a buffer, or a folio of another pool, that needs them gets them instead of a refusal
// that blames the kernel's pool. Here a mount of one page stands for a scarce kind (a
// machine's few 1G pages): a pool takes its page for a 4K folio and keeps it, free, after
// the folio is freed.
TEST_P(RuntimeTest, MemoryNeedsWhatThePoolsHoldFree) {
  const size_t page = GetParam();
  HUGEMM_NEED_HUGEPAGES(page, 1);
  const int code = testing::RunWithSmallHugetlbfs(
      page,
      [page](const std::string& mount) {
        absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
        if (!rt.ok()) return 2;
        const AllocOptions any{
            .backing = BackingKind::kHugetlbfs, .page_size = page, .hugetlbfs_mount = mount};
        AllocOptions node0 = any;
        node0.node = 0;
        absl::StatusOr<Buffer> small = (*rt)->Allocate(kPageSize4K, any);
        if (!small.ok() || !small->Free().ok()) return 3;
        // The page is the "any node" pool's, free.
        absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(
            page,
            {.backing = BackingKind::kHugetlbfs, .page_size = page, .hugetlbfs_mount = mount});
        if (!buf.ok()) {
          std::fprintf(stderr, "map: %s\n", buf.status().ToString().c_str());
          return 4;
        }
        if (!buf->Free().ok()) return 5;
        small = (*rt)->Allocate(kPageSize4K, any);
        if (!small.ok() || !small->Free().ok()) return 6;
        // Again the "any node" pool's: node 0's pool is another, and grows from it.
        small = (*rt)->Allocate(kPageSize4K, node0);
        if (!small.ok()) {
          std::fprintf(stderr, "allocate: %s\n", small.status().ToString().c_str());
          return 7;
        }
        return 0;
      },
      page);
  HUGEMM_NEED(code != testing::kCannotMount, "needs to mount a hugetlbfs (root)");
  EXPECT_EQ(code, 0);
}

INSTANTIATE_TEST_SUITE_P(PageSizes, RuntimeTest, ::testing::Values(kPageSize2M, kPageSize1G),
                         [](const auto& info) { return PageSizeName(info.param); });

TEST(Runtime, FreedBufferKeepsItsMemoryUntilTheLastUnpin) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t free_before = FreeHugePages(kPageSize2M);
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(4 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  std::memset(data + kPageSize2M, 0x77, kPageSize2M);
  std::vector<FolioSpan> spans(4);
  absl::StatusOr<size_t> n = (*rt)->pinner().PinFolios(data + kPageSize2M, kPageSize2M, kGupPin,
                                                       absl::MakeSpan(spans.data(), 4));
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 1u);
  HUGEMM_ASSERT_OK(buf->Free());
  // The buffer's memory goes back as one mapping, after its last pin: nothing yet, and
  // the pinned folio's data is untouched.
  EXPECT_LE(FreeHugePages(kPageSize2M), free_before - 4);
  EXPECT_EQ(spans[0].folio->data[12345], std::byte{0x77});
  EXPECT_TRUE(FolioMaybeDmaPinned(spans[0].folio));
  EXPECT_FALSE((*rt)->Translate(data).has_value()) << "a freed buffer is out of the table";
  (*rt)->pinner().UnpinFolios(absl::MakeConstSpan(spans.data(), 1), RefKind::kPin);
  EXPECT_GE(FreeHugePages(kPageSize2M), free_before) << "the last unpin frees the memory";
}

// A pin left when the runtime closes keeps its folio's memory, untouched, until the last
// unpin, which then gives it back.
TEST(Runtime, PinnedFolioOutlivesTheRuntimeUntilItsLastUnpin) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t free_before = FreeHugePages(kPageSize2M);
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  buf->Detach();  // the runtime frees it when it closes
  std::memset(buf->data(), 0x5a, kPageSize4K);
  FolioSpan span;
  absl::StatusOr<size_t> n =
      (*rt)->pinner().PinFolios(buf->data(), kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
  ASSERT_TRUE(n.ok()) << n.status();
  rt->reset();
  EXPECT_LE(FreeHugePages(kPageSize2M), free_before - 1);
  EXPECT_EQ(span.folio->data[100], std::byte{0x5a});
  EXPECT_TRUE(FolioMaybeDmaPinned(span.folio));
  FolioUngrab(span.folio, static_cast<int32_t>(span.pages), RefKind::kPin);
  EXPECT_GE(FreeHugePages(kPageSize2M), free_before) << "the last unpin frees the memory";
}

// Buffers of one runtime are made and freed on several threads at once, while another
// thread asks where addresses belong.
TEST(Runtime, BuffersComeAndGoOnManyThreadsAtOnce) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> first = (*rt)->Allocate(kPageSize4K);
  ASSERT_TRUE(first.ok()) << first.status();
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::thread asker([&] {
    while (!stop.load()) {
      if (!(*rt)->BufferAt(first->data()).ok()) ++failures;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < 2; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        absl::StatusOr<Buffer> b = (*rt)->Allocate(kPageSize4K << (i % 4));
        if (!b.ok()) {
          ++failures;
          continue;
        }
        b->data()[0] = std::byte{static_cast<uint8_t>(t)};
        if (!(t == 0 ? b->Free() : (*rt)->Free(b->data())).ok()) ++failures;
      }
    });
  }
  for (std::thread& w : workers) w.join();
  stop = true;
  asker.join();
  EXPECT_EQ(failures.load(), 0);
}

// Hears buffers go (their memory unmapped after the last reference dropped).
class RemovalCounter : public MemoryObserver {
 public:
  absl::Status MemoryAdded(const MemoryRange& /*range*/) override { return absl::OkStatus(); }
  void MemoryRemoving(const MemoryRange& range) override {
    if (range.kind == MemoryRangeKind::kBuffer) ++buffers_removed;
  }
  std::atomic<int> buffers_removed{0};
};

// A program that unmapped part of a buffer through table() still frees all of it: what
// the table still maps of the buffer's folios goes, and so does its memory.
TEST(Runtime, FreeUnmapsWhatIsLeftOfAPartlyUnmappedBuffer) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  RemovalCounter removals;
  HUGEMM_ASSERT_OK((*rt)->AddMemoryObserver(&removals));
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(4 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  HUGEMM_ASSERT_OK((*rt)->table().Unmap(data, kPageSize2M));
  HUGEMM_ASSERT_OK((*rt)->table().Unmap(data + 2 * kPageSize2M + kPageSize4K, kPageSize4K));
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_FALSE((*rt)->Translate(data + kPageSize2M).has_value());
  EXPECT_FALSE((*rt)->Translate(data + 2 * kPageSize2M).has_value());
  EXPECT_EQ(removals.buffers_removed.load(), 1) << "the buffer's memory went back";

  absl::StatusOr<Buffer> small = (*rt)->Allocate(2 * kPageSize4K);
  ASSERT_TRUE(small.ok()) << small.status();
  std::byte* at = small->data();
  HUGEMM_ASSERT_OK((*rt)->table().Unmap(at, kPageSize4K));
  HUGEMM_ASSERT_OK((*rt)->Free(at));
  EXPECT_FALSE((*rt)->Translate(at + kPageSize4K).has_value());
  HUGEMM_ASSERT_OK((*rt)->RemoveMemoryObserver(&removals));
}

// Refuses every range it is told of.
class RefusingObserver : public MemoryObserver {
 public:
  absl::Status MemoryAdded(const MemoryRange& /*range*/) override {
    return absl::ResourceExhaustedError("the observer is full");
  }
  void MemoryRemoving(const MemoryRange& /*range*/) override {}
};

// A named hugetlbfs file the refused MapBuffer created is gone again with its huge page
// (as when the backing itself fails); one another process made stays, with its data.
TEST(Runtime, ARefusedBufferRemovesTheNamedFileItCreatedOnly) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "no 2M hugetlbfs mount");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  RefusingObserver refusing;
  HUGEMM_ASSERT_OK((*rt)->AddMemoryObserver(&refusing));
  const std::string name = "runtime_test_refused_" + std::to_string(::getpid());
  const std::string path = mount + "/" + name;
  const BufferOptions named{.backing = BackingKind::kHugetlbfs, .file_name = name};
  absl::StatusOr<Buffer> refused = (*rt)->MapBuffer(kPageSize2M, named);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_FALSE(std::filesystem::exists(path)) << "the file this call created stayed";

  // Made by another process (here: before, by hand), with a page written.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::ftruncate(fd, kPageSize2M), 0);
  void* p = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  static_cast<char*>(p)[77] = 'x';
  ASSERT_EQ(::munmap(p, kPageSize2M), 0);
  ASSERT_EQ(::close(fd), 0);
  refused = (*rt)->MapBuffer(kPageSize2M, named);
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(std::filesystem::exists(path)) << "a file another process made was removed";
  HUGEMM_ASSERT_OK((*rt)->RemoveMemoryObserver(&refusing));
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M, named);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(static_cast<char>(buf->data()[77]), 'x');
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_TRUE(std::filesystem::exists(path)) << "a named file outlives its buffer";
  ASSERT_EQ(::unlink(path.c_str()), 0);
}

// A hole punched in the hugetlbfs file under a pinned registration: the kernel frees the
// page at once (a pin of the table holds no kernel reference), Verify names it, and
// unpin, unregister, munmap and close leave nothing behind.
TEST(Runtime, HolePunchedUnderAPinnedRegistrationIsNamedAndLeavesNothing) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "no 2M hugetlbfs mount");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  const size_t fds_before = testing::OpenFds();
  std::string path = mount + "/runtime_test_hole_XXXXXX";
  const int fd = ::mkstemp(path.data());
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::unlink(path.c_str()), 0);
  constexpr size_t kLen = 2 * kPageSize2M;
  ASSERT_EQ(::ftruncate(fd, kLen), 0);
  void* p = ::mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* buf = static_cast<std::byte*>(p);
  absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(buf, kLen);
  ASSERT_TRUE(id.ok()) << id.status();
  {
    absl::StatusOr<PinnedRange> pin =
        (*rt)->pinner().Pin(buf + kPageSize2M, kPageSize2M, kGupPin | kGupWrite);
    ASSERT_TRUE(pin.ok()) << pin.status();
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    const blkcnt_t blocks = st.st_blocks;
    ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kPageSize2M, kPageSize2M),
              0);
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_blocks, blocks / 2) << "the page left the file, pinned or not";
    absl::StatusOr<VerifyReport> r = (*rt)->Verify(buf, kLen);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->mismatches.size(), 1u);
    EXPECT_THAT(r->mismatches[0].what,
                HasSubstr(absl::StrFormat("%p: PFN recorded", buf + kPageSize2M)));
    EXPECT_EQ((*rt)->UnregisterExternal(*id).code(), absl::StatusCode::kFailedPrecondition);
  }
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*id));
  EXPECT_FALSE((*rt)->Translate(buf).has_value());
  ASSERT_EQ(::munmap(p, kLen), 0);
  ASSERT_EQ(::close(fd), 0);
  EXPECT_EQ(testing::OpenFds(), fds_before);
}

// The frame pagemap shows at `va`, or 0.
uint64_t PagemapPfn(const void* va) {
  const int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  uint64_t word = 0;
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(va) / kPageSize4K * 8);
  const bool read = ::pread(fd, &word, sizeof(word), at) == sizeof(word);
  ::close(fd);
  return read && (word >> 63) != 0 ? word & ((uint64_t{1} << 55) - 1) : 0;
}

// A 2M hugetlb page of the program's own, faulted in, or nullptr.
std::byte* MapOwn2M() {
  void* p = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

// Writable external memory is held by the kernel pin table until it is unregistered: a
// program that unmaps it too early leaves the table's frame still this process's, so the
// kernel cannot hand it to the next mapping (it would, at once, without the hold).
TEST(Runtime, ExternalFramesStayHeldWhenTheProgramUnmapsThemEarly) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = testing::VmPinKb();
  std::byte* buf = MapOwn2M();
  ASSERT_NE(buf, nullptr);
  absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(buf, kPageSize2M);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(testing::VmPinKb() - pinned_before, static_cast<int64_t>(kPageSize2M / 1024));
  std::optional<Translation> t = (*rt)->Translate(buf);
  ASSERT_TRUE(t.has_value());
  const uint64_t held = t->pfn;
  ASSERT_NE(held, kUnknownPfn);
  ASSERT_EQ(::munmap(buf, kPageSize2M), 0);
  std::byte* next = MapOwn2M();
  ASSERT_NE(next, nullptr);
  const uint64_t next_pfn = PagemapPfn(next);
  ASSERT_NE(next_pfn, 0u) << "pagemap hides frames from this process";
  EXPECT_NE(next_pfn, held) << "the kernel reused a frame the table still hands out";
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*id));
  EXPECT_EQ(testing::VmPinKb(), pinned_before) << "the hold outlived the registration";
  ASSERT_EQ(::munmap(next, kPageSize2M), 0);

  // The control: a runtime without kernel pins holds nothing, and the kernel hands the
  // frame the program unmapped to its next mapping (hugetlb's free list is last in, first
  // out), while that runtime's table would still hand the frame out for DMA.
  {
    absl::StatusOr<std::unique_ptr<Runtime>> bare = Runtime::Open({.kernel_pins = false});
    ASSERT_TRUE(bare.ok()) << bare.status();
    buf = MapOwn2M();
    ASSERT_NE(buf, nullptr);
    id = (*bare)->RegisterExternal(buf, kPageSize2M);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(testing::VmPinKb(), pinned_before);
    const uint64_t unheld = (*bare)->Translate(buf)->pfn;
    ASSERT_EQ(::munmap(buf, kPageSize2M), 0);
    next = MapOwn2M();
    ASSERT_NE(next, nullptr);
    EXPECT_EQ(PagemapPfn(next), unheld) << "the kernel did not reuse the unheld frame";
    EXPECT_EQ((*bare)->Translate(buf)->pfn, unheld) << "the table still names it";
    ASSERT_EQ(::munmap(next, kPageSize2M), 0);
    HUGEMM_ASSERT_OK((*bare)->UnregisterExternal(*id));
  }

  // Read-only memory is registered without a hold: the kernel pins only what it may write.
  buf = MapOwn2M();
  ASSERT_NE(buf, nullptr);
  ASSERT_EQ(::mprotect(buf, kPageSize2M, PROT_READ), 0);
  id = (*rt)->RegisterExternal(buf, kPageSize2M);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(testing::VmPinKb(), pinned_before);
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*id));
  ASSERT_EQ(::munmap(buf, kPageSize2M), 0);
}

// The program changes a buffer of the runtime's behind its back (runtime.h): a page dropped
// from a MAP_SHARED buffer by MADV_DONTNEED comes back, same frame and contents; one
// removed by MADV_REMOVE comes back as a new frame, and one unmapped is gone. Verify
// names those two; the table keeps handing out the frames it recorded, which the kernel
// pin table keeps this process's (the next mapping gets another), and the free gives
// everything back.
TEST(Runtime, ABufferTheProgramChangedIsNamedByVerifyAndItsFramesStayHeld) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 5);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = testing::VmPinKb();
  constexpr size_t kLen = 3 * kPageSize2M;
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kLen);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  std::memset(data, 0x5a, kLen);
  uint64_t recorded[3];
  for (size_t i = 0; i < 3; ++i) {
    std::optional<Translation> t = (*rt)->Translate(data + i * kPageSize2M);
    ASSERT_TRUE(t.has_value());
    recorded[i] = t->pfn;
    ASSERT_EQ(PagemapPfn(data + i * kPageSize2M), recorded[i]) << "pagemap hides frames";
  }

  ASSERT_EQ(::madvise(data, kPageSize2M, MADV_DONTNEED), 0);
  EXPECT_EQ(static_cast<int>(data[100]), 0x5a);
  EXPECT_EQ(PagemapPfn(data), recorded[0]);
  std::byte* removed = data + kPageSize2M;
  ASSERT_EQ(::madvise(removed, kPageSize2M, MADV_REMOVE), 0);
  EXPECT_EQ(static_cast<int>(removed[100]), 0) << "a removed page comes back zeroed";
  EXPECT_NE(PagemapPfn(removed), recorded[1]) << "the held frame went back to the mapping";
  std::byte* unmapped = data + 2 * kPageSize2M;
  ASSERT_EQ(::munmap(unmapped, kPageSize2M), 0);
  std::byte* next = MapOwn2M();
  ASSERT_NE(next, nullptr);
  EXPECT_NE(PagemapPfn(next), recorded[1]);
  EXPECT_NE(PagemapPfn(next), recorded[2]) << "the kernel reused a frame the table hands out";

  absl::StatusOr<VerifyReport> r = (*rt)->Verify(data, kLen);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->mismatches.size(), 2u);
  EXPECT_THAT(r->mismatches[0].what, HasSubstr(absl::StrFormat("%p: PFN recorded", removed)));
  EXPECT_THAT(r->mismatches[1].what,
              HasSubstr(absl::StrFormat("%p: the kernel maps nothing here", unmapped)));
  for (size_t i = 0; i < 3; ++i) {
    std::optional<Translation> t = (*rt)->Translate(data + i * kPageSize2M);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->pfn, recorded[i]);
  }
  {
    absl::StatusOr<PinnedRange> pin = (*rt)->pinner().Pin(unmapped, kPageSize2M, kGupPin);
    ASSERT_TRUE(pin.ok()) << pin.status();
  }

  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_FALSE((*rt)->Translate(data).has_value());
  EXPECT_EQ(testing::VmPinKb(), pinned_before) << "a held frame outlived the free";
  ASSERT_EQ(::munmap(next, kPageSize2M), 0);
}

// A registration the kernel pin table refuses is never visible: the hold is taken before
// the table maps the memory, so a pin by address from another thread, racing with the
// registration, never succeeds. (Taken after the mapping, such a pin could get in, and the
// registration, which its own undo then could not unregister, stayed.)
TEST(Runtime, ARefusedExternalRegistrationIsNeverPinnable) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  RuntimeOptions options;
  options.kernel_pin_slots = 1;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open(options);
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::byte* first = MapOwn2M();
  std::byte* second = MapOwn2M();
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(first, kPageSize2M);
  ASSERT_TRUE(id.ok()) << id.status();  // the one slot
  std::atomic<bool> stop{false};
  std::atomic<int> pinned{0};
  std::thread pinner([&] {
    FolioSpan span;
    while (!stop.load(std::memory_order_relaxed)) {
      absl::StatusOr<size_t> n =
          (*rt)->pinner().PinFolios(second, kPageSize2M, kGupPin | kGupWrite, {&span, 1});
      if (n.ok()) {
        pinned.fetch_add(1, std::memory_order_relaxed);
        (*rt)->pinner().UnpinFolios({&span, 1}, RefKind::kPin, /*dirty=*/false);
      }
    }
  });
  constexpr int kAttempts = 500;
  int refused = 0;
  for (int i = 0; i < kAttempts; ++i) {
    absl::StatusOr<uint64_t> again = (*rt)->RegisterExternal(second, kPageSize2M);
    if (again.ok()) {
      ADD_FAILURE() << "registered beyond the kernel pin table's one slot";
      (void)(*rt)->UnregisterExternal(*again);
      break;
    }
    EXPECT_EQ(again.status().code(), absl::StatusCode::kResourceExhausted) << again.status();
    ++refused;
  }
  stop.store(true);
  pinner.join();
  EXPECT_EQ(refused, kAttempts);
  EXPECT_EQ(pinned.load(), 0) << "a pin reached memory whose registration was refused";
  EXPECT_FALSE((*rt)->Translate(second).has_value()) << "a refused registration stayed";
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*id));
  ASSERT_EQ(::munmap(first, kPageSize2M), 0);
  ASSERT_EQ(::munmap(second, kPageSize2M), 0);
}

// A range registered again while another thread's unregistration of it gives back its
// hold is held all the same: registrations and unregistrations are ordered, so the new
// one never meets the old hold still in the kernel pin table.
TEST(Runtime, ARangeRegisteredAgainDuringItsUnregistrationIsHeld) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::byte* buf = MapOwn2M();
  ASSERT_NE(buf, nullptr);
  const int64_t pinned_before = testing::VmPinKb();
  // A round is a registration and an unregistration on each thread, the unregistration
  // waiting out a grace period: 400 keep the test to well under a minute under the
  // sanitizers too.
  constexpr int kRounds = 400;
  std::atomic<bool> unregistering[2] = {false, false};
  std::atomic<int> registered{0}, unheld{0};
  auto run = [&](int me) {
    for (int i = 0; i < kRounds; ++i) {
      absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(buf, kPageSize2M);
      if (!id.ok()) continue;  // the other thread's registration is in the table
      registered.fetch_add(1);
      // The other thread may still be in the unregistration that let this one in: once
      // it is out, this registration's hold must be there.
      while (unregistering[1 - me].load()) std::this_thread::yield();
      if (testing::VmPinKb() - pinned_before < static_cast<int64_t>(kPageSize2M / 1024)) {
        unheld.fetch_add(1);
      }
      unregistering[me].store(true);
      if (absl::Status st = (*rt)->UnregisterExternal(*id); !st.ok()) ADD_FAILURE() << st;
      unregistering[me].store(false);
    }
  };
  std::thread other(run, 1);
  run(0);
  other.join();
  EXPECT_GT(registered.load(), 0);
  EXPECT_EQ(unheld.load(), 0) << "of " << registered.load() << " registrations";
  EXPECT_EQ(testing::VmPinKb(), pinned_before) << "a hold outlived its registration";
  ASSERT_EQ(::munmap(buf, kPageSize2M), 0);
}

// A notifier callback that an unregistration runs cannot register memory on its thread
// (the registration would wait for the unregistration that waits for the callback): it is
// refused, not hung, and the same registration works once the callback is over.
TEST(Runtime, ExternalRegistrationFromItsOwnUnregistrationsCallbackIsRefused) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::byte* a = MapOwn2M();
  std::byte* b = MapOwn2M();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(a, kPageSize2M);
  ASSERT_TRUE(id.ok()) << id.status();
  std::optional<absl::Status> inside;
  std::unique_ptr<RangeSubscription> sub =
      (*rt)->Subscribe(a, kPageSize2M, {.invalidate_start = [&](const Invalidation&) {
                         if (!inside) inside = (*rt)->RegisterExternal(b, kPageSize2M).status();
                       }});
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*id));
  sub.reset();
  ASSERT_TRUE(inside.has_value()) << "the unregistration announced nothing";
  EXPECT_EQ(inside->code(), absl::StatusCode::kFailedPrecondition) << *inside;
  EXPECT_THAT(inside->message(), HasSubstr("notifier callback"));
  EXPECT_FALSE((*rt)->Translate(b).has_value());
  absl::StatusOr<uint64_t> after = (*rt)->RegisterExternal(b, kPageSize2M);
  ASSERT_TRUE(after.ok()) << after.status();
  HUGEMM_ASSERT_OK((*rt)->UnregisterExternal(*after));
  ASSERT_EQ(::munmap(a, kPageSize2M), 0);
  ASSERT_EQ(::munmap(b, kPageSize2M), 0);
}

TEST(Runtime, AllocatedFoliosArePinnableAndFreedByAddress) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = testing::VmPinKb();
  absl::StatusOr<Buffer> a = (*rt)->Allocate(64 << 10);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), size_t{64} << 10);
  EXPECT_GT(testing::VmPinKb(), pinned_before) << "an allocated buffer is kernel-pinned too";
  std::byte* data = a->data();
  a->Detach();
  absl::StatusOr<PinnedRange> pin = (*rt)->pinner().Pin(data, 64 << 10, kGupPin | kGupWrite);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->spans().size(), 1u);
  pin->Release();
  HUGEMM_ASSERT_OK((*rt)->Free(data));
  // The pin is the pool extent's: it stays while the extent is mapped, until Shrink.
  EXPECT_GT(testing::VmPinKb(), pinned_before);
  EXPECT_GT((*rt)->allocator().Shrink(), 0u);
  EXPECT_EQ(testing::VmPinKb(), pinned_before);
  absl::Status again = (*rt)->Free(data);
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(again.message(), HasSubstr("not the start of a hugemm buffer"));
}

// A child of fork() shares the kernel pin table's ring but none of the memory: closing
// its copy of the runtime must leave the parent's kernel pins, and new memory there is
// refused rather than registered in the parent's ring.
TEST(Runtime, ForkedChildLeavesTheParentsKernelPins) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int64_t pinned_at_start = testing::VmPinKb();
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<Buffer> small = (*rt)->Allocate(kPageSize4K);
  ASSERT_TRUE(small.ok()) << small.status();
  const int64_t pinned = testing::VmPinKb();
  ASSERT_GE(pinned - pinned_at_start, static_cast<int64_t>(3 * kPageSize2M / 1024));

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<Buffer> more = (*rt)->MapBuffer(kPageSize2M);
    const int code = more.ok()                                                       ? 1
                     : more.status().code() == absl::StatusCode::kFailedPrecondition ? 0
                                                                                     : 2;
    // The buffers are the parent's: not freed here, and the runtime's end leaves them.
    if (buf->Free().code() != absl::StatusCode::kFailedPrecondition) _exit(3);
    // Nor does the child change the table with memory of its own.
    void* own = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (own == MAP_FAILED) _exit(4);
    if ((*rt)->RegisterExternal(own, kPageSize2M).status().code() !=
        absl::StatusCode::kFailedPrecondition) {
      _exit(5);
    }
    small->Detach();
    rt->reset();
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: the child mapped new memory, 2: another error, 3: it freed a parent's buffer, "
         "4: no 2M page for the child, 5: it registered external memory";
  EXPECT_EQ(testing::VmPinKb(), pinned) << "the child's close dropped the parent's pins";

  std::memset(buf->data(), 0x11, buf->size());
  HUGEMM_ASSERT_OK(buf->Free());
  HUGEMM_ASSERT_OK(small->Free());
  (void)(*rt)->allocator().Shrink();
  EXPECT_EQ(testing::VmPinKb(), pinned_at_start);
}

// The pools' extents are MADV_DONTFORK: a child that inherited a free folio (in the pool,
// or in its thread's magazine) must be refused, not handed memory it does not have. With
// kernel pins off too: the pools are the parent's either way.
TEST(Runtime, ForkedChildIsRefusedThePoolsFolios) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  for (const bool kernel_pins : {true, false}) {
    SCOPED_TRACE(kernel_pins ? "kernel pins" : "no kernel pins");
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = kernel_pins});
    ASSERT_TRUE(rt.ok()) << rt.status();
    // A 4K folio freed into this thread's magazine, a 2M one and the rest of a page free
    // in the pool.
    for (size_t bytes : {kPageSize4K, kPageSize2M}) {
      absl::StatusOr<Buffer> b = (*rt)->Allocate(bytes);
      ASSERT_TRUE(b.ok()) << b.status();
      HUGEMM_ASSERT_OK(b->Free());
    }
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      int code = 0;
      for (size_t bytes : {kPageSize4K, kPageSize2M}) {
        for (const bool zero : {true, false}) {
          absl::StatusOr<Buffer> b = (*rt)->Allocate(bytes, {.zero = zero});
          if (b.ok()) {
            b->Detach();
            code = 1;
          } else if (b.status().code() != absl::StatusCode::kFailedPrecondition ||
                     b.status().message().find("fork()") == absl::string_view::npos) {
            code = 2;
          }
        }
      }
      rt->reset();
      _exit(code);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_FALSE(WIFSIGNALED(status)) << "the child died of signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1: the child was handed a folio, 2: another error";
    // The parent's pools are as they were.
    absl::StatusOr<Buffer> b = (*rt)->Allocate(kPageSize4K);
    ASSERT_TRUE(b.ok()) << b.status();
    std::memset(b->data(), 0x5a, b->size());
  }
}

// Another thread of the parent sits in a read section and a notifier subscription is open
// when the process forks: the child's copies of that section and of every lock stay held
// for good, so closing the runtime there must not wait for a grace period or a lock.
TEST(Runtime, ForkedChildClosesWithoutWaitingForTheParentsThreads) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &buf), 0) << hugemm_last_error();
  hugemm_subscription* sub = nullptr;
  ASSERT_EQ(hugemm_subscribe(rt, buf.data, buf.size, nullptr, nullptr, nullptr, &sub, nullptr), 0);
  const int64_t pinned = testing::VmPinKb();
  std::atomic<int> reader_state{0};
  std::thread reader([&] {
    ReadSection section;
    reader_state = 1;
    while (reader_state.load() != 2) std::this_thread::yield();
  });
  while (reader_state.load() != 1) std::this_thread::yield();

  const pid_t child = fork();
  if (child == 0) {
    alarm(20);  // a close that waits is killed by SIGALRM
    const int freed = hugemm_free(rt, buf.data);
    hugemm_close(rt);
    hugemm_unsubscribe(sub);
    _exit(freed == -EFAULT ? 0 : 1);
  }
  reader_state = 2;
  reader.join();
  ASSERT_GE(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_FALSE(WIFSIGNALED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "hugemm_free in the child";
  EXPECT_EQ(testing::VmPinKb(), pinned);

  hugemm_unsubscribe(sub);
  EXPECT_EQ(hugemm_free(rt, buf.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

TEST(Runtime, BadRequestsAreClearErrors) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> b = (*rt)->MapBuffer(12345);
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("not a positive multiple"));
  b = (*rt)->MapBuffer(kPageSize2M, {.backing = BackingKind::kDevDax});
  ASSERT_FALSE(b.ok());
  EXPECT_THAT(b.status().message(), HasSubstr("device path"));
  EXPECT_FALSE((*rt)->FolioInfoAt(nullptr).ok());
  EXPECT_FALSE((*rt)->Allocate(size_t{4} << 30).ok());
}

// Verify reads the folios of the leaves it walked while other threads free their buffers:
// the descriptors (freed with a MapBuffer buffer's last reference) must outlive the checks.
// ASan reported a use after free in Verify here before it held one read section over them.
TEST(Runtime, VerifyWhileOtherBuffersAreFreed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 5);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> kept = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(kept.ok()) << kept.status();
  std::atomic<bool> stop{false};
  std::atomic<int> verified{0};
  std::thread verifier([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      // Everything the table maps: the kept buffer and whichever others exist now.
      absl::StatusOr<VerifyReport> r = (*rt)->Verify(nullptr, SIZE_MAX);
      EXPECT_TRUE(r.ok()) << r.status();
      verified.fetch_add(1, std::memory_order_relaxed);
    }
  });
  for (int i = 0; i < 1000 && (i < 50 || verified.load(std::memory_order_relaxed) < 100); ++i) {
    std::vector<Buffer> batch;
    for (int j = 0; j < 4; ++j) {
      absl::StatusOr<Buffer> b = (*rt)->MapBuffer(kPageSize2M);
      ASSERT_TRUE(b.ok()) << b.status();
      batch.push_back(std::move(*b));
    }
    for (Buffer& b : batch) ASSERT_TRUE(b.Free().ok());
  }
  stop = true;
  verifier.join();
  EXPECT_GE(verified.load(), 1);
  absl::StatusOr<VerifyReport> r = (*rt)->Verify(kept->data(), kept->size());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok());
  EXPECT_EQ(r->leaves_checked[kPageSize2M], 1u);
}

// Allocations carved from a huge page are folios smaller than the kernel's page: each is
// one leaf of its own size inside that page, which is how they are meant to be mapped, so
// Verify holds their frames against the kernel's and finds nothing wrong. A leaf split out
// of a folio the kernel maps whole is still named (PageTableKernelTest).
TEST(Runtime, VerifyOfAllocationsInsideAHugePageFindsThemRight) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::vector<Buffer> allocations;
  for (size_t bytes : {kPageSize4K, size_t{16} << 10, size_t{64} << 10, kPageSize2M}) {
    absl::StatusOr<Buffer> b = (*rt)->Allocate(bytes);
    ASSERT_TRUE(b.ok()) << b.status();
    std::memset(b->data(), 0x5a, b->size());
    absl::StatusOr<VerifyReport> r = (*rt)->Verify(b->data(), b->size());
    ASSERT_TRUE(r.ok()) << r.status();
    std::string what;
    for (const VerifyMismatch& m : r->mismatches) what += m.what + "\n";
    EXPECT_TRUE(r->ok()) << bytes << " bytes:\n" << what;
    size_t leaves = 0;
    for (const auto& [size, n] : r->leaves_checked) leaves += n;
    EXPECT_GE(leaves, 1u);
    allocations.push_back(std::move(*b));
  }
  absl::StatusOr<VerifyReport> all = (*rt)->Verify(nullptr, SIZE_MAX);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE(all->ok()) << all->mismatches.front().what;
  // From the first buffer on, SIZE_MAX bytes wrap: a bad argument, as for a pin.
  absl::StatusOr<VerifyReport> wraps = (*rt)->Verify(allocations.front().data(), SIZE_MAX);
  EXPECT_EQ(wraps.status().code(), absl::StatusCode::kInvalidArgument) << wraps.status();
  EXPECT_THAT(wraps.status().message(), HasSubstr("wraps the address space"));
}

// The runtime's Pinner knows that each folio keeps its owner's reference while mapped: a
// GET unpin by range of a page never taken, or given back already, is refused instead of
// taking that reference, after which the free would drop it a second time.
TEST(Runtime, UnpinRangeOfGetNeverTakesTheBuffersOwnReference) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<Buffer> small = (*rt)->Allocate(kPageSize4K);
  ASSERT_TRUE(small.ok()) << small.status();
  Pinner& pinner = (*rt)->pinner();
  for (std::byte* p : {buf->data() + kPageSize4K, small->data()}) {
    absl::StatusOr<FolioInfo> before = (*rt)->FolioInfoAt(p);
    ASSERT_TRUE(before.ok()) << before.status();
    absl::Status st = pinner.UnpinRange(p, kPageSize4K, RefKind::kGet);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    PageRef page[1];
    ASSERT_TRUE(pinner.PinPages(p, 1, kGupGet, absl::MakeSpan(page)).ok());
    EXPECT_TRUE(pinner.UnpinRange(p, kPageSize4K, RefKind::kGet).ok());
    st = pinner.UnpinRange(p, kPageSize4K, RefKind::kGet);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    absl::StatusOr<FolioInfo> after = (*rt)->FolioInfoAt(p);
    ASSERT_TRUE(after.ok()) << after.status();
    EXPECT_EQ(after->refcount, before->refcount);
  }
  EXPECT_TRUE(buf->Free().ok());
  EXPECT_TRUE(small->Free().ok());
}

// No test hook needed: a 1G folio pinned whole takes 262144 pins a call, so its 8192nd
// whole pin would pass INT32_MAX. That pin is refused with -ENOMEM, names the folio and
// takes nothing; the pins before it all come back.
TEST(Runtime, WholePinsOfA1GFolioStopShortOfOverflowingItsCounts) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  const hugemm_buffer_options one_g{HUGEMM_BACKING_HUGETLB, kPageSize1G, -1, nullptr};
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize1G, &one_g, &buf), 0) << hugemm_last_error();
  hugemm_folio_info base{};
  ASSERT_EQ(hugemm_folio_info_at(rt, buf.data, &base), 0) << hugemm_last_error();
  const int32_t per_pin = static_cast<int32_t>(kPageSize1G / kPageSize4K);
  const int32_t fit = (INT32_MAX - base.refcount) / per_pin;  // 8191
  hugemm_folio_span span;
  for (int32_t i = 0; i < fit; ++i) {
    ASSERT_EQ(hugemm_pin_folios(rt, buf.data, buf.size, HUGEMM_PIN, &span, 1), 1)
        << i << ": " << hugemm_last_error();
  }
  EXPECT_EQ(hugemm_pin_folios(rt, buf.data, buf.size, HUGEMM_PIN, &span, 1), -ENOMEM);
  EXPECT_THAT(hugemm_last_error(),
              ::testing::HasSubstr(absl::StrFormat("1G folio at %p would overflow", buf.data)));
  hugemm_folio_info full{};
  ASSERT_EQ(hugemm_folio_info_at(rt, buf.data, &full), 0) << hugemm_last_error();
  EXPECT_EQ(full.pincount, fit * per_pin);
  EXPECT_EQ(full.refcount, base.refcount + fit * per_pin);
  for (int32_t i = 0; i < fit; ++i) ASSERT_EQ(hugemm_unpin_folios(rt, &span, 1, HUGEMM_PIN, 0), 1);
  hugemm_folio_info after{};
  ASSERT_EQ(hugemm_folio_info_at(rt, buf.data, &after), 0) << hugemm_last_error();
  EXPECT_EQ(after.refcount, base.refcount);
  EXPECT_EQ(after.pincount, 0);
  EXPECT_EQ(hugemm_free(rt, buf.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

// hugemm_unpin_range of a range never pinned is refused (-EFAULT), also while another
// thread frees the buffer under it: the checks read the folios the walk found, which the
// free may release meanwhile. ASan reported a use after free in CheckHeld here before the
// walk and the checks shared one read section.
TEST(Runtime, UnpinRangeOfAnUnpinnedBufferBeingFreedIsRefused) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  std::atomic<void*> victim{nullptr};
  std::atomic<bool> stop{false};
  std::atomic<int> tries{0};
  std::thread unpinner([&] {
    for (unsigned k = 0; !stop.load(std::memory_order_relaxed); ++k) {
      void* v = victim.load(std::memory_order_relaxed);
      if (v == nullptr) continue;
      const unsigned kind = (k & 1) ? HUGEMM_PIN : HUGEMM_GET;
      EXPECT_EQ(hugemm_unpin_range(rt, v, 4 * kPageSize2M, kind, 0), -EFAULT);
      tries.fetch_add(1, std::memory_order_relaxed);
    }
  });
  for (int i = 0; i < 500; ++i) {
    hugemm_buffer b;
    ASSERT_EQ(hugemm_map_buffer(rt, 4 * kPageSize2M, nullptr, &b), 0) << hugemm_last_error();
    victim.store(b.data, std::memory_order_relaxed);
    // Free it once the other thread has tried it (mapped), as it tries again.
    for (const int t = tries.load(); tries.load() < t + 2;) std::this_thread::yield();
    ASSERT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  }
  stop = true;
  unpinner.join();
  EXPECT_GE(tries.load(), 1);
  hugemm_close(rt);
}

// A hugemm_pin_segments pin goes back by its record. An unpin by the table of part of its
// range (not the range it pinned, so no record matches) must not take the record's pins:
// the record would then give them back a second time and drive the counts below zero,
// leaving the folio unusable and its memory held for good. It is refused, and the record
// still gives back exactly what it took. Pins nobody recorded stay the table's to take.
TEST(Runtime, UnpinRangeByTheTableLeavesTheRecordedSegmentPins) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &buf), 0) << hugemm_last_error();
  auto* const d = static_cast<std::byte*>(buf.data);
  hugemm_folio_info base{};
  ASSERT_EQ(hugemm_folio_info_at(rt, d, &base), 0) << hugemm_last_error();
  for (const unsigned kind : {HUGEMM_PIN, HUGEMM_GET}) {
    SCOPED_TRACE(kind == HUGEMM_PIN ? "PIN" : "GET");
    hugemm_dma_segment seg[8];
    ASSERT_GT(hugemm_pin_segments(rt, d, kPageSize2M, kind, 0, seg, 8), 0) << hugemm_last_error();
    const size_t half = kPageSize2M / 2;
    EXPECT_EQ(hugemm_unpin_range(rt, d, half, kind, 0), -EFAULT);
    EXPECT_THAT(hugemm_last_error(), HasSubstr("besides 512 of recorded pins"));
    EXPECT_EQ(hugemm_unpin_range(rt, d + half, half, kind, 0), -EFAULT);
    // A page array's pin of the first half is nobody's record: the table may take it.
    std::vector<hugemm_page> pages(half / kPageSize4K);
    ASSERT_EQ(hugemm_pin_pages(rt, d, pages.size(), kind, pages.data()),
              static_cast<long>(pages.size()))
        << hugemm_last_error();
    EXPECT_EQ(hugemm_unpin_range(rt, d, half, kind, 0), 0) << hugemm_last_error();
    EXPECT_EQ(hugemm_unpin_range(rt, d, half, kind, 0), -EFAULT);
    // The record gives back its own, once.
    EXPECT_EQ(hugemm_unpin_range(rt, d, kPageSize2M, kind, 0), 0) << hugemm_last_error();
    EXPECT_EQ(hugemm_unpin_range(rt, d, kPageSize2M, kind, 0), -EFAULT);
    hugemm_folio_info now{};
    ASSERT_EQ(hugemm_folio_info_at(rt, d, &now), 0) << hugemm_last_error();
    EXPECT_EQ(now.refcount, base.refcount);
    EXPECT_EQ(now.pincount, base.pincount);
  }
  EXPECT_EQ(hugemm_free(rt, d), 0) << hugemm_last_error();
  hugemm_close(rt);
}

// The permissions /proc/self/maps gives the mapping that starts at `va` ("rw-s"), or "".
std::string KernelPerms(const void* va) {
  std::ifstream maps("/proc/self/maps");
  const std::string start = absl::StrFormat("%x-", reinterpret_cast<uintptr_t>(va));
  for (std::string line; std::getline(maps, line);) {
    if (line.rfind(start, 0) == 0) return line.substr(line.find(' ') + 1, 4);
  }
  return "";
}

// BufferOptions::prot is the kernel's protection as well as the table's: a read-only
// buffer is read-only in /proc/self/maps and refuses a WRITE pin, and Verify finds the
// two alike. Before, only the table had it: the kernel mapped every buffer rw-, and
// Verify of a fresh r-x buffer reported "the kernel maps rw-, shadow has a r-x PMD leaf".
TEST(Runtime, ABuffersProtectionIsTheKernelsToo) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  for (const Prot prot : {kProtRead, kProtRead | kProtWrite, kProtRead | kProtExec,
                          kProtRead | kProtWrite | kProtExec}) {
    const std::string letters =
        absl::StrCat(HasAny(prot, kProtRead) ? "r" : "-", HasAny(prot, kProtWrite) ? "w" : "-",
                     HasAny(prot, kProtExec) ? "x" : "-");
    SCOPED_TRACE(letters);
    absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M, {.prot = prot});
    ASSERT_TRUE(buf.ok()) << buf.status();
    EXPECT_EQ(KernelPerms(buf->data()), letters + "s");
    absl::StatusOr<VerifyReport> report = (*rt)->Verify(buf->data(), buf->size());
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->ok()) << report->mismatches.front().what;
    FolioSpan span;
    absl::StatusOr<size_t> pinned = (*rt)->pinner().PinFolios(
        buf->data(), buf->size(), kGupPin | kGupWrite, absl::MakeSpan(&span, 1));
    if (HasAny(prot, kProtWrite)) {
      ASSERT_TRUE(pinned.ok()) << pinned.status();
      (*rt)->pinner().UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin);
    } else {
      EXPECT_EQ(pinned.status().code(), absl::StatusCode::kPermissionDenied) << pinned.status();
    }
    EXPECT_TRUE(buf->Free().ok());
  }
  for (const Prot prot : {kProtNone, kProtWrite, Prot{1u << 5}}) {
    absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M, {.prot = prot});
    EXPECT_EQ(buf.status().code(), absl::StatusCode::kInvalidArgument) << buf.status();
  }
}

// HUGEMM_PARTIAL with fewer segments than the range needs pins as far as they reach, in
// whole pages of the first folio too; before, it failed with -ENOMEM and pinned nothing
// whenever the first folio needed more segments than the caller gave. The record of the
// pin gives back exactly those pages.
TEST(Runtime, APartialSegmentsPinTakesWhatItsSegmentsReach) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(rt, 2 * kPageSize2M, nullptr, &buf), 0) << hugemm_last_error();
  auto* const d = static_cast<std::byte*>(buf.data);
  hugemm_folio_info base{};
  ASSERT_EQ(hugemm_folio_info_at(rt, d, &base), 0) << hugemm_last_error();
  hugemm_dma_segment seg[3];
  // Without PARTIAL: all or nothing.
  EXPECT_EQ(hugemm_pin_segments(rt, d, 8192, HUGEMM_PIN, 4096, seg, 1), -ENOMEM);
  // One 4K segment of two pages.
  ASSERT_EQ(hugemm_pin_segments(rt, d, 8192, HUGEMM_PIN | HUGEMM_PARTIAL, 4096, seg, 1), 1)
      << hugemm_last_error();
  EXPECT_EQ(seg[0].length, 4096u);
  hugemm_folio_info now{};
  ASSERT_EQ(hugemm_folio_info_at(rt, d, &now), 0) << hugemm_last_error();
  EXPECT_EQ(now.pincount, base.pincount + 1);
  EXPECT_EQ(hugemm_unpin_range(rt, d, 8192, HUGEMM_PIN, 0), 0) << hugemm_last_error();
  // Three 1M segments of both folios (4M): the first folio whole and half the second.
  ASSERT_EQ(hugemm_pin_segments(rt, d, 2 * kPageSize2M, HUGEMM_GET | HUGEMM_PARTIAL,
                                kPageSize2M / 2, seg, 3),
            3)
      << hugemm_last_error();
  hugemm_folio_info second{};
  ASSERT_EQ(hugemm_folio_info_at(rt, d + kPageSize2M, &second), 0) << hugemm_last_error();
  EXPECT_EQ(second.refcount, base.refcount + 256);
  EXPECT_EQ(hugemm_unpin_range(rt, d, 2 * kPageSize2M, HUGEMM_GET, 0), 0) << hugemm_last_error();
  for (std::byte* p : {d, d + kPageSize2M}) {
    ASSERT_EQ(hugemm_folio_info_at(rt, p, &now), 0) << hugemm_last_error();
    EXPECT_EQ(now.refcount, base.refcount);
    EXPECT_EQ(now.pincount, base.pincount);
  }
  EXPECT_EQ(hugemm_free(rt, d), 0) << hugemm_last_error();
  hugemm_close(rt);
}

}  // namespace
}  // namespace hugemm
