// Memory sources on the fake machine (tests/fake_os.h): the logic of every kind without
// root or huge pages. Pools move, nodes are honoured, files are cleaned up, PFNs come
// from pagemap or sysfs. The same kinds on real memory: backing_test.cc.
#include <fcntl.h>
#include <sys/stat.h>

#include <cstring>
#include <map>
#include <string>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "hugemm/kernel_check.h"
#include "hugemm/system_info.h"
#include "tests/fake_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::shared_ptr<Backing> MakeBacking(Os& os, BackingKind kind, size_t page_size = 0,
                                     std::string devdax_path = "") {
  absl::StatusOr<std::shared_ptr<Backing>> b = Backing::Create(
      {.kind = kind, .page_size = page_size, .devdax_path = devdax_path, .os = &os});
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : nullptr;
}

void ExpectNothingLeft(const FakeOs& os) {
  EXPECT_EQ(os.live_mappings(), 0u);
  EXPECT_EQ(os.open_fds(), 0u);
  EXPECT_EQ(os.pinned_bytes(), 0u);
}

class HugetlbOnFakeTest : public ::testing::TestWithParam<size_t> {};

TEST_P(HugetlbOnFakeTest, TakesPagesFromThePoolAndGivesThemBack) {
  const size_t page = GetParam();
  FakeOs os;
  const int64_t free_before = os.Pool(page).free;
  {
    std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlb, page);
    ASSERT_NE(backing, nullptr);
    EXPECT_EQ(&backing->os(), &os);
    absl::StatusOr<Extent> extent = backing->Map({.length = 2 * page});
    ASSERT_TRUE(extent.ok()) << extent.status();
    EXPECT_EQ(os.Pool(page).free, free_before - 2);
    EXPECT_EQ(os.Pool(page).resv, 0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(extent->data()) % page, 0u);
    for (size_t i = 0; i < 2; ++i) {
      ASSERT_NE(extent->pfn(i), kUnknownPfn);
      EXPECT_EQ(extent->pfn(i) % (page / kPageSize4K), 0u);
    }
    std::memcpy(extent->data() + page + 99, "fake", 4);
    EXPECT_EQ(std::memcmp(extent->data() + page + 99, "fake", 4), 0);
    absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*extent);
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_EQ(check->kernel_page_size, page);
    EXPECT_TRUE(check->pfns_checked);
    EXPECT_TRUE(check->flags_checked);
    EXPECT_TRUE(check->ok()) << check->mismatches.front();
  }
  EXPECT_EQ(os.Pool(page).free, free_before);
  ExpectNothingLeft(os);
}

INSTANTIATE_TEST_SUITE_P(PageSizes, HugetlbOnFakeTest, ::testing::Values(kPageSize2M, kPageSize1G),
                         [](const auto& info) { return PageSizeName(info.param); });

TEST(HugetlbOnFake, AShortageNamesThePoolAndTakesNothing) {
  FakeOs os({.pools = {{kPageSize2M, 2}}});
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlb);
  absl::StatusOr<Extent> e = backing->Map({.length = 3 * kPageSize2M});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoOf(e.status()), ENOMEM);
  EXPECT_THAT(e.status().message(), HasSubstr("hugetlb 2M: map 6 MiB: mmap"));
  EXPECT_THAT(e.status().message(), ::testing::Not(HasSubstr("mmap: mmap")))
      << "the step the OS's message names, named twice";
  EXPECT_THAT(e.status().message(), HasSubstr("(2M pool: 2 free, 0 reserved, of 2)"));
  EXPECT_EQ(os.Pool(kPageSize2M).free, 2);
  EXPECT_EQ(os.Pool(kPageSize2M).resv, 0);
  ExpectNothingLeft(os);
  EXPECT_EQ(Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize1G, .os = &os})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument)
      << "this machine has no 1G pool";
}

