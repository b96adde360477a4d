// The pin of a range inside one leaf, the straight-line case of PinFolios and PinPages
// (fast_path.h, PinOneLeaf): every way it can say no must leave nothing taken and give
// the general loop's answer, and what it does pin must be exactly that range. Real 2M
// hugetlb folios.
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/gup.h"
#include "runtime/gup/pinner_test_peer.h"
#include "tests/gup_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::testing::HasSubstr;

class GupOneLeafTest : public testing::Folios2MTest<3> {};

// Whole folios, a part in the middle and a single byte, by PIN and by GET: one span each,
// naming the folio, its first page and the pages, and exactly those references.
TEST_F(GupOneLeafTest, PinsExactlyTheRangeInsideTheFolio) {
  Pinner pinner(*m().table);
  struct Case {
    size_t folio, page, bytes;
    uint32_t first, pages;
  };
  for (const Case c : {Case{0, 0, kPageSize2M, 0, 512}, Case{1, 5, 3 * kPageSize4K, 5, 3},
                       Case{2, 511, 1, 511, 1}, Case{1, 100, 412 * kPageSize4K, 100, 412}}) {
    for (const GupFlags kind : {kGupPin, kGupGet}) {
      FolioSpan spans[2] = {};
      absl::StatusOr<size_t> n =
          pinner.PinFolios(at(c.folio, c.page), c.bytes, kind | kGupWrite, absl::MakeSpan(spans));
      HUGEMM_ASSERT_OK(n);
      ASSERT_EQ(*n, 1u);
      EXPECT_EQ(spans[0].folio, folio(c.folio));
      EXPECT_EQ(spans[0].first_page, c.first);
      EXPECT_EQ(spans[0].pages, c.pages);
      EXPECT_EQ(spans[1].folio, nullptr) << "one span written";
      const auto pinned = static_cast<int32_t>(c.pages);
      EXPECT_EQ(folio(c.folio)->refcount(), base_[c.folio].first + pinned);
      EXPECT_EQ(folio(c.folio)->pincount(), base_[c.folio].second + (kind == kGupPin ? pinned : 0));
      pinner.UnpinFolios(absl::MakeConstSpan(spans, 1),
                         kind == kGupPin ? RefKind::kPin : RefKind::kGet);
      EXPECT_EQ(m().Counts(), base_);
    }
  }
}

// A range that goes on into the next folio is not one leaf: the general loop pins both.
TEST_F(GupOneLeafTest, ARangeIntoTheNextFolioGetsBoth) {
  Pinner pinner(*m().table);
  FolioSpan spans[3];
  absl::StatusOr<size_t> n =
      pinner.PinFolios(at(0, 510), 4 * kPageSize4K, kGupPin, absl::MakeSpan(spans));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 2u);
  EXPECT_EQ(spans[0].folio, folio(0));
  EXPECT_EQ(spans[0].pages, 2u);
  EXPECT_EQ(spans[1].folio, folio(1));
  EXPECT_EQ(spans[1].first_page, 0u);
  EXPECT_EQ(spans[1].pages, 2u);
  pinner.UnpinFolios(absl::MakeConstSpan(spans, *n), RefKind::kPin);
  EXPECT_EQ(m().Counts(), base_);
}

// Into a growing vector: the spans appended after what it held, and on failure the
// vector as it was and nothing taken.
TEST_F(GupOneLeafTest, AGrowingVectorGetsEveryFolioAppended) {
  Pinner pinner(*m().table);
  const FolioSpan kept{folio(2), 7, 1};
  std::vector<FolioSpan> spans = {kept};
  absl::StatusOr<size_t> n =
      pinner.PinFolios(at(0, 1), 3 * kPageSize2M - 2 * kPageSize4K, kGupPin | kGupWrite, &spans);
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 3u);
  ASSERT_EQ(spans.size(), 4u);
  EXPECT_EQ(spans[0].folio, kept.folio);
  EXPECT_EQ(spans[0].first_page, kept.first_page);
  EXPECT_EQ(spans[1].folio, folio(0));
  EXPECT_EQ(spans[1].first_page, 1u);
  EXPECT_EQ(spans[1].pages, 511u);
  EXPECT_EQ(spans[2].folio, folio(1));
  EXPECT_EQ(spans[2].pages, 512u);
  EXPECT_EQ(spans[3].folio, folio(2));
  EXPECT_EQ(spans[3].pages, 511u);
  pinner.UnpinFolios(absl::MakeConstSpan(spans).subspan(1), RefKind::kPin);
  EXPECT_EQ(m().Counts(), base_);

  spans = {kept};
  n = pinner.PinFolios(at(2, 0), 2 * kPageSize2M, kGupPin, &spans);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound) << n.status();
  ASSERT_EQ(spans.size(), 1u) << "the vector as it was";
  EXPECT_EQ(spans[0].folio, kept.folio);
  EXPECT_EQ(m().Counts(), base_);
  n = pinner.PinFolios(at(0, 0), kPageSize4K, kGupPin,
                       static_cast<std::vector<FolioSpan>*>(nullptr));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
}

// A folio mapped by PTEs after a split: a range inside one PTE is one leaf; a range over
// several PTEs of the folio is still one span.
TEST_F(GupOneLeafTest, SplitFolioOnePteOrSeveral) {
  HUGEMM_ASSERT_OK(m().table->Split(at(1, 0)));
  const auto base = m().Counts();
  Pinner pinner(*m().table);
  FolioSpan span;
  absl::StatusOr<size_t> n =
      pinner.PinFolios(at(1, 7), kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
  HUGEMM_ASSERT_OK(n);
  EXPECT_EQ(span.folio, folio(1));
  EXPECT_EQ(span.first_page, 7u);
  EXPECT_EQ(span.pages, 1u);
  pinner.UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin);
  n = pinner.PinFolios(at(1, 7), 9 * kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 1u);
  EXPECT_EQ(span.first_page, 7u);
  EXPECT_EQ(span.pages, 9u);
  EXPECT_EQ(folio(1)->pincount(), 9);
  pinner.UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin);
  EXPECT_EQ(m().Counts(), base);
}

