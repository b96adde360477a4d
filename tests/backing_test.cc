// Memory sources on real huge pages: hugetlb and hugetlbfs at 2M and 1G, anon 4K, and
// the device-DAX rules on a fake sysfs tree with a stand-in file.
#include "hugemm/backing.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/kernel_check.h"
#include "hugemm/os.h"
#include "runtime/sys/pagemap.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using testing::FreeHugePages;
using ::testing::HasSubstr;
using testing::HugetlbfsMountFor;
using testing::TempDir;

// Writes a distinct byte into every 4K frame and reads all of them back.
void WriteAndCheck(const Extent& extent) {
  for (size_t off = 0; off < extent.size(); off += kPageSize4K) {
    extent.data()[off] = static_cast<std::byte>((off >> 12) * 7 + 1);
  }
  for (size_t off = 0; off < extent.size(); off += kPageSize4K) {
    ASSERT_EQ(extent.data()[off], static_cast<std::byte>((off >> 12) * 7 + 1)) << "offset " << off;
  }
}

void ExpectAgreesWithKernel(const Extent& extent) {
  absl::StatusOr<KernelCheck> check = CheckAgainstKernel(extent);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->kernel_page_size, extent.page_size());
  EXPECT_EQ(check->pages_checked, extent.page_count());
  EXPECT_TRUE(check->pfns_checked) << "tests run as root: pagemap must show PFNs";
  if (extent.page_size() > kPageSize4K) {
    EXPECT_TRUE(check->flags_checked) << "tests run as root: kpageflags must be readable";
  }
  for (const std::string& m : check->mismatches) ADD_FAILURE() << m;
}

class HugetlbTest : public ::testing::TestWithParam<size_t> {};

TEST_P(HugetlbTest, MapsWritesReadsAndMatchesTheKernel) {
  const size_t page = GetParam();
  const size_t pages = page == kPageSize1G ? 1 : 4;
  HUGEMM_NEED_HUGEPAGES(page, pages);
  const int64_t free_before = FreeHugePages(page);
  {
    auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = page});
    ASSERT_TRUE(backing.ok()) << backing.status();
    EXPECT_EQ((*backing)->Describe(), "hugetlb " + PageSizeName(page));
    absl::StatusOr<Extent> extent = (*backing)->Map({.length = pages * page});
    ASSERT_TRUE(extent.ok()) << extent.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(extent->data()) % page, 0u) << "VA not aligned";
    EXPECT_EQ(extent->page_count(), pages);
    EXPECT_EQ(extent->kind(), BackingKind::kHugetlb);
    // Prefaulted: the pool already gave us the pages. (Inequalities: the pool is the
    // whole machine's, and another process may take or return pages meanwhile.)
    EXPECT_LE(FreeHugePages(page), free_before - static_cast<int64_t>(pages));
    WriteAndCheck(*extent);
    ExpectAgreesWithKernel(*extent);
    for (size_t i = 0; i < pages; ++i) {
      EXPECT_NE(extent->pfn(i), kUnknownPfn);
      EXPECT_EQ(extent->pfn(i) % (page / kPageSize4K), 0u) << "head PFN not aligned";
    }
  }
  EXPECT_GE(FreeHugePages(page), free_before) << "unmap must give the pages back";
}

TEST_P(HugetlbTest, PlacesOnTheRequestedNode) {
  const size_t page = GetParam();
  HUGEMM_NEED_HUGEPAGES(page, 1);
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = page});
  ASSERT_TRUE(backing.ok()) << backing.status();
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = page, .node = 0});
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_EQ(extent->node(), 0);
  absl::StatusOr<int> node = Os::Default().NodeOfAddress(extent->data());
  ASSERT_TRUE(node.ok());
  EXPECT_EQ(*node, 0);
}

TEST_P(HugetlbTest, RefusesBadLengthsAndNodes) {
  const size_t page = GetParam();
  if (!hugemm::testing::KernelHasHugePageSize(page)) {
    GTEST_SKIP() << "this kernel has no " << PageSizeName(page) << " huge pages";
  }
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = page});
  ASSERT_TRUE(backing.ok()) << backing.status();
  absl::StatusOr<Extent> e = (*backing)->Map({.length = page + kPageSize4K});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("not a positive multiple"));
  EXPECT_THAT(e.status().message(), HasSubstr(PageSizeName(page)));
  e = (*backing)->Map({.length = 0});
  EXPECT_FALSE(e.ok());
  e = (*backing)->Map({.length = page, .node = 4000});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("node 4000"));
  e = (*backing)->Map({.length = page, .name = "x"});
  EXPECT_FALSE(e.ok());
}

INSTANTIATE_TEST_SUITE_P(PageSizes, HugetlbTest, ::testing::Values(kPageSize2M, kPageSize1G),
                         [](const auto& info) { return PageSizeName(info.param); });