TEST(HugetlbOnFake, PlacesOnTheRequestedNodeOrReportsTheSpread) {
  FakeOs os({.nodes = 2, .pools = {{kPageSize2M, 2}}});
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlb);
  {
    absl::StatusOr<Extent> e = backing->Map({.length = kPageSize2M, .node = 1});
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->node(), 1);
    EXPECT_EQ(os.Pool(kPageSize2M).nodes[1].free, 1);
    // Node 0 has two pages, node 1 one: three unbound pages spread over both.
    absl::StatusOr<Extent> spread = backing->Map({.length = 3 * kPageSize2M});
    ASSERT_TRUE(spread.ok()) << spread.status();
    EXPECT_EQ(spread->node(), -1);
  }
  absl::StatusOr<Extent> offline = backing->Map({.length = kPageSize2M, .node = 2});
  ASSERT_FALSE(offline.ok());
  EXPECT_THAT(offline.status().message(), HasSubstr("NUMA node 2 is not online"));
  ExpectNothingLeft(os);
}

// A node without free pages of the size is exhaustion (the kernel says EFAULT there, not
// ENOMEM), and the error gives that node's counts, not the machine's.
TEST(HugetlbOnFake, AnEmptyNodeIsExhaustionNamingTheNodesCounts) {
  FakeOs os({.nodes = 2, .pools = {{kPageSize2M, 2}}});
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlb);
  absl::StatusOr<Extent> e = backing->Map({.length = 3 * kPageSize2M, .node = 1});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted) << e.status();
  EXPECT_THAT(e.status().message(), HasSubstr("(2M pool on node 1: 0 free of 2)"));
  EXPECT_EQ(os.Pool(kPageSize2M).nodes[1].free, 2) << "the pages it took are back";
  ExpectNothingLeft(os);
}

TEST(HugetlbfsOnFake, PrivateFilesLeaveNothingAndNamedOnesAreShared) {
  FakeOs os;
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlbfs);
  EXPECT_EQ(backing->Describe(), "hugetlbfs 2M at /fake/hugepages");
  {
    absl::StatusOr<Extent> e = backing->Map({.length = kPageSize2M});
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_TRUE(os.FilesIn("/fake/hugepages").empty()) << "unlinked at once";
    absl::StatusOr<Extent> named = backing->Map({.length = kPageSize2M, .name = "shared"});
    ASSERT_TRUE(named.ok()) << named.status();
    std::memcpy(named->data() + 7, "both", 4);
    std::shared_ptr<Backing> other = MakeBacking(os, BackingKind::kHugetlbfs);
    absl::StatusOr<Extent> again = other->Map({.length = kPageSize2M, .name = "shared"});
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(std::memcmp(again->data() + 7, "both", 4), 0);
  }
  EXPECT_THAT(os.FilesIn("/fake/hugepages"), ElementsAre("shared")) << "a named file stays";
  EXPECT_EQ(os.Pool(kPageSize2M).free, 31) << "and keeps its page, as on hugetlbfs";
  ASSERT_TRUE(os.Unlink("/fake/hugepages/shared").ok());
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
  ExpectNothingLeft(os);
}

TEST(HugetlbfsOnFake, AFailedMapRemovesTheFileItCreatedOnly) {
  FakeOs os({.pools = {{kPageSize2M, 1}}, .mounts = {{"/fake/hugepages", kPageSize2M}}});
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlbfs);
  absl::StatusOr<Extent> e = backing->Map({.length = 2 * kPageSize2M, .name = "new"});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("ENOMEM"));
  EXPECT_TRUE(os.FilesIn("/fake/hugepages").empty());
  // A file another process made stays whatever happens to this mapping.
  {
    absl::StatusOr<Extent> first = backing->Map({.length = kPageSize2M, .name = "old"});
    ASSERT_TRUE(first.ok()) << first.status();
  }
  e = backing->Map({.length = 2 * kPageSize2M, .name = "old"});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(os.FilesIn("/fake/hugepages"), ElementsAre("old"));
  // with the size the call gave it (documented: another process may map it by now, and a
  // size holds no huge pages).
  {
    absl::StatusOr<int> fd = os.Open("/fake/hugepages/old", O_RDWR, 0);
    ASSERT_TRUE(fd.ok()) << fd.status();
    absl::StatusOr<struct stat> st = os.Fstat(*fd);
    ASSERT_TRUE(st.ok()) << st.status();
    EXPECT_EQ(static_cast<size_t>(st->st_size), 2 * kPageSize2M);
    ASSERT_TRUE(os.Close(*fd).ok());
  }
  ASSERT_TRUE(os.Unlink("/fake/hugepages/old").ok());
  ExpectNothingLeft(os);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 1);
}