// Each refusal inside one leaf: the error the general loop gives, nothing left taken,
// nothing written.
TEST_F(GupOneLeafTest, EveryRefusalTakesNothing) {
  Pinner pinner(*m().table);
  FolioSpan span{};
  // WRITE of a read-only leaf.
  HUGEMM_ASSERT_OK(m().table->Protect(at(0, 0), kPageSize2M, kProtRead));
  absl::StatusOr<size_t> n =
      pinner.PinFolios(at(0, 3), kPageSize4K, kGupPin | kGupWrite, absl::MakeSpan(&span, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kPermissionDenied) << n.status();
  // LONGTERM of a folio that may move: refused after the grab, which is given back.
  folio(1)->set_flag(kFolioBorrowed);
  n = pinner.PinFolios(at(1, 0), kPageSize2M, kGupPin | kGupLongterm, absl::MakeSpan(&span, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("LONGTERM"));
  folio(1)->clear_flag(kFolioBorrowed);
  // A device-exclusive entry.
  const int device = 0;
  HUGEMM_ASSERT_OK(m().table->MakeExclusive(at(2, 4), &device));
  const auto base = m().Counts();
  n = pinner.PinFolios(at(2, 4), kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
  EXPECT_THAT(n.status().message(), HasSubstr("device-exclusive"));
  EXPECT_EQ(m().Counts(), base);
  HUGEMM_ASSERT_OK(m().table->RestoreExclusive(at(2, 4)));
  // Bad flags, no room, nothing mapped.
  n = pinner.PinFolios(at(1, 0), kPageSize4K, kGupPin | kGupGet, absl::MakeSpan(&span, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
  n = pinner.PinFolios(at(1, 0), kPageSize4K, kGupPin, absl::Span<FolioSpan>());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
  n = pinner.PinFolios(m().data() + m().size(), kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kNotFound) << n.status();
  EXPECT_EQ(span.folio, nullptr) << "nothing written";
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(m().Counts()[i], base_[i]) << i;
  EXPECT_EQ(folio(2)->pincount(), 0);
}

// A page array takes the same straight line: an entry for each page of the range and
// nothing past it, exactly those references, and a refusal that takes and writes nothing.
TEST_F(GupOneLeafTest, PageArrayInsideTheFolio) {
  Pinner pinner(*m().table);
  for (const GupFlags kind : {kGupPin, kGupGet}) {
    // The second round finds the walk hint where the first left it.
    for (int round = 0; round < 2; ++round) {
      PageRef pages[8] = {};
      absl::StatusOr<size_t> n =
          pinner.PinPages(at(1, 100), 7, kind | kGupWrite, absl::MakeSpan(pages, 7));
      HUGEMM_ASSERT_OK(n);
      ASSERT_EQ(*n, 7u);
      for (uint32_t i = 0; i < 7; ++i) {
        EXPECT_EQ(pages[i].folio(), folio(1)) << i;
        EXPECT_EQ(pages[i].index(), 100 + i);
        EXPECT_EQ(pages[i].kind(), kind == kGupPin ? RefKind::kPin : RefKind::kGet);
      }
      EXPECT_EQ(pages[7].bits(), 0u) << "nothing written past the range";
      EXPECT_EQ(folio(1)->refcount(), base_[1].first + 7);
      EXPECT_EQ(folio(1)->pincount(), base_[1].second + (kind == kGupPin ? 7 : 0));
      pinner.UnpinPages(absl::MakeConstSpan(pages, 7), /*dirty=*/false);
      EXPECT_EQ(m().Counts(), base_);
    }
  }
  HUGEMM_ASSERT_OK(m().table->Protect(at(0, 0), kPageSize2M, kProtRead));
  PageRef ref;
  absl::StatusOr<size_t> n =
      pinner.PinPages(at(0, 3), 1, kGupPin | kGupWrite, absl::MakeSpan(&ref, 1));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kPermissionDenied) << n.status();
  EXPECT_EQ(ref.bits(), 0u) << "nothing written";
  EXPECT_EQ(m().Counts(), base_);
}

// A test hook or per-page references take the general loop: the same span, the same counts.
TEST_F(GupOneLeafTest, HookAndPerPageReferencesGiveTheSameSpan) {
  Pinner hooked(*m().table);
  int hooks = 0;
  gup_internal::PinnerTestPeer::SetAfterGrab(hooked, [&](uintptr_t) { ++hooks; });
  Pinner per_page(*m().table, {.granularity = RefGranularity::kPage});
  for (Pinner* p : {&hooked, &per_page}) {
    FolioSpan span;
    absl::StatusOr<size_t> n =
        p->PinFolios(at(2, 10), 6 * kPageSize4K, kGupPin, absl::MakeSpan(&span, 1));
    HUGEMM_ASSERT_OK(n);
    EXPECT_EQ(span.folio, folio(2));
    EXPECT_EQ(span.first_page, 10u);
    EXPECT_EQ(span.pages, 6u);
    EXPECT_EQ(folio(2)->pincount(), 6);
    p->UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin);
    EXPECT_EQ(m().Counts(), base_);
  }
  EXPECT_EQ(hooks, 1);
}

}  // namespace
}  // namespace hugemm
