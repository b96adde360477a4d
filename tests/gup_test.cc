// GUP behaviours, each a test, on real memory: 4K anonymous folios, hugetlb 2M and 1G.
#include "hugemm/gup.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/notify.h"
#include "runtime/gup/pinner_test_peer.h"
#include "tests/gup_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::gup_internal::PinnerTestPeer;
using ::hugemm::testing::kRW;
using ::hugemm::testing::MapAll;
using ::hugemm::testing::MapExtent;
using ::hugemm::testing::MapFolios;
using ::hugemm::testing::Mapped;
using ::testing::HasSubstr;

struct Memory {
  BackingKind kind;
  size_t page_size;
  size_t pages;
  std::string name;
};

std::string MemoryName(const ::testing::TestParamInfo<Memory>& info) { return info.param.name; }
void PrintTo(const Memory& m, std::ostream* os) { *os << m.name; }

// Skips unless the memory can be had; returns it mapped.
#define MAP_OR_SKIP(var, mem)                                                                \
  if ((mem).kind == BackingKind::kHugetlb)                                                   \
    HUGEMM_NEED_HUGEPAGES((mem).page_size, static_cast<int64_t>((mem).pages));               \
  absl::StatusOr<Extent> var##_extent = MapExtent((mem).kind, (mem).page_size, (mem).pages); \
  HUGEMM_ASSERT_OK(var##_extent);                                                            \
  absl::StatusOr<std::unique_ptr<Mapped>> var##_or = MapAll(std::move(*var##_extent));       \
  HUGEMM_ASSERT_OK(var##_or);                                                                \
  Mapped& var = **var##_or

// What pinning `pages` 4K pages from `first` (a 4K page index) should add to each folio.
std::vector<std::pair<int32_t, int32_t>> Expected(const Mapped& m,
                                                  std::vector<std::pair<int32_t, int32_t>> base,
                                                  size_t first, size_t pages, RefKind kind) {
  const size_t per = m.extent.page_size() / kPageSize4K;
  for (size_t p = first; p < first + pages; ++p) {
    const size_t f = p / per;
    if (kind == RefKind::kGet) {
      base[f].first += 1;
    } else if (per == 1) {
      base[f].first += kPinBias;
    } else {
      base[f].first += 1;
      base[f].second += 1;
    }
  }
  return base;
}

class GupMemoryTest : public ::testing::TestWithParam<Memory> {};

TEST_P(GupMemoryTest, PinCountsAndUnpinReturnToBaseline) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  Pinner pinner(*m.table);
  const auto base = m.Counts();
  const size_t all = m.pages4k();
  for (size_t npages : {size_t{1}, size_t{512}, size_t{123}, all}) {
    if (npages > all) continue;
    for (GupFlags flags : {kGupPin, kGupPin | kGupWrite, kGupGet, kGupGet | kGupWrite}) {
      SCOPED_TRACE(absl::StrFormat("%u pages %s", npages, GupFlagsName(flags)));
      std::vector<PageRef> pages(npages);
      absl::StatusOr<size_t> n = pinner.PinPages(m.data(), npages, flags, absl::MakeSpan(pages));
      HUGEMM_ASSERT_OK(n);
      ASSERT_EQ(*n, npages);
      const RefKind kind = HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
      EXPECT_EQ(m.Counts(), Expected(m, base, 0, npages, kind));
      for (size_t i = 0; i < npages; ++i) {
        ASSERT_EQ(pages[i].address(), m.data() + i * kPageSize4K) << i;
        ASSERT_EQ(pages[i].folio(), m.folio_at(i * kPageSize4K)) << i;
        ASSERT_EQ(pages[i].kind(), kind);
        if (m.extent.pfns_known()) {
          const size_t per = m.extent.page_size() / kPageSize4K;
          ASSERT_EQ(pages[i].pfn(), m.extent.pfn(i / per) + i % per) << i;
        }
      }
      // One operation per folio the pin touched.
      const size_t folios =
          (npages * kPageSize4K + m.extent.page_size() - 1) / m.extent.page_size();
      EXPECT_EQ(pinner.UnpinPages(absl::MakeConstSpan(pages.data(), npages)), folios);
      EXPECT_EQ(m.Counts(), base);
    }
  }
}

// A program's second unpin of the same pins, or an unpin of GET spans as PIN, would take
// references the mappings hold and hand folios still mapped back to their owner. Each
// folio refuses what it does not hold: nothing of it is given back, it is counted as
// refused, and the memory stays mapped and usable.
TEST_P(GupMemoryTest, AnUnpinOfWhatIsNotHeldIsRefusedAndTheMemoryStays) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  Pinner pinner(*m.table);
  const auto base = m.Counts();
  const size_t npages = std::min<size_t>(m.pages4k(), 1024);
  std::vector<PageRef> pages(npages);
  HUGEMM_ASSERT_OK(pinner.PinPages(m.data(), npages, kGupPin | kGupWrite, absl::MakeSpan(pages)));
  size_t refused = 99;
  const size_t ops = pinner.UnpinPages(pages, /*dirty=*/false, &refused);
  EXPECT_EQ(refused, 0u);
  EXPECT_EQ(m.Counts(), base);
  EXPECT_EQ(pinner.UnpinPages(pages, /*dirty=*/false, &refused), 0u) << "unpinned twice";
  EXPECT_EQ(refused, ops);
  EXPECT_EQ(m.Counts(), base);

  std::vector<FolioSpan> spans(npages);
  absl::StatusOr<size_t> n =
      pinner.PinFolios(m.data(), npages * kPageSize4K, kGupPin, absl::MakeSpan(spans));
  HUGEMM_ASSERT_OK(n);
  const auto held = absl::MakeConstSpan(spans.data(), *n);
  EXPECT_EQ(pinner.UnpinFolios(held, RefKind::kPin, false, &refused), *n);
  EXPECT_EQ(refused, 0u);
  EXPECT_EQ(pinner.UnpinFolios(held, RefKind::kPin, false, &refused), 0u) << "unpinned twice";
  EXPECT_EQ(refused, *n);
  EXPECT_EQ(m.Counts(), base);

  n = pinner.PinFolios(m.data(), npages * kPageSize4K, kGupGet, absl::MakeSpan(spans));
  HUGEMM_ASSERT_OK(n);
  const auto got = m.Counts();
  EXPECT_EQ(pinner.UnpinFolios(held, RefKind::kPin, false, &refused), 0u) << "GET as PIN";
  EXPECT_EQ(refused, *n);
  EXPECT_EQ(m.Counts(), got);
  EXPECT_EQ(pinner.UnpinFolios(held, RefKind::kGet), *n);
  EXPECT_EQ(m.Counts(), base);
  std::memset(m.data(), 0x5a, npages * kPageSize4K);  // still mapped, still this memory
  EXPECT_EQ(m.data()[npages * kPageSize4K - 1], std::byte{0x5a});
}

