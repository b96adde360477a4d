// Range subscriptions: callbacks and the sequence word on unmap, split, protect and
// device-exclusive changes.
#include "hugemm/notify.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::FakeFolio;
using ::hugemm::testing::kBase;
using ::hugemm::testing::kBasePfn;
using ::hugemm::testing::kRW;
using ::hugemm::testing::Ptr;

// A range hears exactly the changes that overlap it: one that runs to the end of the
// address space hears everything above its start, an empty one hears nothing.
TEST(NotifierRegistryTest, RangesToTheEndAndEmptyRangesOverlapExactly) {
  NotifierRegistry registry;
  std::vector<std::string> heard;
  auto listen = [&](std::string name) {
    return NotifierCallbacks{
        .invalidate_start = [&heard, name](const Invalidation& /*inv*/) { heard.push_back(name); }};
  };
  const uint64_t to_end = registry.Subscribe(Ptr(kBase), ~size_t{0}, listen("to the end"));
  const uint64_t empty = registry.Subscribe(Ptr(kBase + kPageSize4K), 0, listen("empty"));
  const uint64_t last =
      registry.Subscribe(Ptr(~uintptr_t{0} - kPageSize4K + 1), kPageSize4K, listen("last page"));
  auto change = [&](uintptr_t va, size_t length) {
    heard.clear();
    const Invalidation inv{.va = va, .length = length};
    registry.InvalidateStart(inv);
    registry.InvalidateEnd(inv);
    return heard;
  };
  using Heard = std::vector<std::string>;
  EXPECT_EQ(change(kBase, kPageSize2M), Heard{"to the end"});
  EXPECT_EQ(change(kBase + kPageSize1G, kPageSize4K), Heard{"to the end"});
  EXPECT_EQ(change(kBase - kPageSize4K, kPageSize4K), Heard{});
  EXPECT_EQ(change(~uintptr_t{0} - kPageSize4K + 1, kPageSize4K),
            (Heard{"to the end", "last page"}));
  EXPECT_EQ(change(kBase, 0), Heard{});
  for (uint64_t id : {to_end, empty, last}) HUGEMM_ASSERT_OK(registry.Unsubscribe(id));
}

TEST(RangeSubscriptionTest, EveryKindOfChangeBumpsTheGeneration) {
  PageTable table(X86_64Geometry(false));
  auto a = FakeFolio(kPageSize2M, kBase, kBasePfn);
  auto b = FakeFolio(kPageSize2M, kBase + kPageSize2M, kBasePfn + 512);
  HUGEMM_ASSERT_OK(table.Map(a.get(), Ptr(kBase), kRW));
  HUGEMM_ASSERT_OK(table.Map(b.get(), Ptr(kBase + kPageSize2M), kRW));

  std::vector<InvalidateReason> starts, ends;
  bool in_progress_seen = false;
  std::unique_ptr<RangeSubscription> sub;
  sub = std::make_unique<RangeSubscription>(
      table.notifiers(), Ptr(kBase), kPageSize2M,
      NotifierCallbacks{
          .invalidate_start =
              [&](const Invalidation& inv) {
                starts.push_back(inv.reason);
                in_progress_seen = sub->invalidating();
              },
          .invalidate_end = [&](const Invalidation& inv) { ends.push_back(inv.reason); }});
  const uint64_t seq0 = sub->sequence().load();
  EXPECT_TRUE(RangeSubscription::Stable(seq0));
  EXPECT_EQ(sub->generation(), 0u);

  // Outside the range: nothing.
  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase + kPageSize2M), kPageSize2M, kProtRead));
  EXPECT_EQ(sub->sequence().load(), seq0);

  HUGEMM_ASSERT_OK(table.Split(Ptr(kBase)));
  EXPECT_TRUE(in_progress_seen);
  EXPECT_EQ(sub->generation(), 1u);
  EXPECT_FALSE(sub->invalidating());
  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase), kPageSize4K, kProtRead));
  EXPECT_EQ(sub->generation(), 2u);
  const int device = 0;
  HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(kBase + 5 * kPageSize4K), &device));
  EXPECT_EQ(sub->generation(), 3u);
  HUGEMM_ASSERT_OK(table.RestoreExclusive(Ptr(kBase + 5 * kPageSize4K)));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
  EXPECT_EQ(sub->generation(), 5u);
  EXPECT_TRUE(RangeSubscription::Stable(sub->sequence().load()));
  const std::vector<InvalidateReason> want = {InvalidateReason::kSplit, InvalidateReason::kProtect,
                                              InvalidateReason::kExclusive,
                                              InvalidateReason::kRestore, InvalidateReason::kUnmap};
  EXPECT_EQ(starts, want);
  EXPECT_EQ(ends, want);

  // After destruction the table calls nothing of ours.
  sub.reset();
  HUGEMM_ASSERT_OK(table.Map(a.get(), Ptr(kBase), kRW));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
  EXPECT_EQ(starts.size(), 5u);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase + kPageSize2M), kPageSize2M));
}

