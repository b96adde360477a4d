// The MR cache under threads that get and release registrations while other threads free
// and map the memory under them: no registration handed out is ever stale (every frame
// it maps is the one the process maps there, checked while the handle holds it), and
// when the dust settles nothing is left registered or pinned. The same churn without the
// validity check hands out stale registrations by the thousand.
#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/verbs.h"
#include "runtime/verbs/mr_cache_test_peer.h"
#include "tests/test_util.h"
#include "tests/verbs/fake_registrar.h"

namespace hugemm {
namespace {

using ::hugemm::testing::CanReadFrames;
using ::hugemm::testing::FakeRegistrar;

constexpr int kSlots = 8;
constexpr int kChurners = 2;
constexpr int kGetters = 3;
constexpr int kChurnsPerThread = 200;
constexpr int kGetsPerThread = 2000;

struct Counts {
  std::atomic<int> got{0};
  std::atomic<int> refused{0};
  std::atomic<int> stale{0};
};

// Buffers of `size` bytes, MapBuffer'd (whole 2M pages) or Allocate'd (carved from shared
// extents), replaced one at a time by the churn threads. `check`: the cache's validity
// check (off only to show what it prevents; `stale` then receives how many registrations
// handed out were stale).
void ChurnAndGet(MrScope scope, bool allocate, size_t size, bool check = true,
                 int* stale = nullptr) {
  FakeRegistrar fake;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok());
  absl::StatusOr<std::unique_ptr<MrCache>> cache =
      MrCache::Create(**rt, {.max_entries = 64, .scope = scope, .registrar = &fake});
  ASSERT_TRUE(cache.ok());
  verbs_internal::MrCacheTestPeer::SetValidityCheck(**cache, check);
  ibv_pd pd{};
  auto make = [&]() -> Buffer {
    absl::StatusOr<Buffer> b = allocate ? (*rt)->Allocate(size) : (*rt)->MapBuffer(size);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : Buffer();
  };
  std::vector<Buffer> buffers(kSlots);
  std::atomic<uintptr_t> addr[kSlots];
  for (int i = 0; i < kSlots; ++i) {
    buffers[i] = make();
    addr[i].store(reinterpret_cast<uintptr_t>(buffers[i].data()));
  }
  Counts counts;
  std::atomic<int> getters_left{kGetters};
  std::vector<std::thread> threads;
  for (int t = 0; t < kChurners; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      // At least kChurnsPerThread changes, and on until the last getter is done.
      for (int n = 0; n < kChurnsPerThread || getters_left.load() > 0; ++n) {
        // Each churner owns every kChurners-th slot. The old address stays published
        // while it is freed: getters race with the free on purpose.
        const int slot = t + kChurners * static_cast<int>(rng() % (kSlots / kChurners));
        if (rng() % 4 == 0 && !allocate) {
          (void)(*rt)->table().Split(buffers[slot].data());  // a change without a free
          continue;
        }
        EXPECT_TRUE(buffers[slot].Free().ok());
        buffers[slot] = make();
        addr[slot].store(reinterpret_cast<uintptr_t>(buffers[slot].data()));
      }
    });
  }
  for (int t = 0; t < kGetters; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int n = 0; n < kGetsPerThread; ++n) {
        const uintptr_t base = addr[rng() % kSlots].load();
        const size_t off = (rng() % (size / 4096)) * 4096;
        const size_t len = std::min<size_t>(size - off, 4096 << (rng() % 4));
        auto* p = reinterpret_cast<const void*>(base + off);
        absl::StatusOr<MrHandle> h =
            (*cache)->Get(&pd, p, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
        if (!h.ok()) {
          // The buffer was freed meanwhile, or kept changing: never anything else.
          const absl::StatusCode c = h.status().code();
          EXPECT_TRUE(c == absl::StatusCode::kNotFound || c == absl::StatusCode::kUnavailable)
              << h.status();
          counts.refused.fetch_add(1);
          continue;
        }
        counts.got.fetch_add(1);
        if (std::optional<std::string> why = fake.Stale(h->mr(), p, len)) {
          if (counts.stale.fetch_add(1) == 0 && check) {
            ADD_FAILURE() << "stale registration for [" << p << ", +" << len << "): " << *why;
          }
        }
      }
      getters_left.fetch_sub(1);
    });
  }
  for (std::thread& th : threads) th.join();

  const MrCacheStats s = (*cache)->Stats();
  EXPECT_GT(counts.got.load(), kGetters * kGetsPerThread / 2);
  EXPECT_GT(s.hits, 0u);
  EXPECT_EQ(s.held, 0u);
  if (!check) {
    *stale = counts.stale.load();
    EXPECT_EQ(s.invalidations, 0u);
    return;
  }
  EXPECT_EQ(counts.stale.load(), 0);
  // MapBuffer'd memory: the churn's splits and frees dropped registrations as they went.
  // Allocations share their extent's registration, which only a change of the table under
  // it drops (a region split or merged): whether the churn made one while a registration
  // stood is up to the scheduler, so they are counted once the last frees are in.
  if (!allocate) {
    EXPECT_GT(s.invalidations, 0u);
  }
  // Freeing the last buffers drops every registration: nothing stays registered.
  buffers.clear();
  EXPECT_EQ((*cache)->Stats().entries, 0u);
  EXPECT_GT((*cache)->Stats().invalidations, 0u);
  EXPECT_EQ(fake.live(), 0u);
  EXPECT_EQ(fake.registered(), s.registrations);
}

TEST(MrCacheStressTest, NoStaleRegistrationWhileBuffersAreFreedAndMapped) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 32);
  HUGEMM_NEED(CanReadFrames(), "needs PFNs from /proc/self/pagemap (root)");
  ChurnAndGet(MrScope::kBuffer, /*allocate=*/false, kPageSize2M);
}

TEST(MrCacheStressTest, NoStaleRegistrationWhileAllocationsShareExtents) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 32);
  HUGEMM_NEED(CanReadFrames(), "needs PFNs from /proc/self/pagemap (root)");
  ChurnAndGet(MrScope::kExtent, /*allocate=*/true, 64 << 10);
}

// The same churn with the validity check switched off: stale registrations by the
// thousand (the check is what the test above holds to zero).
TEST(MrCacheStressTest, WithoutTheValidityCheckTheChurnHandsOutStaleRegistrations) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 64);
  HUGEMM_NEED(CanReadFrames(), "needs PFNs from /proc/self/pagemap (root)");
  // Never dropped, so a registration outlives its buffer and is handed out for the next
  // buffer at the same address: the NIC would use the old frames. That takes a buffer
  // mapped where a registered one was while a getter asks there, which the scheduler may
  // not give one round: up to five rounds.
  int stale = 0;
  for (int round = 0; round < 5 && stale == 0 && !HasFailure(); ++round) {
    ChurnAndGet(MrScope::kBuffer, /*allocate=*/false, kPageSize2M, /*check=*/false, &stale);
  }
  EXPECT_GT(stale, 0) << "no stale registration without the check in five rounds";
}

}  // namespace
}  // namespace hugemm