TEST_P(GupMemoryTest, SpansAndRangeVariantTakeTheSame) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  Pinner pinner(*m.table);
  const auto base = m.Counts();
  std::vector<FolioSpan> spans(m.folios.size());
  absl::StatusOr<size_t> n = pinner.PinFolios(m.data(), m.size(), kGupPin, absl::MakeSpan(spans));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, m.folios.size());
  for (size_t i = 0; i < *n; ++i) {
    EXPECT_EQ(spans[i].folio, m.folios[i].get());
    EXPECT_EQ(spans[i].first_page, 0u);
    EXPECT_EQ(spans[i].pages, m.extent.page_size() / kPageSize4K);
  }
  EXPECT_EQ(m.Counts(), Expected(m, base, 0, m.pages4k(), RefKind::kPin));
  EXPECT_EQ(pinner.UnpinFolios(absl::MakeConstSpan(spans.data(), *n), RefKind::kPin), *n);
  EXPECT_EQ(m.Counts(), base);

  // The range variant gives back what a pin of the same range took.
  std::vector<PageRef> pages(m.pages4k());
  HUGEMM_ASSERT_OK(pinner.PinPages(m.data(), pages.size(), kGupGet, absl::MakeSpan(pages)));
  HUGEMM_ASSERT_OK(pinner.UnpinRange(m.data(), m.size(), RefKind::kGet));
  EXPECT_EQ(m.Counts(), base);
}

TEST_P(GupMemoryTest, DataThroughThePinEqualsTheMappedData) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  for (size_t i = 0; i < m.size(); i += 512) m.data()[i] = static_cast<std::byte>(i / 512 * 7 + 1);
  Pinner pinner(*m.table);
  const size_t npages = std::min<size_t>(m.pages4k(), 4096);
  std::vector<PageRef> pages(npages);
  HUGEMM_ASSERT_OK(pinner.PinPages(m.data(), npages, kGupPin | kGupWrite, absl::MakeSpan(pages)));
  for (size_t i = 0; i < npages; ++i) {
    ASSERT_EQ(std::memcmp(pages[i].address(), m.data() + i * kPageSize4K, kPageSize4K), 0) << i;
  }
  // And a write through the pin is seen through the mapping.
  pages[npages - 1].address()[100] = std::byte{0x5a};
  EXPECT_EQ(m.data()[(npages - 1) * kPageSize4K + 100], std::byte{0x5a});
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), npages), /*dirty=*/true);
}

TEST_P(GupMemoryTest, PerPageGranularityGivesTheSameResult) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  Pinner per_folio(*m.table);
  Pinner per_page(*m.table, {.granularity = RefGranularity::kPage});
  const auto base = m.Counts();
  const size_t npages = std::min<size_t>(m.pages4k(), 1000);
  std::vector<PageRef> a(npages), b(npages);
  HUGEMM_ASSERT_OK(per_folio.PinPages(m.data(), npages, kGupPin, absl::MakeSpan(a)));
  const auto after_one = m.Counts();
  HUGEMM_ASSERT_OK(per_page.PinPages(m.data(), npages, kGupPin, absl::MakeSpan(b)));
  for (size_t i = 0; i < npages; ++i) {
    ASSERT_EQ(a[i].folio(), b[i].folio());
    ASSERT_EQ(a[i].index(), b[i].index());
  }
  EXPECT_EQ(per_page.UnpinPages(absl::MakeConstSpan(b.data(), npages)), npages);  // one per page
  EXPECT_EQ(m.Counts(), after_one);
  per_folio.UnpinPages(absl::MakeConstSpan(a.data(), npages));
  EXPECT_EQ(m.Counts(), base);
}