TEST(Hugetlb, MoreOneGigPagesThanFreeIsAClearErrorAndTakesNothing) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize1G});
  ASSERT_TRUE(backing.ok()) << backing.status();
  const int64_t free_before = FreeHugePages(kPageSize1G);
  const size_t too_many = static_cast<size_t>(free_before) + 1;
  absl::StatusOr<Extent> e = (*backing)->Map({.length = too_many * kPageSize1G});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted) << e.status();
  EXPECT_THAT(e.status().message(), HasSubstr("hugetlb 1G"));
  EXPECT_THAT(e.status().message(), HasSubstr("ENOMEM"));
  EXPECT_THAT(e.status().message(), HasSubstr("free"));
  EXPECT_EQ(FreeHugePages(kPageSize1G), free_before);
}

TEST(Hugetlb, UnsupportedPageSizeIsRefused) {
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = 64 * 1024});
  ASSERT_FALSE(backing.ok());
  EXPECT_THAT(backing.status().message(), HasSubstr("64K not supported"));
}

// A prefault that fails (a pool emptied by someone else between mmap and fault) must
// leave nothing mapped and nothing reserved.
class FailingPopulateOs : public OsWrapper {
 public:
  FailingPopulateOs() : OsWrapper(Os::Default()) {}
  absl::Status Madvise(void* addr, size_t length, int advice) override {
    if (advice == 23 /* MADV_POPULATE_WRITE */) {
      return ErrnoStatus(ENOMEM, "madvise(MADV_POPULATE_WRITE)");
    }
    return OsWrapper::Madvise(addr, length, advice);
  }
  absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                             off_t offset) override {
    absl::StatusOr<void*> p = OsWrapper::Mmap(addr, length, prot, flags, fd, offset);
    if (p.ok() && (flags & MAP_FIXED)) last_fixed = *p;
    return p;
  }
  void* last_fixed = nullptr;
};

// An owner that keeps the PFNs elsewhere drops the extent's list: pfn() then says
// unknown, and the kernel check holds the kernel's frames against themselves.
TEST(Hugetlb, AnExtentWithoutItsPfnListIsStillChecked) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok()) << backing.status();
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(extent.ok()) << extent.status();
  extent->ForgetPfns();
  EXPECT_TRUE(extent->pfns().empty());
  EXPECT_FALSE(extent->pfns_known());
  EXPECT_EQ(extent->pfn(0), kUnknownPfn);
  EXPECT_EQ(extent->pfn(1), kUnknownPfn);
  ExpectAgreesWithKernel(*extent);
}

// A page dropped from under the extent (MADV_DONTNEED) is named, not taken for one whose
// PFN the kernel hides (which only device-DAX has).
TEST(Hugetlb, APageDroppedFromTheExtentIsNamed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok()) << backing.status();
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(extent.ok()) << extent.status();
  ASSERT_EQ(::madvise(extent->data() + kPageSize2M, kPageSize2M, MADV_DONTNEED), 0);
  absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*extent);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->pfns_hidden, 0u);
  ASSERT_EQ(check->mismatches.size(), 1u);
  EXPECT_THAT(check->mismatches[0],
              HasSubstr(absl::StrFormat("%p: PFN recorded 0x%x, pagemap shows no page",
                                        extent->data() + kPageSize2M, extent->pfn(1))));
  // Without the PFN list the kernel's own frames are all there is to check: still named.
  extent->ForgetPfns();
  check = CheckAgainstKernel(*extent);
  ASSERT_TRUE(check.ok()) << check.status();
  ASSERT_EQ(check->mismatches.size(), 1u);
  EXPECT_EQ(check->mismatches[0],
            absl::StrFormat("%p: pagemap shows no page (the kernel dropped it)",
                            extent->data() + kPageSize2M));
}

TEST(Hugetlb, FailedPrefaultUnwindsEverything) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  FailingPopulateOs failing;
  auto backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize2M, .os = &failing});
  ASSERT_TRUE(backing.ok()) << backing.status();
  const int64_t free_before = FreeHugePages(kPageSize2M);
  {
    absl::StatusOr<Extent> e = (*backing)->Map({.length = 2 * kPageSize2M});
    ASSERT_FALSE(e.ok());
    EXPECT_THAT(e.status().message(), HasSubstr("prefault"));
    EXPECT_THAT(e.status().message(), HasSubstr("ENOMEM"));
  }
  ASSERT_NE(failing.last_fixed, nullptr);
  EXPECT_FALSE(sys::KernelPageSizeAt(Os::Default(), failing.last_fixed).ok())
      << "mapping left behind";
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before) << "reservation left behind";
}

TEST(Hugetlb, ChildOfForkDoesNotInheritTheMapping) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok());
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = kPageSize2M});
  ASSERT_TRUE(extent.ok()) << extent.status();
  void* addr = extent->data();
  // The kernel's record of MADV_DONTFORK: "dc" in the VMA's flags.
  absl::StatusOr<std::vector<sys::Vma>> vmas = sys::ReadVmas(Os::Default());
  ASSERT_TRUE(vmas.ok()) << vmas.status();
  const sys::Vma* vma = sys::FindVma(*vmas, reinterpret_cast<uintptr_t>(addr));
  ASSERT_NE(vma, nullptr);
  EXPECT_THAT(vma->flags, HasSubstr("dc")) << "VmFlags: " << vma->flags;
