// PRP entries from DMA segments (examples/nvme/prp.h): the rules of NVMe 1.4, 4.3 on
// synthetic segments, then on a real hugemm buffer, each entry held against the PFN the
// kernel's pagemap gives for the page it names.
#include "nvme/prp.h"

#include <fcntl.h>
#include <unistd.h>

#include <vector>

#include "gtest/gtest.h"
#include "hugemm/runtime.h"
#include "nvme/nvme_spec.h"
#include "tests/test_util.h"

namespace nvme {
namespace {

constexpr uint64_t kPage = 4096;

// List pages in ordinary memory at a made-up physical address.
struct Lists {
  explicit Lists(size_t pages) : entries(pages * kPrpEntriesPerPage, ~uint64_t{0}) {}
  PrpListPages view() { return {entries.data(), kListPhys, entries.size() / kPrpEntriesPerPage}; }
  static constexpr uint64_t kListPhys = 0x7700000;
  std::vector<uint64_t> entries;
};

// The page addresses a command names, following PRP2 and any chain.
std::vector<uint64_t> Walk(const Prps& p, const Lists& lists) {
  std::vector<uint64_t> out{p.prp1};
  if (p.entries == 2) out.push_back(p.prp2);
  if (p.entries <= 2) return out;
  uint64_t page = (p.prp2 - Lists::kListPhys) / kPage;
  size_t slot = 0;
  while (out.size() < p.entries) {
    const uint64_t e = lists.entries[page * kPrpEntriesPerPage + slot];
    if (slot == kPrpEntriesPerPage - 1 && out.size() + 1 < p.entries) {
      EXPECT_EQ(e, Lists::kListPhys + (page + 1) * kPage) << "chain pointer of list page " << page;
      ++page;
      slot = 0;
      continue;
    }
    out.push_back(e);
    ++slot;
  }
  return out;
}

TEST(PrpTest, OnePageNeedsOnlyPrp1) {
  Lists lists(1);
  const hugemm::DmaSegment seg{0x123400 + 0x200, 512};
  absl::StatusOr<Prps> p = BuildPrps({&seg, 1}, lists.view());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->prp1, 0x123600u);
  EXPECT_EQ(p->prp2, 0u);
  EXPECT_EQ(p->entries, 1u);
  EXPECT_EQ(p->list_pages, 0u);
}

TEST(PrpTest, ExactlyTwoPagesPutTheSecondInPrp2) {
  Lists lists(1);
  // 4K starting mid-page, across two discontiguous frames.
  const hugemm::DmaSegment segs[] = {{0x200800, 2048}, {0x900000, 2048}};
  absl::StatusOr<Prps> p = BuildPrps(segs, lists.view());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->prp1, 0x200800u);
  EXPECT_EQ(p->prp2, 0x900000u);
  EXPECT_EQ(p->list_pages, 0u);
  EXPECT_EQ(lists.entries[0], ~uint64_t{0}) << "no list entry for a two-page transfer";
}

TEST(PrpTest, ThreePagesOrMoreGoThroughAList) {
  Lists lists(1);
  const hugemm::DmaSegment segs[] = {{0x10000 + 4, kPage - 4}, {0x50000, 2 * kPage}, {0x80000, 8}};
  absl::StatusOr<Prps> p = BuildPrps(segs, lists.view());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->prp2, Lists::kListPhys);
  EXPECT_EQ(p->list_pages, 1u);
  EXPECT_EQ(Walk(*p, lists), (std::vector<uint64_t>{0x10004, 0x50000, 0x51000, 0x80000}));
  EXPECT_EQ(PrpListPagesFor(4, 3 * kPage + 4), 1u);
}

TEST(PrpTest, LongListsChainThroughTheirLastEntry) {
  // 4 MiB + 4 KiB - 8 from 8 bytes into a page: 1025 pages, 1024 list entries on three
  // list pages (511 + 511 + 2, the last slot of the first two pointing on).
  const uint64_t length = (4 << 20) + kPage - 8;
  Lists lists(PrpListPagesFor(8, length));
  ASSERT_EQ(lists.view().pages, 3u);
  const hugemm::DmaSegment seg{0x40000000 + 8, length};
  absl::StatusOr<Prps> p = BuildPrps({&seg, 1}, lists.view());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->entries, 1025u);
  EXPECT_EQ(p->list_pages, 3u);
  const std::vector<uint64_t> walked = Walk(*p, lists);
  ASSERT_EQ(walked.size(), 1025u);
  for (size_t i = 1; i < walked.size(); ++i) ASSERT_EQ(walked[i], 0x40000000 + i * kPage) << i;
}