TEST(HugetlbfsOnFake, FindsTheMountOfItsPageSize) {
  FakeOs os({.mounts = {{"/fake/hugepages1G", kPageSize1G}}});
  absl::StatusOr<std::shared_ptr<Backing>> none =
      Backing::Create({.kind = BackingKind::kHugetlbfs, .os = &os});
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(none.status().message(), HasSubstr("no hugetlbfs mount with 2M pages"));
  std::shared_ptr<Backing> big = MakeBacking(os, BackingKind::kHugetlbfs, kPageSize1G);
  EXPECT_THAT(big->Describe(), HasSubstr("/fake/hugepages1G"));
  absl::StatusOr<std::shared_ptr<Backing>> wrong = Backing::Create(
      {.kind = BackingKind::kHugetlbfs, .hugetlbfs_mount = "/fake/hugepages1G", .os = &os});
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(), HasSubstr("has 1G pages, not 2M"));
}

class DevDaxOnFakeTest : public ::testing::TestWithParam<size_t> {};

// 2M: pagemap shows the PFNs. 1G: it hides them (PUD-mapped device-DAX) and they come
// from the device's physical range in sysfs.
TEST_P(DevDaxOnFakeTest, PfnsFromPagemapOrSysfs) {
  const size_t align = GetParam();
  FakeOs os({.dax = {{.name = "dax0.0", .size = 2 * align, .align = align, .node = 0}}});
  absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice("dax0.0", "/sys", os);
  ASSERT_TRUE(info.ok()) << info.status();
  {
    std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kDevDax, 0, "/dev/dax0.0");
    ASSERT_NE(backing, nullptr);
    EXPECT_EQ(backing->page_size(), align);
    absl::StatusOr<Extent> e = backing->Map({.length = align, .offset = align});
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->node(), 0);
    EXPECT_EQ(e->pfn(0), info->PhysicalAddress(align) >> kPageShift);
    absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*e);
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_TRUE(check->ok()) << check->mismatches.front();
    EXPECT_EQ(check->pfns_hidden, align == kPageSize1G ? 1u : 0u);
    EXPECT_EQ(check->flags_hidden, 1u) << "device pages have no struct page to describe";
    EXPECT_FALSE(backing->Map({.length = align, .shared = false}).ok());
  }
  ExpectNothingLeft(os);
}

INSTANTIATE_TEST_SUITE_P(Alignments, DevDaxOnFakeTest, ::testing::Values(kPageSize2M, kPageSize1G),
                         [](const auto& info) { return PageSizeName(info.param); });

// A program makes a Backing per buffer and per pool; they all carve one device, so no two
// of them may hand out the same range (they used to all start at offset 0).
TEST(DevDaxOnFake, BackingsOfOneDeviceNeverShareARange) {
  FakeOs os({.dax = {{.name = "dax0.0", .size = 3 * kPageSize2M, .align = kPageSize2M}}});
  std::shared_ptr<Backing> a = MakeBacking(os, BackingKind::kDevDax, 0, "/dev/dax0.0");
  std::shared_ptr<Backing> b = MakeBacking(os, BackingKind::kDevDax, 0, "/dev/dax0.0");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  absl::StatusOr<Extent> first = a->Map({.length = kPageSize2M});
  absl::StatusOr<Extent> second = b->Map({.length = 2 * kPageSize2M});
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(first->offset(), 0u);
  EXPECT_EQ(second->offset(), kPageSize2M);
  EXPECT_NE(first->pfn(0), second->pfn(0));
  // The device is full for both, and an explicit offset in use is refused by either.
  EXPECT_EQ(a->Map({.length = kPageSize2M}).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b->Map({.length = kPageSize2M, .offset = 0}).status().code(),
            absl::StatusCode::kAlreadyExists);
  // What one gives back, the other may take.
  ASSERT_TRUE(first->Unmap().ok());
  absl::StatusOr<Extent> again = b->Map({.length = kPageSize2M});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->offset(), 0u);
}

