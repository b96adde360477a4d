// Many threads pinning and unpinning the same folios while writers change the mappings
// under them: every count returns to its baseline (run under ThreadSanitizer too).
#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/gup.h"
#include "tests/gup_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::kRW;
using ::hugemm::testing::MapAll;
using ::hugemm::testing::MapExtent;
using ::hugemm::testing::Mapped;

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kRounds = 300;
#else
constexpr int kRounds = 3000;
#endif

std::unique_ptr<Mapped> Map2M(size_t pages) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, pages);
  EXPECT_TRUE(e.ok()) << e.status();
  if (!e.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Mapped>> m = MapAll(std::move(*e));
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// Pins in every shape, checks what it got, gives it back.
void PinLoop(Pinner& pinner, Mapped& m, int seed, std::atomic<bool>& stop, int* failures) {
  std::vector<PageRef> pages(m.pages4k());
  std::vector<FolioSpan> spans(m.folios.size());
  std::vector<DmaSegment> segs(m.pages4k());
  for (int i = 0; i < kRounds && !stop.load(std::memory_order_relaxed); ++i) {
    const size_t first =
        (static_cast<size_t>(seed) * 131 + static_cast<size_t>(i) * 977) % m.pages4k();
    const size_t n =
        1 + (static_cast<size_t>(i) * 37 + static_cast<size_t>(seed)) % (m.pages4k() - first);
    std::byte* va = m.data() + first * kPageSize4K;
    const GupFlags kind = (i + seed) % 3 == 0 ? kGupGet : kGupPin;
    switch (i % 3) {
      case 0: {
        absl::StatusOr<size_t> got =
            pinner.PinPages(va, n, kind | kGupWrite, absl::MakeSpan(pages));
        if (!got.ok()) {
          ++*failures;
          break;
        }
        for (size_t k = 0; k < *got; ++k) {
          if (pages[k].address() != va + k * kPageSize4K) ADD_FAILURE() << "wrong page " << k;
        }
        pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *got), /*dirty=*/true);
        break;
      }
      case 1: {
        absl::StatusOr<size_t> got =
            pinner.PinFolios(va, n * kPageSize4K, kind, absl::MakeSpan(spans));
        if (!got.ok()) {
          ++*failures;
          break;
        }
        pinner.UnpinFolios(absl::MakeConstSpan(spans.data(), *got),
                           kind == kGupPin ? RefKind::kPin : RefKind::kGet);
        break;
      }
      case 2: {
        absl::StatusOr<PinnedRange> r =
            pinner.Pin(va, n * kPageSize4K, kind | (kind == kGupPin ? kGupLongterm : kGupNone));
        if (!r.ok()) ++*failures;
        break;
      }
    }
  }
}

TEST(GupConcurrencyTest, PinnersAgainstProtectionChanges) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  std::unique_ptr<Mapped> m = Map2M(4);
  ASSERT_NE(m, nullptr);
  const auto base = m->Counts();
  Pinner pinner(*m->table);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<int> failures(3, 0);
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] { PinLoop(pinner, *m, t, stop, &failures[t]); });
  }
  // Protection changes that keep the memory writable: every pin must still succeed,
  // through the re-check and the slow path.
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      const size_t f = static_cast<size_t>(i) % 4;
      EXPECT_TRUE(
          m->table->Protect(m->folios[f]->data, kPageSize2M, kRW | (i & 4 ? kProtExec : kProtNone))
              .ok());
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  writer.join();
  for (int f : failures) EXPECT_EQ(f, 0);
  EXPECT_EQ(m->Counts(), base);
}

TEST(GupConcurrencyTest, PinnersAgainstUnmapAndRemap) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  std::unique_ptr<Mapped> m = Map2M(4);
  ASSERT_NE(m, nullptr);
  const auto base = m->Counts();
  Pinner pinner(*m->table);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<int> failures(3, 0);
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] { PinLoop(pinner, *m, t, stop, &failures[t]); });
  }
  // Folio 2 comes and goes, and is split on the way: pins over it fail or succeed, and
  // whatever happens no reference stays behind.
  std::thread writer([&] {
    Folio* f = m->folios[2].get();
    for (int i = 0; !stop.load(); ++i) {
      EXPECT_TRUE(m->table->Unmap(f->data, kPageSize2M).ok());
      EXPECT_TRUE(m->table->Map(f, f->data, kRW).ok());
      if (i % 2) {
        EXPECT_TRUE(m->table->Split(f->data).ok());
      }
    }
  });
  for (auto& t : threads) t.join();
  stop.store(true);
  writer.join();
  // Back to one PMD leaf for the baseline.
  HUGEMM_ASSERT_OK(m->table->Unmap(m->folios[2]->data, kPageSize2M));
  HUGEMM_ASSERT_OK(m->table->Map(m->folios[2].get(), m->folios[2]->data, kRW));
  EXPECT_EQ(m->Counts(), base);
}

TEST(GupConcurrencyTest, OrderZeroFoliosFromManyThreads) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 64);
  HUGEMM_ASSERT_OK(e);
  absl::StatusOr<std::unique_ptr<Mapped>> mo = MapAll(std::move(*e));
  HUGEMM_ASSERT_OK(mo);
  Mapped& m = **mo;
  const auto base = m.Counts();
  Pinner pinner(m.table.operator*());
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] { PinLoop(pinner, m, t, stop, &failures[t]); });
  }
  for (auto& t : threads) t.join();
  for (int f : failures) EXPECT_EQ(f, 0);
  EXPECT_EQ(m.Counts(), base);
}

}  // namespace
}  // namespace hugemm
