// The walk hint a thread keeps from one pin to the next (runtime/pgtable/walk.h): it
// saves the descent from the root while the table's shape stays, and is dropped when a
// table it could name is unhooked, when the pin is on another table, or when a table was
// destroyed and another made in its place. Synthetic folios over fake addresses: a pin
// touches descriptors and tables, never the data. Run under ASan, a stale hint would be a
// use after free.
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/gup.h"
#include "runtime/gup/pinner_test_peer.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::gup_internal::PinnerTestPeer;
using ::hugemm::testing::FakeFolio;
using ::hugemm::testing::kBase;
using ::hugemm::testing::kBasePfn;
using ::hugemm::testing::kRW;
using ::hugemm::testing::Ptr;

constexpr size_t kFolios = 1024;  // two PTE tables of 4K folios

// 4K folios at kBase, each mapped by a PTE, in a table of its own.
struct Table4K {
  std::vector<std::unique_ptr<Folio>> folios;  // outlive the table, which drops references
  std::unique_ptr<PageTable> table = std::make_unique<PageTable>(X86_64Geometry(false));

  absl::Status MapAll(uint64_t pfn_base) {
    folios.clear();
    for (size_t i = 0; i < kFolios; ++i) {
      folios.push_back(FakeFolio(kPageSize4K, kBase + i * kPageSize4K, pfn_base + i));
      if (absl::Status st = table->Map(folios.back().get(), Ptr(kBase + i * kPageSize4K), kRW);
          !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }
};

// Pins page i alone and says which folio the span names (nullptr on failure).
Folio* PinnedFolio(Pinner& pinner, size_t i) {
  FolioSpan span;
  absl::StatusOr<size_t> n = pinner.PinFolios(Ptr(kBase + i * kPageSize4K), kPageSize4K, kGupGet,
                                              absl::MakeSpan(&span, 1));
  if (!n.ok() || *n != 1) return nullptr;
  pinner.UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kGet);
  return span.folio;
}

TEST(GupHint, ConsecutivePinsFindTheirFolios) {
  Table4K t;
  HUGEMM_ASSERT_OK(t.MapAll(kBasePfn));
  Pinner pinner(*t.table);
  for (size_t i = 0; i < kFolios; i += 7) {
    EXPECT_EQ(PinnedFolio(pinner, i), t.folios[i].get()) << i;
  }
  for (size_t i = kFolios; i-- > 0;) EXPECT_EQ(PinnedFolio(pinner, i), t.folios[i].get()) << i;
}

// Unmapping everything prunes the PTE tables the hint named and frees them after a grace
// period; the memory is then mapped again by new tables and new folios. The next pin must
// descend from the root: the hint was dropped with the generation the prune bumped.
TEST(GupHint, DroppedWhenItsTableIsUnhooked) {
  Table4K t;
  HUGEMM_ASSERT_OK(t.MapAll(kBasePfn));
  Pinner pinner(*t.table);
  ASSERT_EQ(PinnedFolio(pinner, 5), t.folios[5].get());
  for (int round = 0; round < 4; ++round) {
    HUGEMM_ASSERT_OK(t.table->Unmap(Ptr(kBase), kFolios * kPageSize4K));
    EXPECT_EQ(PinnedFolio(pinner, 5), nullptr) << "nothing is mapped";
    std::vector<std::unique_ptr<Folio>> old = std::move(t.folios);
    HUGEMM_ASSERT_OK(t.MapAll(kBasePfn + (round + 1) * kFolios));
    for (size_t i : {size_t{5}, size_t{6}, size_t{600}}) {
      EXPECT_EQ(PinnedFolio(pinner, i), t.folios[i].get()) << "round " << round << " page " << i;
    }
  }
}

// One thread pinning the same addresses in two tables that map them to different folios.
TEST(GupHint, NeverCarriedToAnotherTable) {
  Table4K a, b;
  HUGEMM_ASSERT_OK(a.MapAll(kBasePfn));
  HUGEMM_ASSERT_OK(b.MapAll(kBasePfn + kFolios));
  Pinner pa(*a.table), pb(*b.table);
  for (size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(PinnedFolio(pa, i), a.folios[i].get()) << i;
    EXPECT_EQ(PinnedFolio(pb, i), b.folios[i].get()) << i;
  }
}

// A table destroyed and another made, very likely at the same address: the new table's
// generation starts where no other table's does, so the old hint is not taken for its.
TEST(GupHint, NeverCarriedToATableMadeInAnotherOnesPlace) {
  for (int round = 0; round < 8; ++round) {
    Table4K t;
    HUGEMM_ASSERT_OK(t.MapAll(kBasePfn + round * kFolios));
    Pinner pinner(*t.table);
    EXPECT_EQ(PinnedFolio(pinner, 3), t.folios[3].get()) << round;
    EXPECT_EQ(PinnedFolio(pinner, 700), t.folios[700].get()) << round;
  }
}

// A lookup on another table while a pin is under way on this thread (here from the hook
// between grab and re-check): the inner lookup takes no hint (it descends from the root)
// and leaves the pin's alone, so each finds its own table's folios.
TEST(GupHint, NestedLookupOnAnotherTableLeavesThePinsHintAlone) {
  Table4K a, b;
  HUGEMM_ASSERT_OK(a.MapAll(kBasePfn));
  HUGEMM_ASSERT_OK(b.MapAll(kBasePfn + kFolios));
  Pinner pinner(*a.table);
  int inner_ok = 0;
  PinnerTestPeer::SetAfterGrab(pinner, [&](uintptr_t va) {
    ReadSection rs;
    std::optional<LeafSnapshot> s = b.table->Lookup(Ptr(va + 513 * kPageSize4K));
    if (s.has_value() && s->leaf.folio == b.folios[(va - kBase) / kPageSize4K + 513].get()) {
      ++inner_ok;
    }
  });
  std::vector<FolioSpan> spans(kFolios);
  absl::StatusOr<size_t> n =
      pinner.PinFolios(Ptr(kBase), 500 * kPageSize4K, kGupPin, absl::MakeSpan(spans));
  HUGEMM_ASSERT_OK(n);
  ASSERT_EQ(*n, 500u);
  for (size_t i = 0; i < 500; ++i) EXPECT_EQ(spans[i].folio, a.folios[i].get()) << i;
  EXPECT_EQ(inner_ok, 500);
  pinner.UnpinFolios(absl::MakeConstSpan(spans.data(), *n), RefKind::kPin);
}

}  // namespace
}  // namespace hugemm
