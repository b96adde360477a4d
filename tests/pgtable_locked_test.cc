// PageTable::WithLeafLocked: the locked lookup GUP's slow path grabs references under.
#include <atomic>
#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "hugemm/pgtable.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::FakeFolio;
using ::hugemm::testing::kBase;
using ::hugemm::testing::kBasePfn;
using ::hugemm::testing::kRW;
using ::hugemm::testing::Ptr;

TEST(PageTableLockedTest, SeesTheLeafOrNothing) {
  PageTable table(X86_64Geometry(false));
  auto folio = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(folio.get(), Ptr(kBase), kRW));
  LogicalLeaf seen;
  EXPECT_TRUE(table.WithLeafLocked(Ptr(kBase + 5 * kPageSize4K + 7),
                                   [&](const LogicalLeaf& l) { seen = l; }));
  EXPECT_EQ(seen.folio, folio.get());
  EXPECT_EQ(seen.va, kBase);
  EXPECT_EQ(seen.bytes, kPageSize2M);
  EXPECT_EQ(seen.prot, kRW);
  bool called = false;
  EXPECT_FALSE(
      table.WithLeafLocked(Ptr(kBase + kPageSize2M), [&](const LogicalLeaf&) { called = true; }));
  EXPECT_FALSE(
      table.WithLeafLocked(Ptr(~uintptr_t{0}), [&](const LogicalLeaf&) { called = true; }));
  EXPECT_FALSE(called);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
}

TEST(PageTableLockedTest, WritersWaitUntilTheCallbackReturns) {
  PageTable table(X86_64Geometry(false));
  auto folio = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(folio.get(), Ptr(kBase), kRW));
  std::atomic<bool> split_done{false};
  std::thread writer;
  table.WithLeafLocked(Ptr(kBase), [&](const LogicalLeaf& l) {
    EXPECT_EQ(l.level, kPmdLevel);
    writer = std::thread([&] {
      EXPECT_TRUE(table.Split(Ptr(kBase)).ok());
      split_done.store(true);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // The split needs this leaf's table lock, which we hold.
    EXPECT_FALSE(split_done.load());
  });
  writer.join();
  EXPECT_TRUE(split_done.load());
  LogicalLeaf after;
  EXPECT_TRUE(table.WithLeafLocked(Ptr(kBase), [&](const LogicalLeaf& l) { after = l; }));
  EXPECT_EQ(after.level, kPteLevel);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
  EXPECT_EQ(folio->refcount(), 1);
}

// The other readers take no lock and pass a locked leaf; another locked lookup in the same
// table waits for the callback.
TEST(PageTableLockedTest, OnlyALockedLookupWaitsForTheCallback) {
  PageTable table(X86_64Geometry(false));
  auto folio = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(folio.get(), Ptr(kBase), kRW));
  std::atomic<bool> locked_seen{false};
  std::thread locked_reader;
  table.WithLeafLocked(Ptr(kBase), [&](const LogicalLeaf& /*leaf*/) {
    std::thread plain_reader([&] {
      EXPECT_TRUE(table.Translate(Ptr(kBase + kPageSize4K)).has_value());
      int leaves = 0;
      table.Walk(Ptr(kBase), kPageSize2M, [&](const LogicalLeaf& /*l*/) { ++leaves; });
      EXPECT_EQ(leaves, 1);
    });
    plain_reader.join();  // would never return if a plain reader took the lock
    locked_reader = std::thread([&] {
      EXPECT_TRUE(table.WithLeafLocked(Ptr(kBase + kPageSize4K),
                                       [&](const LogicalLeaf& /*l*/) { locked_seen = true; }));
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(locked_seen.load()) << "the leaf's table lock is ours";
  });
  locked_reader.join();
  EXPECT_TRUE(locked_seen.load());
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
}

}  // namespace
}  // namespace hugemm