TEST(PrpTest, TooFewListPagesIsAnError) {
  Lists lists(1);
  const hugemm::DmaSegment seg{0x40000000, 600 * kPage};
  absl::StatusOr<Prps> p = BuildPrps({&seg, 1}, lists.view());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PrpTest, RefusesWhatPrpsCannotDescribe) {
  Lists lists(1);
  // A segment boundary inside a page: the next page of the data would start mid-frame.
  const hugemm::DmaSegment torn[] = {{0x10000, 2048}, {0x20000, 8192}};
  absl::StatusOr<Prps> p = BuildPrps(torn, lists.view());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("byte 4096"), std::string::npos) << p.status();
  const hugemm::DmaSegment odd{0x10002, 512};
  EXPECT_EQ(BuildPrps({&odd, 1}, lists.view()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildPrps({}, lists.view()).status().code(), absl::StatusCode::kInvalidArgument);
  const hugemm::DmaSegment empty{0x10000, 0};
  EXPECT_EQ(BuildPrps({&empty, 1}, lists.view()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PrpTest, AFaultMovesExactlyTheEntryItNames) {
  Lists lists(1);
  const hugemm::DmaSegment seg{0x100000, 8 * kPage};
  absl::StatusOr<Prps> p = BuildPrps({&seg, 1}, lists.view(), {.entry = 5, .delta = kPage});
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<uint64_t> walked = Walk(*p, lists);
  for (size_t i = 0; i < walked.size(); ++i) {
    EXPECT_EQ(walked[i], 0x100000 + (i + (i == 5)) * kPage) << i;
  }
}

// The kernel's word for the frame under `va`: /proc/self/pagemap, bits 54..0.
uint64_t PagemapPhys(const void* va) {
  const int fd = open("/proc/self/pagemap", O_RDONLY);
  uint64_t entry = 0;
  const off_t at = static_cast<off_t>(reinterpret_cast<uintptr_t>(va) / kPage * 8);
  const bool ok = fd >= 0 && pread(fd, &entry, 8, at) == 8;
  if (fd >= 0) close(fd);
  if (!ok || !(entry >> 63)) return ~uint64_t{0};
  return (entry & ((uint64_t{1} << 55) - 1)) * kPage;
}

TEST(PrpTest, EveryEntryOfARealBufferIsTheKernelsFrame) {
  HUGEMM_NEED_HUGEPAGES(hugemm::kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<hugemm::Buffer> buf = (*rt)->MapBuffer(2 * hugemm::kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  HUGEMM_NEED(PagemapPhys(buf->data()) != 0 && PagemapPhys(buf->data()) != ~uint64_t{0},
              "pagemap hides PFNs (not root)");
  // 300 KiB + 512 from 100 KiB + 512 before the folio boundary, in 64K segments.
  std::byte* start = buf->data() + hugemm::kPageSize2M - (100 << 10) - 512;
  const size_t length = (300 << 10) + 512;
  absl::StatusOr<hugemm::PinnedRange> pin =
      (*rt)->pinner().Pin(start, length, hugemm::kGupPin | hugemm::kGupWrite);
  ASSERT_TRUE(pin.ok()) << pin.status();
  absl::StatusOr<std::vector<hugemm::DmaSegment>> segs = pin->Segments(64 << 10);
  ASSERT_TRUE(segs.ok()) << segs.status();
  EXPECT_GE(segs->size(), 5u);
  Lists lists(1);
  absl::StatusOr<Prps> p = BuildPrps(*segs, lists.view());
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<uint64_t> walked = Walk(*p, lists);
  ASSERT_EQ(walked.size(), 76u);  // the last 512 bytes of a page, then 75 whole pages
  const uintptr_t first_page = reinterpret_cast<uintptr_t>(start) & ~uintptr_t{kPage - 1};
  EXPECT_EQ(walked[0], PagemapPhys(start) + (reinterpret_cast<uintptr_t>(start) - first_page));
  for (size_t i = 1; i < walked.size(); ++i) {
    ASSERT_EQ(walked[i], PagemapPhys(reinterpret_cast<void*>(first_page + i * kPage))) << i;
  }
}

}  // namespace
}  // namespace nvme