TEST_P(GupMemoryTest, SegmentsFollowTheRecordedPfns) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  ASSERT_TRUE(m.extent.pfns_known()) << "pagemap must show PFNs (run as root)";
  Pinner pinner(*m.table);
  const auto base = m.Counts();
  const size_t offset = 100, length = m.size() - 300;
  const uint64_t max = 64 << 10;
  std::vector<DmaSegment> segs(m.pages4k() + 1);
  std::vector<FolioSpan> pinned;
  absl::StatusOr<size_t> n =
      pinner.PinSegments(m.data() + offset, length, kGupPin, max, absl::MakeSpan(segs), &pinned);
  HUGEMM_ASSERT_OK(n);
  uint64_t total = 0;
  for (size_t i = 0; i < *n; ++i) {
    EXPECT_LE(segs[i].length, max);
    EXPECT_GT(segs[i].length, 0u);
    total += segs[i].length;
    if (i > 0) {
      // A break between segments is either the cap or a physical discontinuity.
      const bool contiguous = segs[i - 1].phys_addr + segs[i - 1].length == segs[i].phys_addr;
      EXPECT_TRUE(!contiguous || segs[i - 1].length == max) << i;
    }
  }
  EXPECT_EQ(total, length);
  EXPECT_EQ(segs[0].phys_addr, (m.extent.pfn(0) << kPageShift) + offset);
  // Every byte maps to its recorded frame: check the first byte of each segment.
  uint64_t at = offset;
  for (size_t i = 0; i < *n; ++i) {
    const size_t page = at / m.extent.page_size();
    const uint64_t expect = (m.extent.pfn(page) << kPageShift) + at % m.extent.page_size();
    ASSERT_EQ(segs[i].phys_addr, expect) << i;
    at += segs[i].length;
  }
  EXPECT_EQ(m.Counts(), Expected(m, base, 0, m.pages4k(), RefKind::kPin));
  pinner.UnpinFolios(pinned, RefKind::kPin);
  EXPECT_EQ(m.Counts(), base);

  // Too few segments: all-or-nothing gives everything back. (Into an array of its own: a
  // refused pin may have written its entries, and `segs` is compared below.)
  if (*n > 1) {
    std::vector<DmaSegment> fewer(*n - 1);
    absl::StatusOr<size_t> small =
        pinner.PinSegments(m.data() + offset, length, kGupPin, max, absl::MakeSpan(fewer));
    EXPECT_EQ(small.status().code(), absl::StatusCode::kResourceExhausted) << small.status();
    // The message names the leaf that did not fit and what was written before it, which
    // for one 1G folio is nothing, though the array had room for all segments but one.
    EXPECT_THAT(std::string(small.status().message()),
                HasSubstr("has no room for the entries from"));
    if (m.folios.size() == 1) {
      EXPECT_THAT(std::string(small.status().message()), HasSubstr("(0 written before them)"));
    }
    EXPECT_EQ(m.Counts(), base);

    // Partial: as far as the segments reach, in whole pages, inside a folio too (one 1G
    // folio got nothing before, though all segments but one had room).
    std::vector<FolioSpan> part;
    absl::StatusOr<size_t> k = pinner.PinSegments(m.data() + offset, length, kGupPin | kGupPartial,
                                                  max, absl::MakeSpan(fewer), &part);
    HUGEMM_ASSERT_OK(k);
    ASSERT_EQ(*k, *n - 1);
    uint64_t bytes = 0;
    for (size_t i = 0; i < *k; ++i) {
      EXPECT_EQ(fewer[i].phys_addr, segs[i].phys_addr) << i;
      if (i + 1 < *k) {
        EXPECT_EQ(fewer[i].length, segs[i].length) << i;
      }
      bytes += fewer[i].length;
    }
    EXPECT_LE(fewer[*k - 1].length, segs[*k - 1].length);
    EXPECT_LT(bytes, length);
    // As far as n - 1 segments reach, down to a whole page: one page more would need
    // another segment.
    uint64_t reach = offset;
    for (size_t i = 0; i < *k; ++i) reach += segs[i].length;
    EXPECT_EQ(offset + bytes, reach & ~uint64_t{kPageSize4K - 1});
    size_t pages = 0;
    for (const FolioSpan& s : part) pages += s.pages;
    EXPECT_EQ(pages, (offset + bytes) / kPageSize4K);
    EXPECT_EQ(m.Counts(), Expected(m, base, 0, pages, RefKind::kPin));
    pinner.UnpinFolios(part, RefKind::kPin);
    EXPECT_EQ(m.Counts(), base);
  }
  // The handle gives the same segments.
  absl::StatusOr<PinnedRange> r = pinner.Pin(m.data() + offset, length, kGupPin);
  HUGEMM_ASSERT_OK(r);
  absl::StatusOr<std::vector<DmaSegment>> again = r->Segments(max);
  HUGEMM_ASSERT_OK(again);
  ASSERT_EQ(again->size(), *n);
  for (size_t i = 0; i < *n; ++i) {
    EXPECT_EQ((*again)[i].phys_addr, segs[i].phys_addr);
    EXPECT_EQ((*again)[i].length, segs[i].length);
  }
  r->Release();
  EXPECT_EQ(m.Counts(), base);
}

// A GET unpin by range gives back only references a pin took: each folio's owner holds
// one more than its mappings' (owner_refs), and a range never taken, or released already,
// must not take that one (the folio would go back to its owner while mapped and owned).
TEST_P(GupMemoryTest, UnpinRangeOfGetNeverTakesTheOwnersReference) {
  const Memory mem = GetParam();
  MAP_OR_SKIP(m, mem);
  Pinner pinner(*m.table, {.owner_refs = 1});
  const auto base = m.Counts();
  const std::byte* last = m.data() + m.size() - kPageSize4K;
  absl::Status st = pinner.UnpinRange(last, kPageSize4K, RefKind::kGet);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(st.message(), HasSubstr("holds 0 references of the 1")) << st;
  // The refusal names the request first, as a pin's does.
  EXPECT_THAT(std::string(st.message()),
              ::testing::StartsWith(absl::StrFormat("unpin [0x%x, +1 pages) GET: ",
                                                    reinterpret_cast<uintptr_t>(last))))
      << st;
  EXPECT_EQ(m.Counts(), base);
  PageRef page[1];
  HUGEMM_ASSERT_OK(pinner.PinPages(last, 1, kGupGet, absl::MakeSpan(page)));
  HUGEMM_ASSERT_OK(pinner.UnpinRange(last, kPageSize4K, RefKind::kGet));
  EXPECT_EQ(m.Counts(), base);
  st = pinner.UnpinRange(last, kPageSize4K, RefKind::kGet);  // released already
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(m.Counts(), base);
  EXPECT_EQ(m.owner.released(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Backings, GupMemoryTest,
    ::testing::Values(Memory{BackingKind::kAnon, kPageSize4K, 1024, "Anon4K"},
                      Memory{BackingKind::kHugetlb, kPageSize2M, 4, "Hugetlb2M"},
                      Memory{BackingKind::kHugetlb, kPageSize1G, 1, "Hugetlb1G"}),
    MemoryName);

// ---- 2M specifics -------------------------------------------------------------------

class Gup2MTest : public testing::Folios2MTest<4> {};

TEST_F(Gup2MTest, MidFolioPinReferencesTheRightPageAndAddsExactlyRefs) {
  Pinner pinner(*m().table);
  PageRef pages[3];
  absl::StatusOr<size_t> n = pinner.PinPages(at(1, 5) + 17, 3, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(pages[i].folio(), m().folios[1].get());
    EXPECT_EQ(pages[i].index(), 5 + i);
    EXPECT_EQ(pages[i].address(), at(1, 5 + i));
  }
  EXPECT_EQ(m().folios[1]->refcount(), base_[1].first + 3);
  EXPECT_EQ(m().folios[1]->pincount(), 3);
  EXPECT_TRUE(pinner.MaybeDmaPinned(at(1, 0)));
  EXPECT_FALSE(pinner.MaybeDmaPinned(at(0, 0)));
  EXPECT_EQ(pinner.UnpinPages(absl::MakeConstSpan(pages, 3)), 1u);
  EXPECT_EQ(m().Counts(), base_);
  EXPECT_FALSE(pinner.MaybeDmaPinned(at(1, 0)));
}

TEST_F(Gup2MTest, AcrossFolioBoundariesEveryCountReturns) {
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(1024 + 4);
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(0, 510), pages.size(), kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(m().folios[0]->pincount(), 2);
  EXPECT_EQ(m().folios[1]->pincount(), 512);
  EXPECT_EQ(m().folios[2]->pincount(), 512);
  EXPECT_EQ(m().folios[3]->pincount(), 2);
  EXPECT_EQ(pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n)), 4u);
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, SplitLeavesStillGiveOneSpanPerFolio) {
  HUGEMM_ASSERT_OK(m().table->Split(at(1, 0)));
  const auto base = m().Counts();  // the split added 511 mapping references
  Pinner pinner(*m().table);
  FolioSpan spans[4];
  absl::StatusOr<size_t> n =
      pinner.PinFolios(at(0, 0), 3 * kPageSize2M, kGupPin, absl::MakeSpan(spans, 4));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 3u);
  EXPECT_EQ(spans[1].folio, m().folios[1].get());
  EXPECT_EQ(spans[1].pages, 512u);
  EXPECT_EQ(m().folios[1]->pincount(), 512);
  pinner.UnpinFolios(absl::MakeConstSpan(spans, *n), RefKind::kPin);
  EXPECT_EQ(m().Counts(), base);
}