#if !defined(__SANITIZE_THREAD__)
  // And what it means: a child does not have the range at all, so msync finds no
  // mapping (ENOMEM). Only a raw system call there: the child of a threaded process.
  // (Not under ThreadSanitizer, whose fork keeps such ranges in the child on GCC 12.)
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) _exit(msync(addr, kPageSize4K, MS_ASYNC) == 0 ? 1 : 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "child sees the DMA range (wait status " << status << ")";
#endif
}

class HugetlbfsTest : public ::testing::TestWithParam<size_t> {};

TEST_P(HugetlbfsTest, MapsAFileInTheMount) {
  const size_t page = GetParam();
  HUGEMM_NEED_HUGEPAGES(page, 1);
  const std::string mount = HugetlbfsMountFor(page);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with " << PageSizeName(page) << " pages");
  const int64_t free_before = FreeHugePages(page);
  {
    auto backing = Backing::Create({.kind = BackingKind::kHugetlbfs, .page_size = page});
    ASSERT_TRUE(backing.ok()) << backing.status();
    EXPECT_THAT((*backing)->Describe(), HasSubstr(mount));
    absl::StatusOr<Extent> extent = (*backing)->Map({.length = page});
    ASSERT_TRUE(extent.ok()) << extent.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(extent->data()) % page, 0u);
    WriteAndCheck(*extent);
    ExpectAgreesWithKernel(*extent);
    // The private file was unlinked at once: nothing of ours is left in the mount.
    for (const auto& entry : std::filesystem::directory_iterator(mount)) {
      EXPECT_FALSE(
          entry.path().filename().string().starts_with(".hugemm-" + std::to_string(getpid())))
          << entry.path();
    }
  }
  EXPECT_GE(FreeHugePages(page), free_before) << "unmap must give the pages back";
}

INSTANTIATE_TEST_SUITE_P(PageSizes, HugetlbfsTest, ::testing::Values(kPageSize2M, kPageSize1G),
                         [](const auto& info) { return PageSizeName(info.param); });

TEST(Hugetlbfs, NamedFileIsPrivateToItsUserAndSharedWithASecondProcess) {
  const std::string mount = HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const std::string name = "hugemm-test-shared-" + std::to_string(getpid());
  const std::string path = mount + "/" + name;
  auto backing = Backing::Create({.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok()) << backing.status();
  {
    absl::StatusOr<Extent> extent = (*backing)->Map({.length = kPageSize2M, .name = name});
    ASSERT_TRUE(extent.ok()) << extent.status();
    std::memcpy(extent->data() + 12345, "hello from the parent", 22);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);

    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // A second process: opens the same file by name, sees the parent's data, answers.
      auto b = Backing::Create({.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M});
      if (!b.ok()) _exit(2);
      absl::StatusOr<Extent> e = (*b)->Map({.length = kPageSize2M, .name = name});
      if (!e.ok()) _exit(3);
      if (std::memcmp(e->data() + 12345, "hello from the parent", 22) != 0) _exit(4);
      std::memcpy(e->data() + 99, "child", 6);
      _exit(0);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_EQ(std::memcmp(extent->data() + 99, "child", 6), 0);
  }
  EXPECT_TRUE(std::filesystem::exists(path)) << "a named file outlives its mapping";
  std::filesystem::remove(path);
}

// Offsets into a named file map its pages where they are (the same frames, the same
// data); a range past the end grows the file; a private mapping starts from the file's
// data on frames of its own, and its writes stay its own.
TEST(Hugetlbfs, NamedFileOffsetsShareFramesAndPrivateMappingsCopy) {
  const std::string mount = HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 5);
  const std::string name = "hugemm-test-offsets-" + std::to_string(getpid());
  const std::string path = mount + "/" + name;
  auto backing = Backing::Create({.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok()) << backing.status();
  {
    absl::StatusOr<Extent> whole = (*backing)->Map({.length = 2 * kPageSize2M, .name = name});
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_TRUE(whole->created_file());
    EXPECT_EQ((*backing)->FilePath(name), path);
    ASSERT_TRUE(whole->pfns_known());
    whole->data()[0] = std::byte{'A'};
    whole->data()[kPageSize2M] = std::byte{'B'};

    absl::StatusOr<Extent> second =
        (*backing)->Map({.length = kPageSize2M, .offset = kPageSize2M, .name = name});
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_FALSE(second->created_file()) << "opened, not created";
    EXPECT_EQ(second->offset(), kPageSize2M);
    EXPECT_EQ(second->pfn(0), whole->pfn(1));
    EXPECT_EQ(second->data()[0], std::byte{'B'});

    absl::StatusOr<Extent> past =
        (*backing)->Map({.length = kPageSize2M, .offset = 3 * kPageSize2M, .name = name});
    ASSERT_TRUE(past.ok()) << past.status();
    EXPECT_EQ(std::filesystem::file_size(path), 4 * kPageSize2M);

    absl::StatusOr<Extent> copy =
        (*backing)->Map({.length = kPageSize2M, .shared = false, .name = name});
    ASSERT_TRUE(copy.ok()) << copy.status();
    EXPECT_EQ(copy->data()[0], std::byte{'A'});
    EXPECT_NE(copy->pfn(0), whole->pfn(0));
    copy->data()[0] = std::byte{'P'};
    EXPECT_EQ(whole->data()[0], std::byte{'A'}) << "a private write reached the file";
  }
  EXPECT_TRUE(std::filesystem::exists(path)) << "a named file outlives its mappings";
  std::filesystem::remove(path);
}