// sysfs lists a device that no driver serves, or one kmem holds (system-ram mode), and
// its /dev node opens with ENXIO. The backing, CheckDaxDeviceOpens and the system info
// `hugemm info` shows all give the same error, naming the driver and the way back.
TEST(DevDaxOnFake, ADeviceTheDaxDriverDoesNotServeSaysWhy) {
  FakeOs os({.dax = {{.name = "dax0.0", .size = kPageSize2M, .driver = "device_dax"},
                     {.name = "dax1.0", .size = kPageSize2M, .driver = ""},
                     {.name = "dax2.0", .size = kPageSize2M, .driver = "kmem"}}});
  absl::StatusOr<SystemInfo> info = CollectSystemInfo("/sys", os);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->dax_devices.size(), 3u);
  ASSERT_EQ(info->dax_use.size(), 3u);
  const char* const why[] = {nullptr, "no driver is bound to it", "it is system RAM (driver kmem)"};
  for (size_t i = 0; i < 3; ++i) {
    const DaxDeviceInfo& d = info->dax_devices[i];
    EXPECT_EQ(info->dax_use[i].driver, i == 0 ? "device_dax" : i == 1 ? "" : "kmem") << d.name;
    EXPECT_EQ(DaxDeviceDriver(d.name, "/sys", os).value_or("?"), info->dax_use[i].driver);
    // Not a device's name: "" named the drivers' own directories ("device_dax/" exists).
    for (const char* bad : {"", ".", "..", "../dax0.0", "dax0.0/"}) {
      EXPECT_EQ(DaxDeviceDriver(bad, "/sys", os).status().code(),
                absl::StatusCode::kInvalidArgument)
          << bad;
    }
    absl::StatusOr<std::shared_ptr<Backing>> b =
        Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = d.path, .os = &os});
    EXPECT_EQ(CheckDaxDeviceOpens(d, "/sys", os), b.status()) << d.name;
    EXPECT_EQ(info->dax_use[i].usable, b.status()) << d.name;
    if (why[i] == nullptr) {
      EXPECT_TRUE(b.ok()) << b.status();
      continue;
    }
    ASSERT_FALSE(b.ok()) << d.name;
    EXPECT_EQ(ErrnoOf(b.status()), ENXIO) << b.status();
    EXPECT_THAT(b.status().message(), HasSubstr(why[i]));
    EXPECT_THAT(b.status().message(),
                HasSubstr("daxctl reconfigure-device --mode=devdax " + d.name));
  }
  ExpectNothingLeft(os);
}

// A device's sysfs files as a garbled kernel or a fake tree could give them: the numbers
// are read without overflow (UBSan watches the asan flavour), out-of-range ones are
// refused or leave the best-effort physical ranges empty, and "." and ".." are no names.
class GarbledSysfs : public OsWrapper {
 public:
  using OsWrapper::OsWrapper;
  std::map<std::string, std::string> files;  // served, and present, over the target's
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    if (auto it = files.find(path); it != files.end()) return it->second;
    return OsWrapper::ReadFile(path);
  }
  absl::StatusOr<struct stat> Stat(const std::string& path) override {
    for (const auto& [name, text] : files) {
      if (name == path || absl::StartsWith(name, path + "/")) {
        struct stat st = {};
        st.st_mode = name == path ? S_IFREG : S_IFDIR;
        return st;
      }
    }
    return OsWrapper::Stat(path);
  }
};