TEST_F(Gup2MTest, LeafChangedUnderTheFastPathIsUndoneAndRetried) {
  int calls = 0;
  Pinner pinner(*m().table);
  PinnerTestPeer::SetAfterGrab(pinner, [&](uintptr_t va) {
    // The first grab on folio 1 loses a race with a split.
    if (calls++ == 0) {
      EXPECT_EQ(va, reinterpret_cast<uintptr_t>(at(1, 0)));
      EXPECT_EQ(m().folios[1]->pincount(), 512);
      EXPECT_TRUE(m().table->Split(at(1, 0)).ok());
    }
  });
  std::vector<PageRef> pages(512);
  absl::StatusOr<size_t> n = pinner.PinPages(at(1, 0), 512, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(*n, 512u);
  EXPECT_GE(calls, 2);  // undone, then taken again (per PTE now)
  EXPECT_EQ(m().folios[1]->pincount(), 512);
  for (uint32_t i = 0; i < 512; ++i) ASSERT_EQ(pages[i].index(), i);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), 512));
  EXPECT_EQ(m().folios[1]->pincount(), 0);
  EXPECT_EQ(m().folios[1]->refcount(), base_[1].first + 511);  // 512 PTEs now
}

TEST_F(Gup2MTest, LeafThatKeepsChangingGoesToTheSlowPathOrFails) {
  bool exec = false;
  Pinner pinner(*m().table);
  PinnerTestPeer::SetAfterGrab(pinner, [&](uintptr_t) {
    exec = !exec;
    EXPECT_TRUE(
        m().table->Protect(at(2, 0), kPageSize2M, kRW | (exec ? kProtExec : kProtNone)).ok());
  });
  std::vector<PageRef> pages(1024);
  // FAST_ONLY: the fast path gives up; nothing stays taken.
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(1, 0), 1024, kGupPin | kGupFastOnly, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("kept changing"));
  EXPECT_EQ(m().Counts(), base_);
  // FAST_ONLY | PARTIAL: what the fast path got.
  n = pinner.PinPages(at(1, 0), 1024, kGupPin | kGupFastOnly | kGupPartial, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(*n, 512u);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  EXPECT_EQ(m().Counts(), base_);
  // The slow path takes it under the table lock.
  n = pinner.PinPages(at(1, 0), 1024, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(*n, 1024u);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, ProtectionChangedToReadOnlyUnderAWritePinFails) {
  Pinner pinner(*m().table);
  PinnerTestPeer::SetAfterGrab(pinner, [&](uintptr_t va) {
    if (va == reinterpret_cast<uintptr_t>(at(2, 0))) {
      EXPECT_TRUE(m().table->Protect(at(2, 0), kPageSize2M, kProtRead).ok());
    }
  });
  std::vector<PageRef> pages(2048);
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(0, 0), 2048, kGupPin | kGupWrite, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kPermissionDenied) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("read-only"));
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, PartialResultsAndAllOrNothing) {
  HUGEMM_ASSERT_OK(m().table->Unmap(at(2, 0), kPageSize2M));
  const auto base = m().Counts();
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(2048);
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(1, 100), 2048 - 612, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(
      n.status().message(),
      HasSubstr(absl::StrFormat("0x%x is not mapped", reinterpret_cast<uintptr_t>(at(2, 0)))));
  EXPECT_EQ(m().Counts(), base);

  n = pinner.PinPages(at(1, 100), 2048 - 612, kGupPin | kGupPartial, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(*n, 412u);
  EXPECT_EQ(m().folios[1]->pincount(), 412);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  EXPECT_EQ(m().Counts(), base);

  // Nothing pinned is an error even when partial.
  n = pinner.PinPages(at(2, 0), 10, kGupPin | kGupPartial, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound);

  // Spans: too small an output.
  FolioSpan spans[1];
  n = pinner.PinFolios(at(0, 0), 2 * kPageSize2M, kGupPin, absl::MakeSpan(spans, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kResourceExhausted) << n.status();
  EXPECT_EQ(m().Counts(), base);
  n = pinner.PinFolios(at(0, 0), 2 * kPageSize2M, kGupPin | kGupPartial, absl::MakeSpan(spans, 1));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(spans[0].pages, 512u);
  pinner.UnpinFolios(absl::MakeConstSpan(spans, 1), RefKind::kPin);
  EXPECT_EQ(m().Counts(), base);
}

TEST_F(Gup2MTest, LongtermRules) {
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(2048);
  // Allowed on hugetlb.
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(0, 0), 2048, kGupPin | kGupLongterm, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  // Only with PIN.
  n = pinner.PinPages(at(0, 0), 1, kGupGet | kGupLongterm, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
  // Refused on memory that may move, after the part before it was taken: all given back.
  m().folios[2]->set_flag(kFolioBorrowed);
  n = pinner.PinPages(at(0, 0), 2048, kGupPin | kGupLongterm, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("LONGTERM"));
  EXPECT_EQ(m().Counts(), base_);
  // A short-term pin of the same memory is fine.
  n = pinner.PinPages(at(0, 0), 2048, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, UnpinDirtyMarksEachFolioOnce) {
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(1024);
  HUGEMM_ASSERT_OK(pinner.PinPages(at(1, 0), 1024, kGupPin | kGupWrite, absl::MakeSpan(pages)));
  for (auto& f : m().folios) EXPECT_FALSE(f->has_flag(kFolioDirty));
  EXPECT_EQ(pinner.UnpinPages(absl::MakeConstSpan(pages.data(), 1024), /*dirty=*/true),
            2u);  // one per folio
  EXPECT_FALSE(m().folios[0]->has_flag(kFolioDirty));
  EXPECT_TRUE(m().folios[1]->has_flag(kFolioDirty));
  EXPECT_TRUE(m().folios[2]->has_flag(kFolioDirty));
  EXPECT_FALSE(m().folios[3]->has_flag(kFolioDirty));
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, ReadOnlyAndDeviceExclusiveMemory) {
  HUGEMM_ASSERT_OK(m().table->Protect(at(0, 0), kPageSize2M, kProtRead));
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(1024);
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(0, 0), 1024, kGupPin | kGupWrite, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kPermissionDenied);
  n = pinner.PinPages(at(0, 0), 1024, kGupPin, absl::MakeSpan(pages));  // reading is fine
  HUGEMM_ASSERT_OK(n);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));

  const int device = 0;
  HUGEMM_ASSERT_OK(m().table->MakeExclusive(at(1, 7), &device));
  const auto base = m().Counts();
  n = pinner.PinPages(at(1, 0), 512, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("device-exclusive"));
  EXPECT_EQ(m().Counts(), base);
  HUGEMM_ASSERT_OK(m().table->RestoreExclusive(at(1, 7)));
  n = pinner.PinPages(at(1, 0), 512, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
}

TEST_F(Gup2MTest, FreeingAPinnedBufferKeepsItUntilTheLastUnpin) {
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(512);
  HUGEMM_ASSERT_OK(pinner.PinPages(at(3, 0), 512, kGupPin | kGupWrite, absl::MakeSpan(pages)));
  // The buffer is freed: unmapped and its owner's reference dropped.
  HUGEMM_ASSERT_OK(m().table->Unmap(at(3, 0), kPageSize2M));
  FolioPut(m().folios[3].get());
  EXPECT_EQ(m().owner.released(), 0u);
  EXPECT_EQ(m().folios[3]->refcount(), 512);
  EXPECT_TRUE(FolioMaybeDmaPinned(m().folios[3].get()));
  // The memory is still there for the device.
  pages[10].address()[0] = std::byte{1};
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), 256));
  EXPECT_EQ(m().owner.released(), 0u);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data() + 256, 256), /*dirty=*/true);
  EXPECT_EQ(m().owner.released(), 1u);
  EXPECT_EQ(m().folios[3]->refcount(), 0);
}