TEST(Hugetlbfs, RejectsBadNamesOffsetsAndMounts) {
  const std::string mount = HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  auto backing = Backing::Create({.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M});
  ASSERT_TRUE(backing.ok());
  EXPECT_FALSE((*backing)->Map({.length = kPageSize2M, .name = "../etc/x"}).ok());
  absl::StatusOr<Extent> e =
      (*backing)->Map({.length = kPageSize2M, .offset = 4096, .name = "hugemm-bad-offset"});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("offset 4096"));
  // A NUL would end the name the kernel sees early, at another file than FilePath names:
  // refused, and nothing created.
  const std::string with_nul("hugemm-nul\0tail", 15);
  e = (*backing)->Map({.length = kPageSize2M, .name = with_nul});
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << e.status();
  EXPECT_FALSE(std::filesystem::exists(mount + "/hugemm-nul"));
  // An end past the largest file size, or one that wraps 2^64: refused as such, before
  // any file is made (no ftruncate to a negative size, no pool counts that mean nothing).
  for (uint64_t offset : {uint64_t{1} << 63, ~uint64_t{0} - (uint64_t{1} << 30) + 1,
                          (uint64_t{1} << 63) - kPageSize2M}) {
    e = (*backing)->Map({.length = kPageSize2M, .offset = offset, .name = "hugemm-far"});
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument) << offset << e.status();
    EXPECT_THAT(e.status().message(), HasSubstr("past the largest file size")) << offset;
    EXPECT_FALSE(std::filesystem::exists(mount + "/hugemm-far")) << offset;
  }
  // A directory or a FIFO another program made in the mount: refused, and left there.
  const std::string dir = mount + "/hugemm-test-dir-" + std::to_string(getpid());
  const std::string fifo = mount + "/hugemm-test-fifo-" + std::to_string(getpid());
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0) << dir;
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0) << fifo;
  for (const std::string& path : {dir, fifo}) {
    const std::string name = path.substr(mount.size() + 1);
    absl::StatusOr<Extent> odd = (*backing)->Map({.length = kPageSize2M, .name = name});
    EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument) << odd.status();
    EXPECT_THAT(odd.status().message(), HasSubstr(path)) << odd.status();
    EXPECT_THAT(odd.status().message(), ::testing::AnyOf(HasSubstr("is a directory, not a file"),
                                                         HasSubstr("not a regular file")))
        << odd.status();
    EXPECT_TRUE(std::filesystem::exists(path)) << path;
  }
  std::filesystem::remove(dir);
  std::filesystem::remove(fifo);
  auto wrong = Backing::Create(
      {.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M, .hugetlbfs_mount = "/tmp"});
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(), HasSubstr("/tmp is not a hugetlbfs mount"));
  // The mount however it is spelled (a trailing slash, a doubled one, a "."), named from
  // then on as /proc/mounts names it.
  for (const std::string& spelled : {mount + "/", mount + "//", mount + "/.", "/." + mount}) {
    auto same = Backing::Create(
        {.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M, .hugetlbfs_mount = spelled});
    ASSERT_TRUE(same.ok()) << spelled << ": " << same.status();
    EXPECT_EQ((*same)->FilePath("x"), mount + "/x") << spelled;
  }
}

// A mount limited by size= fills up while the kernel's pool still has pages: the refusal
// is ResourceExhausted and names the mount's limit (the pool's counts alone would say
// there is plenty), a named file the call created is gone again, and what fits maps.
TEST(Hugetlbfs, AFullMountNamesItsSizeLimitAndLeavesNothing) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int code = testing::RunWithSmallHugetlbfs(4 * kPageSize2M, [](const std::string& mount) {
    auto backing = Backing::Create(
        {.kind = BackingKind::kHugetlbfs, .page_size = kPageSize2M, .hugetlbfs_mount = mount});
    if (!backing.ok()) return 2;
    absl::StatusOr<Extent> first = (*backing)->Map({.length = 2 * kPageSize2M});
    if (!first.ok()) return 3;
    // 4M left of 8M: 6M is refused, for a private file and a named one alike.
    for (const std::string name : {"", "hugemm-full"}) {
      absl::StatusOr<Extent> over = (*backing)->Map({.length = 3 * kPageSize2M, .name = name});
      if (over.ok() || over.status().code() != absl::StatusCode::kResourceExhausted) return 4;
      const std::string msg(over.status().message());
      if (msg.find(mount + " holds at most 8 MiB") == std::string::npos ||
          msg.find("size=") == std::string::npos) {
        std::fprintf(stderr, "message: %s\n", msg.c_str());
        return 5;
      }
    }
    if (!std::filesystem::is_empty(mount)) return 6;
    absl::StatusOr<Extent> rest = (*backing)->Map({.length = 2 * kPageSize2M});
    return rest.ok() ? 0 : 7;
  });
  HUGEMM_NEED(code != testing::kCannotMount, "needs to mount a hugetlbfs (root)");
  EXPECT_EQ(code, 0) << "2, 3, 7: a map that fits was refused; 4: not ResourceExhausted; "
                        "5: the message does not name the limit; 6: a file was left";
}