TEST(DevDaxOnFake, GarbledSysfsNumbersAreRefusedWithoutOverflow) {
  FakeOs fake({.dax = {{.name = "dax0.0", .size = 2 * kPageSize2M}}});
  const std::string dir = "/sys/bus/dax/devices/dax0.0";
  {
    GarbledSysfs os(fake);
    absl::StatusOr<DaxDeviceInfo> plain = ReadDaxDevice("dax0.0", "/sys", os);
    ASSERT_TRUE(plain.ok()) << plain.status();
  }
  for (const char* node : {"2147483648", "99999999999", "65536", "-2"}) {
    GarbledSysfs os(fake);
    os.files[dir + "/numa_node"] = node;
    absl::StatusOr<DaxDeviceInfo> d = ReadDaxDevice("dax0.0", "/sys", os);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << node << ": " << d.status();
    EXPECT_THAT(d.status().message(), HasSubstr("numa_node")) << node;
  }
  struct Range {
    const char* start;
    const char* end;
    const char* page_offset;
  };
  for (const Range& r : {Range{"0", "9223372036854775807", "0"},
                         Range{"-9223372036854775808", "9223372036854775807", "0"},
                         Range{"0", "4194303", "4503599627370496"}, Range{"-4096", "4194303", "0"},
                         Range{"0", "8388607", "0"}}) {
    GarbledSysfs os(fake);
    os.files[dir + "/mapping0/start"] = r.start;
    os.files[dir + "/mapping0/end"] = r.end;
    os.files[dir + "/mapping0/page_offset"] = r.page_offset;
    absl::StatusOr<DaxDeviceInfo> d = ReadDaxDevice("dax0.0", "/sys", os);
    ASSERT_TRUE(d.ok()) << r.start << ".." << r.end << ": " << d.status();
    EXPECT_TRUE(d->ranges.empty()) << r.start << ".." << r.end << " +" << r.page_offset;
  }
  {
    // The control: a range that covers the device is read.
    GarbledSysfs os(fake);
    os.files[dir + "/mapping0/start"] = "1073741824";
    os.files[dir + "/mapping0/end"] = "1077936127";
    os.files[dir + "/mapping0/page_offset"] = "0";
    absl::StatusOr<DaxDeviceInfo> d = ReadDaxDevice("dax0.0", "/sys", os);
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_EQ(d->ranges.size(), 1u);
    EXPECT_EQ(d->PhysicalAddress(kPageSize2M), (uint64_t{1} << 30) + kPageSize2M);
  }
  for (const char* bad : {".", "..", "/dev/.."}) {
    EXPECT_EQ(ReadDaxDevice(bad, "/sys", fake).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(AnonOnFake, FourKPagesWithAPfnEach) {
  FakeOs os;
  {
    std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kAnon);
    absl::StatusOr<Extent> e = backing->Map({.length = 16 * kPageSize4K});
    ASSERT_TRUE(e.ok()) << e.status();
    for (size_t i = 0; i < 16; ++i) EXPECT_NE(e->pfn(i), kUnknownPfn);
    absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*e);
    ASSERT_TRUE(check.ok()) << check.status();
    EXPECT_TRUE(check->ok());
    EXPECT_EQ(check->kernel_page_size, kPageSize4K);
  }
  ExpectNothingLeft(os);
}

TEST(HugetlbOnFake, WithoutRootPfnsAreUnknownNeverZero) {
  FakeOs os({.root = false});
  std::shared_ptr<Backing> backing = MakeBacking(os, BackingKind::kHugetlb);
  absl::StatusOr<Extent> e = backing->Map({.length = kPageSize2M});
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->pfn(0), kUnknownPfn);
  EXPECT_FALSE(e->pfns_known());
  absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*e);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_FALSE(check->pfns_checked);
}

}  // namespace
}  // namespace hugemm::testing