TEST_F(Gup2MTest, UnpinRangeRefusesAChangedMapping) {
  Pinner pinner(*m().table);
  std::vector<PageRef> pages(1024);
  HUGEMM_ASSERT_OK(pinner.PinPages(at(0, 0), 1024, kGupPin, absl::MakeSpan(pages)));
  HUGEMM_ASSERT_OK(m().table->Split(at(0, 0)));  // splits are fine
  HUGEMM_ASSERT_OK(m().table->Unmap(at(1, 0), kPageSize2M));
  absl::Status st = pinner.UnpinRange(at(0, 0), 2 * kPageSize2M, RefKind::kPin);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(m().folios[0]->pincount(), 512);  // nothing given back
  HUGEMM_ASSERT_OK(pinner.UnpinRange(at(0, 0), kPageSize2M, RefKind::kPin));
  EXPECT_EQ(m().folios[0]->pincount(), 0);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data() + 512, 512));
  EXPECT_EQ(m().folios[1]->pincount(), 0);
}

// A range never pinned, or released already, gives back nothing: a folio gives back no
// more pins than it holds, and no more references than it holds beyond its mappings'.
TEST_F(Gup2MTest, UnpinRangeRefusesWhatWasNotTaken) {
  Pinner pinner(*m().table);
  absl::Status st = pinner.UnpinRange(at(0, 0), kPageSize4K, RefKind::kPin);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("holds 0 pins"), absl::string_view::npos) << st;
  st = pinner.UnpinRange(at(0, 0), kPageSize2M, RefKind::kGet);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(m().Counts(), base_);
  PageRef pages[2];
  HUGEMM_ASSERT_OK(pinner.PinPages(at(1, 7), 2, kGupGet, absl::MakeSpan(pages)));
  st = pinner.UnpinRange(at(1, 0), kPageSize2M, RefKind::kGet);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  HUGEMM_ASSERT_OK(pinner.UnpinRange(at(1, 7), 2 * kPageSize4K, RefKind::kGet));
  EXPECT_EQ(m().Counts(), base_);
  st = pinner.UnpinRange(at(1, 7), 2 * kPageSize4K, RefKind::kGet);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(m().Counts(), base_);
  HUGEMM_ASSERT_OK(pinner.PinPages(at(2, 0), 2, kGupPin, absl::MakeSpan(pages)));
  st = pinner.UnpinRange(at(2, 0), 3 * kPageSize4K, RefKind::kPin);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  HUGEMM_ASSERT_OK(pinner.UnpinRange(at(2, 0), 2 * kPageSize4K, RefKind::kPin));
  EXPECT_EQ(m().Counts(), base_);
}

// A negative owner_refs is no licence to take the mappings' references: it counts as 0.
TEST_F(Gup2MTest, ANegativeOwnerRefsCountsAsNone) {
  Pinner pinner(*m().table, {.owner_refs = -1000});
  absl::Status st = pinner.UnpinRange(at(0, 0), 2 * kPageSize4K, RefKind::kGet);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(m().Counts(), base_);
}