TEST(Anon, FallsBackToFourKPages) {
  auto backing = Backing::Create({.kind = BackingKind::kAnon});
  ASSERT_TRUE(backing.ok()) << backing.status();
  EXPECT_EQ((*backing)->page_size(), kPageSize4K);
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = 64 * kPageSize4K});
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_EQ(extent->page_count(), 64u);
  WriteAndCheck(*extent);
  ExpectAgreesWithKernel(*extent);
  EXPECT_FALSE(Backing::Create({.kind = BackingKind::kAnon, .page_size = kPageSize2M}).ok());
}

// A length that, with its alignment, passes the end of the address space is refused
// before anything is reserved: the reservation's size would wrap to a few MiB, and
// trimming it to the alignment would unmap whatever lies beyond it.
TEST(Anon, LengthThatWrapsWithItsAlignmentIsRefused) {
  auto backing = Backing::Create({.kind = BackingKind::kAnon});
  ASSERT_TRUE(backing.ok()) << backing.status();
  // A 4 MiB hole 4K past an 8 MiB boundary, with memory of ours right above it: where a
  // 4 MiB reservation lands, and what a trim to 8 MiB would take.
  constexpr size_t kMiB = size_t{1} << 20;
  void* region =
      mmap(nullptr, 24 * kMiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(region, MAP_FAILED);
  const uintptr_t hole =
      ((reinterpret_cast<uintptr_t>(region) + 8 * kMiB - 1) & ~(8 * kMiB - 1)) + kPageSize4K;
  ASSERT_EQ(munmap(reinterpret_cast<void*>(hole), 4 * kMiB), 0);
  absl::StatusOr<Extent> extent =
      (*backing)->Map({.length = ~size_t{0} - 4 * kMiB + 1, .align = 8 * kMiB});
  ASSERT_FALSE(extent.ok());
  EXPECT_EQ(extent.status().code(), absl::StatusCode::kInvalidArgument) << extent.status();
  EXPECT_THAT(extent.status().message(), HasSubstr("passes the end of the 47-bit user address"));
  unsigned char resident = 0;
  for (uintptr_t p = hole + 4 * kMiB; p < hole + 8 * kMiB; p += kPageSize4K) {
    ASSERT_EQ(mincore(reinterpret_cast<void*>(p), kPageSize4K, &resident), 0)
        << "0x" << std::hex << p << " was unmapped";
  }
  ASSERT_EQ(munmap(region, 24 * kMiB), 0);
}

// A length or an alignment beyond the user address space is as bad a request, not a
// shortage: mmap would answer ENOMEM (ResourceExhausted) where the caller asked for
// something no process can have.
TEST(Anon, AlignmentBeyondTheUserAddressSpaceIsABadRequest) {
  auto backing = Backing::Create({.kind = BackingKind::kAnon});
  ASSERT_TRUE(backing.ok()) << backing.status();
  for (const auto& [length, align] :
       {std::pair{kPageSize2M, size_t{1} << 63}, std::pair{size_t{1} << 47, size_t{0}},
        std::pair{(size_t{1} << 47) - kPageSize2M, kPageSize2M}}) {
    absl::StatusOr<Extent> extent = (*backing)->Map({.length = length, .align = align});
    EXPECT_EQ(extent.status().code(), absl::StatusCode::kInvalidArgument)
        << length << " aligned to " << align << ": " << extent.status();
  }
}

// --- device-DAX on a fake sysfs tree -------------------------------------------------

void MakeFakeDax(const TempDir& dir, const std::string& name, uint64_t size, uint64_t align,
                 int node) {
  const std::string base = "sys/bus/dax/devices/" + name + "/";
  dir.WriteFile(base + "size", std::to_string(size) + "\n");
  dir.WriteFile(base + "align", std::to_string(align) + "\n");
  dir.WriteFile(base + "numa_node", std::to_string(node) + "\n");
}

TEST(DevDaxDiscovery, ReadsSizeAlignAndNodeAtBothAlignments) {
  TempDir dir;
  MakeFakeDax(dir, "dax0.0", 8 * kPageSize2M, kPageSize2M, 0);
  MakeFakeDax(dir, "dax1.0", 4 * kPageSize1G, kPageSize1G, 1);
  const std::string root = dir.path() + "/sys";
  absl::StatusOr<DaxDeviceInfo> d0 = ReadDaxDevice("/dev/dax0.0", root);
  ASSERT_TRUE(d0.ok()) << d0.status();
  EXPECT_EQ(d0->name, "dax0.0");
  EXPECT_EQ(d0->path, "/dev/dax0.0");
  EXPECT_EQ(d0->size, 8 * kPageSize2M);
  EXPECT_EQ(d0->align, kPageSize2M);
  EXPECT_EQ(d0->numa_node, 0);
  absl::StatusOr<DaxDeviceInfo> d1 = ReadDaxDevice("dax1.0", root);
  ASSERT_TRUE(d1.ok()) << d1.status();
  EXPECT_EQ(d1->align, kPageSize1G);
  EXPECT_EQ(d1->numa_node, 1);
  absl::StatusOr<std::vector<DaxDeviceInfo>> all = ListDaxDevices(root);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[1].size, 4 * kPageSize1G);
}

