// Address -> registered-buffer slot: the O(1) path for buffers on 2M boundaries, the
// ordered map behind granules two buffers share and addresses above 2^47.
#include "runtime/api/slot_index.h"

#include <thread>

#include "gtest/gtest.h"

namespace hugemm::api_internal {
namespace {

constexpr uintptr_t k2M = uintptr_t{1} << 21;
constexpr uintptr_t k1G = uintptr_t{1} << 30;

TEST(SlotIndex, FindsTheSlotHoldingTheWholeRange) {
  SlotIndex index(16);
  const uintptr_t a = 7 * k1G, b = 9 * k1G + 4 * k2M;
  index.Insert(3, a, 4 * k2M);
  index.Insert(0, b, k1G);
  EXPECT_EQ(index.Find(a, 1), 3);
  EXPECT_EQ(index.Find(a + 4 * k2M - 4096, 4096), 3);
  EXPECT_EQ(index.Find(a + 4 * k2M - 4096, 4097), -1) << "runs past the buffer";
  EXPECT_EQ(index.Find(a + 4 * k2M, 1), -1);
  EXPECT_EQ(index.Find(a - 1, 1), -1);
  EXPECT_EQ(index.Find(b + k1G / 2, 128 << 10), 0);
  EXPECT_EQ(index.Find(b + k1G - 1, 1), 0);
  EXPECT_EQ(index.Find(b + k1G, 1), -1);
  index.Erase(3);
  EXPECT_EQ(index.Find(a, 1), -1);
  EXPECT_EQ(index.Find(b, 1), 0);
  index.Insert(3, a + k2M, k2M);  // a slot is reused for another buffer
  EXPECT_EQ(index.Find(a, 1), -1);
  EXPECT_EQ(index.Find(a + k2M + 5, 100), 3);
}

TEST(SlotIndex, SharedGranulesAreResolvedExactly) {
  // Three 4K-page buffers in one 2M granule, a fourth spanning into the next one.
  SlotIndex index(8);
  const uintptr_t g = 3 * k1G;
  index.Insert(1, g, 8192);
  index.Insert(2, g + 8192, 4096);
  index.Insert(5, g + 16384, k2M);
  EXPECT_EQ(index.Find(g + 4096, 4096), 1);
  EXPECT_EQ(index.Find(g + 8192, 4096), 2);
  EXPECT_EQ(index.Find(g + 12288, 1), -1) << "a hole between buffers";
  EXPECT_EQ(index.Find(g + 8192, 8192), -1) << "across two buffers";
  EXPECT_EQ(index.Find(g + k2M + 100, 10), 5) << "the next granule, shared with none";
  // As buffers go, the granule goes back to a single owner, then to none.
  index.Erase(1);
  index.Erase(2);
  EXPECT_EQ(index.Find(g, 1), -1);
  EXPECT_EQ(index.Find(g + 16384, 4096), 5);
  index.Erase(5);
  EXPECT_EQ(index.Find(g + 16384, 1), -1);
  EXPECT_EQ(index.Find(g + k2M, 1), -1);
}

TEST(SlotIndex, AddressesAbove47BitsAreFound) {
  SlotIndex index(4);
  const uintptr_t high = uintptr_t{1} << 52;
  index.Insert(2, high, k2M);
  EXPECT_EQ(index.Find(high + 10, 10), 2);
  EXPECT_EQ(index.Find(high + k2M, 1), -1);
  index.Erase(2);
  EXPECT_EQ(index.Find(high, 1), -1);
}

TEST(SlotIndex, ReadersRunBesideWriters) {
  SlotIndex index(64);
  const uintptr_t stable = 100 * k1G;
  index.Insert(63, stable, k2M);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) ASSERT_EQ(index.Find(stable + 4096, 4096), 63);
  });
  for (int round = 0; round < 2000; ++round) {
    const unsigned slot = static_cast<unsigned>(round % 32);
    const uintptr_t at = stable + (1 + round % 32) * k2M;
    index.Insert(slot, at, k2M);
    ASSERT_EQ(index.Find(at, k2M), static_cast<int>(slot));
    index.Erase(slot);
  }
  stop = true;
  reader.join();
}

}  // namespace
}  // namespace hugemm::api_internal