// A folio mapped a second time inside the range is one folio: its runs are summed
// before the check, so a range that would give back one pin more than it holds is
// refused whole (checked run by run, 512 and 1 would each pass).
TEST_F(Gup2MTest, UnpinRangeSumsTheRunsOfAFolioMappedTwice) {
  HUGEMM_ASSERT_OK(m().table->Map(folio(0), at(4, 0), kRW));  // right after folio 3
  const auto base = m().Counts();
  Pinner pinner(*m().table);
  FolioSpan spans[4];
  ASSERT_EQ(*pinner.PinFolios(at(0, 0), 4 * kPageSize2M, kGupPin, absl::MakeSpan(spans)), 4u);
  const size_t across = 4 * kPageSize2M + kPageSize4K;  // and the alias's first page
  absl::Status st = pinner.UnpinRange(at(0, 0), across, RefKind::kPin);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("holds 512 pins of the 513"), absl::string_view::npos) << st;
  EXPECT_EQ(folio(0)->pincount(), 512) << "nothing was given back";
  PageRef alias[1];
  HUGEMM_ASSERT_OK(pinner.PinPages(at(4, 0), 1, kGupPin, absl::MakeSpan(alias)));
  EXPECT_EQ(alias[0].folio(), folio(0));
  HUGEMM_ASSERT_OK(pinner.UnpinRange(at(0, 0), across, RefKind::kPin));
  EXPECT_EQ(m().Counts(), base);
  HUGEMM_ASSERT_OK(m().table->Unmap(at(4, 0), kPageSize2M));
  EXPECT_EQ(m().Counts(), base_);
}

TEST_F(Gup2MTest, PinnedRangeUnpinsWhenDropped) {
  Pinner pinner(*m().table);
  {
    absl::StatusOr<PinnedRange> r = pinner.Pin(at(0, 3), 2 * kPageSize2M, kGupPin | kGupWrite);
    HUGEMM_ASSERT_OK(r);
    EXPECT_EQ(r->spans().size(), 3u);
    EXPECT_EQ(r->page_count(), 1024u);
    std::vector<PageRef> pages(r->page_count());
    EXPECT_EQ(r->Pages(absl::MakeSpan(pages)), 1024u);
    EXPECT_EQ(pages[0].address(), at(0, 3));
    PinnedRange moved = std::move(*r);
    EXPECT_FALSE(r->pinned());
    EXPECT_TRUE(moved.pinned());
    EXPECT_EQ(m().folios[1]->pincount(), 512);
  }
  EXPECT_EQ(m().Counts(), base_);
  EXPECT_TRUE(m().folios[1]->has_flag(kFolioDirty));
  // A failed pin gives no handle and takes nothing.
  HUGEMM_ASSERT_OK(m().table->Unmap(at(3, 0), kPageSize2M));
  const auto base = m().Counts();
  absl::StatusOr<PinnedRange> r = pinner.Pin(at(0, 0), 4 * kPageSize2M, kGupPin);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(m().Counts(), base);
}

// Maps the extent's folio on demand: what the allocator-backed runtime will do from a
// range's pool.
class ExtentPopulator : public Populator {
 public:
  explicit ExtentPopulator(Mapped* m) : m_(m) {}
  absl::Status Populate(PageTable& table, uintptr_t va, bool /*write*/) override {
    ++calls;
    const auto off = va - reinterpret_cast<uintptr_t>(m_->data());
    if (off >= m_->size()) return absl::NotFoundError("outside the pool");
    Folio* f = m_->folio_at(off);
    return table.Map(f, f->data, kRW);
  }
  int calls = 0;

 private:
  Mapped* m_;
};

TEST(GupPopulateTest, SlowPathPopulatesWhatIsMissing) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 4);
  HUGEMM_ASSERT_OK(e);
  absl::StatusOr<std::unique_ptr<Mapped>> mo =
      MapFolios(std::move(*e), [](size_t i) { return i % 2 == 0; });
  HUGEMM_ASSERT_OK(mo);
  Mapped& m = **mo;
  ExtentPopulator populator(&m);
  Pinner pinner(*m.table, {.populator = &populator});
  std::vector<PageRef> pages(2048);
  // FAST_ONLY never populates.
  absl::StatusOr<size_t> n =
      pinner.PinPages(m.data(), 2048, kGupPin | kGupFastOnly, absl::MakeSpan(pages));
  EXPECT_FALSE(n.ok());
  EXPECT_EQ(populator.calls, 0);
  EXPECT_EQ(m.folios[0]->pincount(), 0);
  n = pinner.PinPages(m.data(), 2048, kGupPin, absl::MakeSpan(pages));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(populator.calls, 2);
  for (auto& f : m.folios) EXPECT_EQ(f->pincount(), 512);
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n));
  // Beyond the pool: the populator's error, named.
  n = pinner.PinPages(m.data() + m.size() - kPageSize4K, 2, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(n.status().message(), HasSubstr("outside the pool"));
  for (auto& f : m.folios) EXPECT_EQ(f->pincount(), 0);
}