TEST(DevDaxDiscovery, MissingOrGarbledFilesAreNamed) {
  TempDir dir;
  const std::string root = dir.path() + "/sys";
  absl::StatusOr<DaxDeviceInfo> none = ReadDaxDevice("dax9.9", root);
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("bus/dax/devices/dax9.9"));

  dir.WriteFile("sys/bus/dax/devices/dax0.0/size", "4194304\n");
  dir.WriteFile("sys/bus/dax/devices/dax0.0/numa_node", "0\n");
  absl::StatusOr<DaxDeviceInfo> no_align = ReadDaxDevice("dax0.0", root);
  ASSERT_FALSE(no_align.ok());
  EXPECT_THAT(no_align.status().message(), HasSubstr("dax0.0/align"));

  dir.WriteFile("sys/bus/dax/devices/dax0.0/align", "two megabytes\n");
  absl::StatusOr<DaxDeviceInfo> garbled = ReadDaxDevice("dax0.0", root);
  ASSERT_FALSE(garbled.ok());
  EXPECT_THAT(garbled.status().message(), HasSubstr("garbled"));
  EXPECT_THAT(garbled.status().message(), HasSubstr("dax0.0/align"));

  dir.WriteFile("sys/bus/dax/devices/dax0.0/align", "3000\n");
  EXPECT_THAT(ReadDaxDevice("dax0.0", root).status().message(), HasSubstr("power of two"));

  dir.WriteFile("sys/bus/dax/devices/dax0.0/align", "2097152\n");
  dir.WriteFile("sys/bus/dax/devices/dax0.0/size", "3145728\n");  // 1.5 alignment units
  EXPECT_THAT(ReadDaxDevice("dax0.0", root).status().message(), HasSubstr("dax0.0/size"));
  EXPECT_FALSE(ListDaxDevices(root).ok()) << "a garbled device fails the listing";
}

// A region's seed device reads size 0 until daxctl gives it capacity: a device with
// nothing to map, not a garbled one, so it neither fails the listing of the others nor
// opens.
TEST(DevDaxDiscovery, AnEmptySeedDeviceIsNotListedAndSaysWhy) {
  TempDir dir;
  const std::string root = dir.path() + "/sys";
  MakeFakeDax(dir, "dax0.0", 8 * kPageSize2M, kPageSize2M, 0);
  dir.WriteFile("sys/bus/dax/devices/dax1.0/size", "0\n");
  dir.WriteFile("sys/bus/dax/devices/dax1.0/align", "2097152\n");
  dir.WriteFile("sys/bus/dax/devices/dax1.0/numa_node", "0\n");
  absl::StatusOr<std::vector<DaxDeviceInfo>> all = ListDaxDevices(root);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].name, "dax0.0");
  absl::StatusOr<DaxDeviceInfo> seed = ReadDaxDevice("dax1.0", root);
  ASSERT_FALSE(seed.ok());
  EXPECT_EQ(seed.status().code(), absl::StatusCode::kNotFound) << seed.status();
  EXPECT_THAT(seed.status().message(), HasSubstr("no capacity"));
  EXPECT_THAT(seed.status().message(), HasSubstr("daxctl create-device"));
}

// The mapping rules, with a regular file standing in for the character device (what
// cannot exist here); the real device runs the same paths in the VM tests.
class DevDaxRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeFakeDax(dir_, "dax0.0", kSize, kPageSize2M, 0);
    stand_in_ = dir_.path() + "/dax0.0";
    std::ofstream(stand_in_).close();
    std::filesystem::resize_file(stand_in_, kSize);
    auto backing = Backing::Create({.kind = BackingKind::kDevDax,
                                    .devdax_path = stand_in_,
                                    .sysfs_root = dir_.path() + "/sys"});
    ASSERT_TRUE(backing.ok()) << backing.status();
    backing_ = *backing;
  }

  static constexpr uint64_t kSize = 8 * kPageSize2M;
  TempDir dir_;
  std::string stand_in_;
  std::shared_ptr<Backing> backing_;
};