TEST(RangeSubscriptionTest, OwnDeviceExclusiveIsNotReported) {
  PageTable table(X86_64Geometry(false));
  auto a = FakeFolio(kPageSize4K, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(a.get(), Ptr(kBase), kRW));
  const int device = 0;
  RangeSubscription mine(table.notifiers(), Ptr(kBase), kPageSize4K, {}, &device);
  RangeSubscription other(table.notifiers(), Ptr(kBase), kPageSize4K);
  HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(kBase), &device));
  EXPECT_EQ(mine.generation(), 0u);
  EXPECT_EQ(other.generation(), 1u);
  HUGEMM_ASSERT_OK(table.RestoreExclusive(Ptr(kBase)));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize4K));
  EXPECT_EQ(mine.generation(), 1u);
}

// A subscription made while a change of its range is under way hears that change's start
// at once: its word is not stable until the change ends, so a registration cache that
// subscribes mid-change cannot take what it reads then for a stable mapping.
TEST(RangeSubscriptionTest, SubscribingMidChangeCountsTheChangeUnderWay) {
  NotifierRegistry registry;
  const int device = 0;
  const Invalidation unmap{kBase, kPageSize2M, InvalidateReason::kUnmap, nullptr};
  const Invalidation exclusive{kBase, kPageSize4K, InvalidateReason::kExclusive, &device};
  registry.InvalidateStart(unmap);
  registry.InvalidateStart(exclusive);

  std::vector<InvalidateReason> starts;
  RangeSubscription late(
      registry, Ptr(kBase + kPageSize4K), kPageSize4K,
      {.invalidate_start = [&](const Invalidation& inv) { starts.push_back(inv.reason); }});
  RangeSubscription apart(registry, Ptr(kBase + kPageSize2M), kPageSize4K);
  RangeSubscription owner(registry, Ptr(kBase), kPageSize4K, {}, &device);
  EXPECT_TRUE(late.invalidating());
  EXPECT_EQ(late.generation(), 1u);
  EXPECT_EQ(starts, std::vector<InvalidateReason>{InvalidateReason::kUnmap});
  EXPECT_EQ(apart.sequence().load(), 0u);
  // The owner hears the unmap, not its own device-exclusive change.
  EXPECT_EQ(owner.generation(), 1u);

  registry.InvalidateEnd(exclusive);
  EXPECT_TRUE(owner.invalidating());
  registry.InvalidateEnd(unmap);
  EXPECT_FALSE(late.invalidating());
  EXPECT_FALSE(owner.invalidating());
  EXPECT_EQ(late.generation(), 1u);

  // Ended changes are not replayed.
  RangeSubscription after(registry, Ptr(kBase), kPageSize2M);
  EXPECT_EQ(after.sequence().load(), 0u);
}

}  // namespace
}  // namespace hugemm