TEST(GupBadInputTest, ErrorsNeverCrashOrLeak) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 16);
  HUGEMM_ASSERT_OK(e);
  absl::StatusOr<std::unique_ptr<Mapped>> mo = MapAll(std::move(*e));
  HUGEMM_ASSERT_OK(mo);
  Mapped& m = **mo;
  const auto base = m.Counts();
  Pinner pinner(*m.table);
  PageRef pages[17];
  FolioSpan spans[16];
  DmaSegment segs[16];
  EXPECT_EQ(pinner.PinPages(m.data(), 4, kGupPin, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*pinner.PinPages(m.data(), 0, kGupPin, {}), 0u);
  EXPECT_EQ(pinner.PinPages(m.data(), 1, kGupNone, absl::MakeSpan(pages)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner.PinPages(m.data(), 1, kGupPin | kGupGet, absl::MakeSpan(pages)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner.PinPages(m.data(), 1, GupFlags{1u << 20}, absl::MakeSpan(pages)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner.PinPages(m.data(), ~size_t{0}, kGupPin, absl::MakeSpan(pages)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      pinner.PinFolios(m.data(), ~size_t{0}, kGupPin, absl::MakeSpan(spans, 16)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner.PinFolios(m.data(), 4096, kGupPin, absl::Span<FolioSpan>()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      pinner.PinSegments(m.data(), 4096, kGupPin, 100, absl::MakeSpan(segs, 16)).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pinner.PinPages(nullptr, 1, kGupPin, absl::MakeSpan(pages)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(pinner
                .PinPages(reinterpret_cast<void*>(~uintptr_t{0} - 4095), 1, kGupPin,
                          absl::MakeSpan(pages))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);  // its end wraps
  EXPECT_EQ(pinner
                .PinPages(reinterpret_cast<void*>(~uintptr_t{0} - 8191), 1, kGupPin,
                          absl::MakeSpan(pages))
                .status()
                .code(),
            absl::StatusCode::kNotFound);  // beyond the table's address space
  // Past the end: the mapped part is given back.
  absl::StatusOr<size_t> n = pinner.PinPages(m.data(), 17, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(n.status().message(), HasSubstr("PIN"));
  EXPECT_EQ(m.Counts(), base);
  // Refcount overflow on an order-0 pin: refused, nothing taken.
  m.folios[3]->counts.store(Folio::CountsWord(std::numeric_limits<int32_t>::max() - 10, 0));
  n = pinner.PinPages(m.data(), 16, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kResourceExhausted) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("overflow"));
  m.folios[3]->counts.store(Folio::CountsWord(base[3].first, base[3].second));
  EXPECT_EQ(m.Counts(), base);
  // Unpins of nothing are no-ops.
  EXPECT_EQ(pinner.UnpinPages({}), 0u);
  EXPECT_EQ(pinner.UnpinFolios({}, RefKind::kPin), 0u);
  EXPECT_EQ(m.Counts(), base);
}

// A folio of 4G (a table of another geometry can map one) has pages a PageRef's 18-bit
// index cannot name: the page array refuses it and a pinned range's page array stops
// before it, rather than write entries that name another descriptor.
TEST(GupBadInputTest, AFolioAPageRefCannotEncodeIsRefusedOrLeftOut) {
  PageTable table(DetectHostGeometry());
  Folio big;
  auto* const va = reinterpret_cast<std::byte*>(uintptr_t{1} << 40);  // never touched
  InitFolio(&big, {.order = 20, .head_pfn = 0x100000, .data = va});
  ASSERT_FALSE(PageRef::Encodable(&big));
  HUGEMM_ASSERT_OK(table.Map(&big, va, kProtRead | kProtWrite));
  const int32_t refs = big.refcount();
  Pinner pinner(table);
  std::byte* const at = va + (uint64_t{3} << 30);
  PageRef pages[4];
  absl::StatusOr<size_t> n = pinner.PinPages(at, 4, kGupPin, absl::MakeSpan(pages));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
  EXPECT_EQ(big.refcount(), refs);
  absl::StatusOr<PinnedRange> r = pinner.Pin(at, 4 * kPageSize4K, kGupPin);
  HUGEMM_ASSERT_OK(r);
  EXPECT_EQ(r->page_count(), 4u);
  ASSERT_EQ(r->spans().size(), 1u);
  EXPECT_EQ(r->spans()[0].folio, &big);
  EXPECT_EQ(r->Pages(absl::MakeSpan(pages)), 0u) << "an entry naming the wrong descriptor";
  r->Release();
  EXPECT_EQ(big.refcount(), refs);
  EXPECT_EQ(big.pincount(), 0);
  HUGEMM_ASSERT_OK(table.Unmap(va, big.size()));
}

TEST(GupOrderZeroTest, BiasAndMaybeDmaPinned) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 4);
  HUGEMM_ASSERT_OK(e);
  absl::StatusOr<std::unique_ptr<Mapped>> mo = MapAll(std::move(*e));
  HUGEMM_ASSERT_OK(mo);
  Mapped& m = **mo;
  Pinner pinner(*m.table);
  PageRef pin[1], get[1];
  const int32_t base = m.folios[1]->refcount();
  HUGEMM_ASSERT_OK(pinner.PinPages(m.data() + kPageSize4K, 1, kGupGet, absl::MakeSpan(get)));
  EXPECT_EQ(m.folios[1]->refcount(), base + 1);
  EXPECT_FALSE(pinner.MaybeDmaPinned(m.data() + kPageSize4K));
  HUGEMM_ASSERT_OK(pinner.PinPages(m.data() + kPageSize4K, 1, kGupPin, absl::MakeSpan(pin)));
  EXPECT_EQ(m.folios[1]->refcount(), base + 1 + kPinBias);
  EXPECT_EQ(m.folios[1]->pincount(), 0);
  EXPECT_TRUE(pinner.MaybeDmaPinned(m.data() + kPageSize4K));
  EXPECT_FALSE(pinner.MaybeDmaPinned(m.data()));
  pinner.UnpinPages(absl::MakeConstSpan(pin, 1));
  EXPECT_FALSE(pinner.MaybeDmaPinned(m.data() + kPageSize4K));
  pinner.UnpinPages(absl::MakeConstSpan(get, 1));
  EXPECT_EQ(m.folios[1]->refcount(), base);
  EXPECT_FALSE(pinner.MaybeDmaPinned(m.data() + 100 * kPageSize4K));  // unmapped
}

TEST(GupExternalTest, BorrowedMemoryRefusesLongterm) {
  const size_t len = 16 * kPageSize4K;
  void* p =
      mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  {
    PageTable table(DetectHostGeometry());
    absl::StatusOr<uint64_t> id = table.RegisterExternal(p, len);
    HUGEMM_ASSERT_OK(id);
    Pinner pinner(table);
    PageRef pages[16];
    absl::StatusOr<size_t> n =
        pinner.PinPages(p, 16, kGupPin | kGupLongterm, absl::MakeSpan(pages));
    EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
    EXPECT_THAT(n.status().message(), HasSubstr("borrowed"));
    n = pinner.PinPages(p, 16, kGupPin, absl::MakeSpan(pages));
    HUGEMM_ASSERT_OK(n);
    pinner.UnpinPages(absl::MakeConstSpan(pages, *n));
    HUGEMM_ASSERT_OK(table.UnregisterExternal(*id));
  }
  munmap(p, len);
}

// Memory the program mapped read-only: a device may read it, never write it.
TEST(GupExternalTest, ReadOnlyMappingRefusesWritePins) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  void* p = mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(mprotect(p, kPageSize2M, PROT_READ), 0);
  {
    PageTable table(DetectHostGeometry());
    absl::StatusOr<uint64_t> id = table.RegisterExternal(p, kPageSize2M);
    HUGEMM_ASSERT_OK(id);
    Pinner pinner(table);
    std::vector<PageRef> pages(16);
    absl::StatusOr<size_t> n =
        pinner.PinPages(p, pages.size(), kGupPin | kGupWrite, absl::MakeSpan(pages));
    EXPECT_EQ(n.status().code(), absl::StatusCode::kPermissionDenied) << n.status();
    EXPECT_THAT(n.status().message(), HasSubstr("read-only"));
    n = pinner.PinPages(p, pages.size(), kGupPin, absl::MakeSpan(pages));
    HUGEMM_ASSERT_OK(n);
    EXPECT_EQ(*n, pages.size());
    pinner.UnpinPages(pages);
    HUGEMM_ASSERT_OK(table.UnregisterExternal(*id));
  }
  munmap(p, kPageSize2M);
}

// Registered memory with pins on it: unregister is refused and changes nothing.
class GupExternal2MTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
    void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    buf_ = static_cast<std::byte*>(p);
    ASSERT_EQ(mprotect(buf_ + kPageSize2M, kPageSize2M, PROT_READ), 0);
    absl::StatusOr<uint64_t> id = table_.RegisterExternal(buf_, kLen);
    HUGEMM_ASSERT_OK(id);
    id_ = *id;
  }
  void TearDown() override {
    if (buf_ != nullptr) munmap(buf_, kLen);
  }

  // Everything a registration gives still works: translations, leaves and pins.
  void ExpectStillRegistered(const std::vector<LogicalLeaf>& leaves_before) {
    std::optional<Translation> t = table_.Translate(buf_ + kPageSize2M + 5 * kPageSize4K);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->page, 5u);
    std::vector<LogicalLeaf> leaves;
    table_.Walk(buf_, kLen, [&](const LogicalLeaf& l) { leaves.push_back(l); });
    ASSERT_EQ(leaves.size(), leaves_before.size());
    for (size_t i = 0; i < leaves.size(); ++i) {
      EXPECT_EQ(leaves[i].va, leaves_before[i].va);
      EXPECT_EQ(leaves[i].bytes, leaves_before[i].bytes);
      EXPECT_EQ(leaves[i].prot, leaves_before[i].prot);
      EXPECT_EQ(leaves[i].folio, leaves_before[i].folio);
    }
    std::vector<PageRef> pages(4);
    absl::StatusOr<size_t> n = pinner_.PinPages(buf_, 4, kGupPin, absl::MakeSpan(pages));
    HUGEMM_ASSERT_OK(n);
    pinner_.UnpinPages(pages);
  }
  std::vector<LogicalLeaf> Leaves() const {
    std::vector<LogicalLeaf> out;
    table_.Walk(buf_, kLen, [&](const LogicalLeaf& l) { out.push_back(l); });
    return out;
  }

  static constexpr size_t kLen = 2 * kPageSize2M;
  std::byte* buf_ = nullptr;
  PageTable table_{DetectHostGeometry()};
  Pinner pinner_{table_};
  uint64_t id_ = 0;
};

TEST_F(GupExternal2MTest, UnregisterOfPinnedMemoryIsRefusedAndChangesNothing) {
  HUGEMM_ASSERT_OK(table_.Split(buf_));  // the shape of the mappings is kept too
  const std::vector<LogicalLeaf> before = Leaves();
  std::vector<PageRef> pinned(10);
  HUGEMM_ASSERT_OK(pinner_.PinPages(buf_ + kPageSize2M, 10, kGupPin, absl::MakeSpan(pinned)));
  absl::Status st = table_.UnregisterExternal(id_);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_THAT(st.message(), HasSubstr("pinned"));
  ExpectStillRegistered(before);

  pinner_.UnpinPages(pinned);
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
  EXPECT_FALSE(table_.Translate(buf_).has_value());
  EXPECT_EQ(table_.UnregisterExternal(id_).code(), absl::StatusCode::kNotFound);
}

// A pin that lands between the check and the unmap: the mappings are put back.
TEST_F(GupExternal2MTest, PinRacingTheUnmapPutsTheMappingsBack) {
  HUGEMM_ASSERT_OK(table_.Protect(buf_ + 3 * kPageSize4K, kPageSize4K, kProtRead));
  const std::vector<LogicalLeaf> before = Leaves();
  std::vector<PageRef> pinned(10);
  int pins = 0;
  RangeSubscription sub(
      table_.notifiers(), buf_, kLen, {.invalidate_start = [&](const Invalidation& inv) {
        if (inv.reason != InvalidateReason::kUnmap || pins != 0) return;
        ++pins;
        absl::StatusOr<size_t> n =
            pinner_.PinPages(buf_ + kPageSize2M, 10, kGupPin, absl::MakeSpan(pinned));
        EXPECT_TRUE(n.ok()) << n.status();
      }});
  absl::Status st = table_.UnregisterExternal(id_);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(pins, 1);
  ExpectStillRegistered(before);
  EXPECT_EQ(before.size(), Leaves().size());

  pinner_.UnpinPages(pinned);
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
  EXPECT_FALSE(table_.Translate(buf_ + kPageSize2M).has_value());
}

// A protection is no GUP flag, and neither is a plain integer: Pin(p, n, kProtWrite)
// does not compile.
static_assert(!std::is_invocable_v<decltype(&Pinner::Pin), Pinner&, const void*, size_t, Prot>);
static_assert(!std::is_invocable_v<decltype(&Pinner::Pin), Pinner&, const void*, size_t, uint32_t>);
static_assert(std::is_invocable_v<decltype(&Pinner::Pin), Pinner&, const void*, size_t, GupFlags>);
static_assert(!std::is_convertible_v<Prot, GupFlags> && !std::is_convertible_v<GupFlags, Prot>);

TEST(GupFlagsTest, Names) {
  EXPECT_EQ(GupFlagsName(kGupPin | kGupWrite | kGupLongterm), "PIN|WRITE|LONGTERM");
  EXPECT_EQ(GupFlagsName(kGupNone), "0");
  EXPECT_EQ(GupFlagsName(kGupGet | GupFlags{1u << 9}), "GET|0x200");
}

// A refused flag set is named whole, and the bits that are wrong in it.
TEST(GupFlagsTest, RefusalsNameTheFlags) {
  PageTable table(DetectHostGeometry());
  Pinner pinner(table);
  PageRef pages[1];
  absl::Status st =
      pinner.PinPages(&pages, 1, kGupPin | GupFlags{1u << 9}, absl::MakeSpan(pages)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(st.message(), HasSubstr("PIN|0x200: unknown bits 0x200")) << st;
  st = pinner.PinPages(&pages, 1, kGupGet | kGupLongterm, absl::MakeSpan(pages)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(st.message(), HasSubstr("GET|LONGTERM: LONGTERM is only for PIN")) << st;
  st = pinner.PinPages(&pages, 1, kGupWrite, absl::MakeSpan(pages)).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(st.message(), HasSubstr("WRITE: need exactly one of PIN and GET")) << st;
}

}  // namespace
}  // namespace hugemm