TEST_F(DevDaxRulesTest, TakesItsPageSizeAndNodeFromTheDevice) {
  EXPECT_EQ(backing_->page_size(), kPageSize2M);
  EXPECT_THAT(backing_->Describe(), HasSubstr("align 2M"));
  absl::StatusOr<Extent> e = backing_->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->node(), 0);
  EXPECT_EQ(e->offset(), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(e->data()) % kPageSize2M, 0u);
  WriteAndCheck(*e);
  auto wrong_size = Backing::Create({.kind = BackingKind::kDevDax,
                                     .page_size = kPageSize1G,
                                     .devdax_path = stand_in_,
                                     .sysfs_root = dir_.path() + "/sys"});
  ASSERT_FALSE(wrong_size.ok());
  EXPECT_THAT(wrong_size.status().message(), HasSubstr("alignment 2M, not 1G"));
}

TEST_F(DevDaxRulesTest, RefusesPrivateMappings) {
  absl::StatusOr<Extent> e = backing_->Map({.length = kPageSize2M, .shared = false});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("MAP_SHARED"));
}

TEST_F(DevDaxRulesTest, RefusesMisalignedOffsetsAndLengths) {
  absl::StatusOr<Extent> e = backing_->Map({.length = kPageSize2M, .offset = kPageSize4K});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("not a multiple of the device alignment 2M"));
  e = backing_->Map({.length = kPageSize2M + kPageSize4K});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("not a positive multiple of the 2M"));
  e = backing_->Map({.length = 2 * kPageSize2M, .offset = kSize - kPageSize2M});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kOutOfRange);
  e = backing_->Map({.length = kPageSize2M, .node = 3});
  EXPECT_FALSE(e.ok());
}

TEST_F(DevDaxRulesTest, CarvesFreeRangesAndGivesThemBack) {
  absl::StatusOr<Extent> a = backing_->Map({.length = 2 * kPageSize2M});
  absl::StatusOr<Extent> b = backing_->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->offset(), 0u);
  EXPECT_EQ(b->offset(), 2 * kPageSize2M);
  // Two live extents never share device memory.
  absl::StatusOr<Extent> overlap = backing_->Map({.length = kPageSize2M, .offset = kPageSize2M});
  ASSERT_FALSE(overlap.ok());
  EXPECT_EQ(overlap.status().code(), absl::StatusCode::kAlreadyExists);
  // What is mapped is the device at that offset.
  std::memcpy(b->data(), "dax!", 4);
  char buf[4];
  std::ifstream(stand_in_).seekg(2 * kPageSize2M).read(buf, 4);
  EXPECT_EQ(std::memcmp(buf, "dax!", 4), 0);
  absl::StatusOr<Extent> too_big = backing_->Map({.length = 6 * kPageSize2M});
  ASSERT_FALSE(too_big.ok());
  EXPECT_THAT(too_big.status().message(), HasSubstr("largest free: 8 MiB"));
  *a = Extent();  // unmapped: its range is free again and merges with the rest
  absl::StatusOr<Extent> again = backing_->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->offset(), 0u);
  b->Unmap().IgnoreError();
  again->Unmap().IgnoreError();
  EXPECT_TRUE(backing_->Map({.length = kSize}).ok()) << "free ranges did not merge back";
}

TEST(DevDax, NeedsADeviceThatSysfsDescribes) {
  auto none = Backing::Create({.kind = BackingKind::kDevDax});
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("device path"));
  TempDir dir;
  auto missing = Backing::Create(
      {.kind = BackingKind::kDevDax, .devdax_path = "/dev/dax7.7", .sysfs_root = dir.path()});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("/dev/dax7.7"));
}

// A device's size is rarely round (2014 MiB for the VM's 2M namespace): a range that does
// not fit says by how much, in bytes where the rounded sizes would read the same.
TEST(DevDax, ARangeThatDoesNotFitNamesTheSizesExactly) {
  TempDir dir;
  constexpr uint64_t kPages = 1007;
  MakeFakeDax(dir, "dax0.0", kPages * kPageSize2M, kPageSize2M, 0);
  const std::string stand_in = dir.path() + "/dax0.0";
  std::ofstream(stand_in).close();
  std::filesystem::resize_file(stand_in, kPages * kPageSize2M);  // sparse
  auto backing = Backing::Create(
      {.kind = BackingKind::kDevDax, .devdax_path = stand_in, .sysfs_root = dir.path() + "/sys"});
  ASSERT_TRUE(backing.ok()) << backing.status();
  absl::StatusOr<Extent> too_big = (*backing)->Map({.length = (kPages + 1) * kPageSize2M});
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_big.status().message(),
              HasSubstr("is more than " + stand_in + " holds (2.0 GiB (2111832064 bytes))"));
  absl::StatusOr<Extent> one = (*backing)->Map({.length = kPageSize2M});
  ASSERT_TRUE(one.ok()) << one.status();
  absl::StatusOr<Extent> all = (*backing)->Map({.length = kPages * kPageSize2M});
  ASSERT_FALSE(all.ok());
  EXPECT_EQ(all.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(all.status().message(), HasSubstr("no free range of 2.0 GiB (2111832064 bytes)"));
  EXPECT_THAT(all.status().message(), HasSubstr("largest free: 2.0 GiB (2109734912 bytes)"));
}

// When sysfs numbers the device (<dir>/dev), only that character device is mapped: a
// regular file, a directory or another device carrying the name is not device memory.
TEST(DevDax, RefusesAPathThatIsNotTheDeviceSysfsNumbers) {
  TempDir dir;
  MakeFakeDax(dir, "dax0.0", 4 * kPageSize2M, kPageSize2M, 0);
  dir.WriteFile("sys/bus/dax/devices/dax0.0/dev", "252:0\n");
  const std::string sysfs = dir.path() + "/sys";
  auto create = [&](const std::string& path) {
    return Backing::Create(
        {.kind = BackingKind::kDevDax, .devdax_path = path, .sysfs_root = sysfs});
  };
  TempDir file_dir;
  const std::string file = file_dir.path() + "/dax0.0";
  std::ofstream(file).close();
  std::filesystem::resize_file(file, 4 * kPageSize2M);
  auto regular = create(file);
  ASSERT_FALSE(regular.ok()) << "a regular file was taken for the device";
  EXPECT_EQ(regular.status().code(), absl::StatusCode::kNotFound) << regular.status();
  EXPECT_THAT(regular.status().message(), HasSubstr("regular file"));
  EXPECT_THAT(regular.status().message(), HasSubstr("252:0"));

  TempDir link_dir;
  std::filesystem::create_symlink("/dev/null", link_dir.path() + "/dax0.0");
  auto other = create(link_dir.path() + "/dax0.0");
  ASSERT_FALSE(other.ok()) << "/dev/null was taken for the device";
  EXPECT_EQ(other.status().code(), absl::StatusCode::kNotFound) << other.status();
  EXPECT_THAT(other.status().message(), HasSubstr("character device 1:3"));

  TempDir parent;
  std::filesystem::create_directory(parent.path() + "/dax0.0");
  auto directory = create(parent.path() + "/dax0.0");
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kNotFound) << directory.status();
  EXPECT_THAT(directory.status().message(), HasSubstr("is a directory"));

  dir.WriteFile("sys/bus/dax/devices/dax0.0/dev", "two fifty two\n");
  auto garbled = create(file);
  ASSERT_FALSE(garbled.ok());
  EXPECT_THAT(garbled.status().message(), HasSubstr("garbled"));
}

TEST(BackingKind, NamesRoundTrip) {
  for (BackingKind k :
       {BackingKind::kHugetlb, BackingKind::kHugetlbfs, BackingKind::kDevDax, BackingKind::kAnon}) {
    EXPECT_EQ(*ParseBackingKind(BackingKindName(k)), k);
  }
  EXPECT_THAT(ParseBackingKind("thp").status().message(), HasSubstr("unknown backing \"thp\""));
}

TEST(PageSize, ParsesAndNames) {
  EXPECT_EQ(*ParsePageSize("2M"), kPageSize2M);
  EXPECT_EQ(*ParsePageSize("1g"), kPageSize1G);
  EXPECT_EQ(*ParsePageSize("2048kB"), kPageSize2M);
  EXPECT_EQ(*ParsePageSize("4096"), kPageSize4K);
  EXPECT_FALSE(ParsePageSize("3M").ok());
  EXPECT_FALSE(ParsePageSize("2X").ok());
  EXPECT_FALSE(ParsePageSize("").ok());
  EXPECT_FALSE(ParsePageSize("99999999999999999999G").ok());
  EXPECT_EQ(PageSizeName(kPageSize1G), "1G");
  EXPECT_EQ(PageOrder(kPageSize2M), 9);
  EXPECT_EQ(HumanBytes(3 * kPageSize1G), "3 GiB");
}

TEST(PageSize, EveryNameParsesBack) {
  for (int shift = kPageShift; shift < 63; ++shift) {
    const size_t size = size_t{1} << shift;
    absl::StatusOr<size_t> parsed = ParsePageSize(PageSizeName(size));
    ASSERT_TRUE(parsed.ok()) << PageSizeName(size) << ": " << parsed.status();
    EXPECT_EQ(*parsed, size) << PageSizeName(size);
  }
  EXPECT_EQ(PageSizeName(size_t{1} << 40), "1T");
}

TEST(PageSize, HumanBytesNeverShows1024OfAUnit) {
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes((uint64_t{1} << 20) - 1), "1.0 MiB");
  EXPECT_EQ(HumanBytes((uint64_t{1} << 30) - 1), "1.0 GiB");
  EXPECT_EQ(HumanBytes((uint64_t{1} << 20) - 52), "1023.9 KiB");
  EXPECT_EQ(HumanBytes(uint64_t{5} << 40), "5 TiB");
  EXPECT_EQ(HumanBytes(uint64_t{3} << 50), "3 PiB");
  EXPECT_EQ(HumanBytes(~uint64_t{0}), "16.0 EiB");
}

}  // namespace
}  // namespace hugemm
