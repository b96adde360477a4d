// The folio allocator's logic on the fake machine (tests/fake_os.h), without root or huge
// pages: buddy split and merge at every order of 2M and 1G pages, per-thread magazines,
// flush and shrink, limits, exhaustion, the descriptor reserve, page -> folio, NUMA
// pools. The same allocator on real huge pages: alloc_test.cc.
#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "runtime/sys/pagemap.h"
#include "tests/fake_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Allocator> NewAllocator(FakeOs& os, AllocatorOptions options = {}) {
  options.os = &os;
  absl::StatusOr<std::unique_ptr<Allocator>> a = Allocator::Create(options);
  EXPECT_TRUE(a.ok()) << a.status();
  return std::move(*a);
}

PoolStats StatsOf(const Allocator& alloc, BackingKind kind, size_t page) {
  for (const PoolStats& s : alloc.Stats()) {
    if (s.backing == kind && s.page_size == page) return s;
  }
  ADD_FAILURE() << "no " << BackingKindName(kind) << " " << PageSizeName(page) << " pool";
  return {};
}

// Fills one native page with folios of each order from `high` down to `low`, frees them
// in a shuffled order, and checks the page is one free folio again after each order.
void SplitAndMerge(FakeOs& os, size_t page, int low, int high) {
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = page, .thread_cache = false});
  const AllocOptions opts{.page_size = page, .zero = false};
  const int top = PageOrder(page);
  for (int order = high; order >= low; --order) {
    SCOPED_TRACE(::testing::Message() << "order " << order);
    const size_t count = size_t{1} << (top - order);
    std::vector<FolioHandle> all;
    std::set<std::byte*> seen;
    for (size_t i = 0; i < count; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
      ASSERT_TRUE(h.ok()) << h.status();
      ASSERT_TRUE(seen.insert(h->data()).second) << "handed out twice";
      ASSERT_EQ(reinterpret_cast<uintptr_t>(h->data()) % h->size(), 0u);
      all.push_back(std::move(*h));
    }
    EXPECT_EQ(alloc->AllocateOrder(order, opts).status().code(),
              absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(StatsOf(*alloc, BackingKind::kHugetlb, page).folios, count);
    std::shuffle(all.begin(), all.end(), std::mt19937(order));
    all.clear();
    const PoolStats s = StatsOf(*alloc, BackingKind::kHugetlb, page);
    EXPECT_EQ(s.folios, 1u);
    EXPECT_EQ(s.free_by_order[top], 1u);
  }
}

TEST(AllocOnFake, SplitAndMergeEveryOrderOf2M) {
  FakeOs os;
  SplitAndMerge(os, kPageSize2M, 0, 9);
  EXPECT_EQ(os.live_mappings(), 0u);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
}

TEST(AllocOnFake, SplitAndMergeEveryOrderOf1GDownTo64K) {
  FakeOs os;
  // 4K folios of a whole 1G page would be 262144 handles; 64K ones are 16384 and walk
  // the same merges through every order above.
  SplitAndMerge(os, kPageSize1G, 4, 18);
  EXPECT_EQ(os.Pool(kPageSize1G).free, 2);
}

TEST(AllocOnFake, OneOfEachOrderFromA1GPageMergesBack) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = kPageSize1G, .thread_cache = false});
  const AllocOptions opts{.page_size = kPageSize1G, .zero = false};
  std::vector<FolioHandle> held;
  for (int order = 0; order < 18; ++order) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(Allocator::FolioOf(h->data()), h->folio());
    EXPECT_EQ(Allocator::FolioOf(h->data() + h->size() - 1), h->folio());
    held.push_back(std::move(*h));
  }
  EXPECT_EQ(StatsOf(*alloc, BackingKind::kHugetlb, kPageSize1G).free_bytes, kPageSize4K);
  held.clear();
  const PoolStats s = StatsOf(*alloc, BackingKind::kHugetlb, kPageSize1G);
  EXPECT_EQ(s.folios, 1u);
  EXPECT_EQ(s.free_by_order[18], 1u);
}

TEST(AllocOnFake, FolioPfnsAreTheMachinesAndEveryPageFindsItsFolio) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> held;
  for (int order = 0; order <= 9; ++order) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, {.zero = false});
    ASSERT_TRUE(h.ok()) << h.status();
    held.push_back(std::move(*h));
  }
  for (const FolioHandle& h : held) {
    const Folio* f = h.folio();
    absl::StatusOr<std::vector<uint64_t>> pfns = sys::ReadPfnRange(os, f->data, f->nr_pages());
    ASSERT_TRUE(pfns.ok()) << pfns.status();
    for (size_t i = 0; i < f->nr_pages(); ++i) {
      ASSERT_EQ(Allocator::FolioOf(f->page_address(i) + 100), f);
      ASSERT_EQ((*pfns)[i], f->page_pfn(i));
    }
  }
  int local = 0;
  EXPECT_EQ(Allocator::FolioOf(&local), nullptr);
}

TEST(AllocOnFake, MagazinesRefillAndDrainInHalves) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  // The first 4K allocation refills this thread's magazine with half its 32 slots.
  absl::StatusOr<FolioHandle> first = alloc->AllocateOrder(0, {.zero = false});
  ASSERT_TRUE(first.ok()) << first.status();
  PoolStats s = StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M);
  EXPECT_EQ(s.free_bytes, kPageSize2M - 16 * kPageSize4K) << "16 taken: 1 handed out, 15 cached";
  std::vector<FolioHandle> held;
  for (int i = 0; i < 15; ++i) held.push_back(std::move(*alloc->AllocateOrder(0, {.zero = false})));
  EXPECT_EQ(StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M).free_bytes, s.free_bytes)
      << "served from the magazine: the pool was not asked";
  held.clear();
  first->Reset();
  // 16 back in the magazine; flushing returns them and the page merges whole.
  EXPECT_EQ(StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M).free_bytes, s.free_bytes);
  alloc->FlushThreadCache();
  s = StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M);
  EXPECT_EQ(s.free_bytes, kPageSize2M);
  EXPECT_EQ(s.folios, 1u);
}

TEST(AllocOnFake, AnExitingThreadDrainsItsMagazines) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  std::thread([&] {
    for (int i = 0; i < 100; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(i % 4, {.zero = false});
      ASSERT_TRUE(h.ok()) << h.status();
    }
  }).join();
  const PoolStats s = StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M);
  EXPECT_EQ(s.free_bytes, kPageSize2M);
  EXPECT_EQ(s.folios, 1u);
  EXPECT_EQ(alloc->Shrink(), kPageSize2M);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
}

TEST(AllocOnFake, ExhaustionNamesThePoolAndTheMachinesFreePages) {
  FakeOs os({.pools = {{kPageSize2M, 2}}});
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> held;
  for (int i = 0; i < 2; ++i) held.push_back(std::move(*alloc->Allocate(kPageSize2M)));
  EXPECT_EQ(os.Pool(kPageSize2M).free, 0);
  absl::Status st = alloc->Allocate(kPageSize2M).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  for (const char* word : {"hugetlb 2M pool on node any", "no free 2M folio", "ENOMEM",
                           "4 MiB mapped", "the kernel's 2M pool: 0 free, 0 reserved, of 2"}) {
    EXPECT_THAT(st.message(), HasSubstr(word));
  }
  EXPECT_EQ(alloc->Allocate(4096).status().code(), absl::StatusCode::kResourceExhausted);
  held.clear();
  EXPECT_EQ(alloc->Shrink(), 2 * kPageSize2M);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 2);
  EXPECT_TRUE(alloc->Allocate(kPageSize2M).ok()) << "grows again on demand";
}

TEST(AllocOnFake, ANodesExhaustionNamesThatNodesCounts) {
  FakeOs os({.nodes = 2, .pools = {{kPageSize2M, 1}}});
  auto alloc = NewAllocator(os);
  absl::StatusOr<FolioHandle> first = alloc->Allocate(kPageSize2M, {.node = 1});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::Status st = alloc->Allocate(kPageSize2M, {.node = 1}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("pool on node 1"));
  EXPECT_THAT(st.message(), HasSubstr("the kernel's 2M pool on node 1: 0 free of 1"));
  EXPECT_TRUE(alloc->Allocate(kPageSize2M, {.node = 0}).ok()) << "node 0 is untouched";
}

TEST(AllocOnFake, ThePoolLimitStopsGrowthBeforeTheMachineDoes) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = 2 * kPageSize2M});
  absl::StatusOr<FolioHandle> a = alloc->Allocate(kPageSize2M);
  absl::StatusOr<FolioHandle> b = alloc->Allocate(kPageSize2M);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::Status st = alloc->Allocate(kPageSize2M).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("would pass the pool limit"));
  EXPECT_THAT(st.message(), HasSubstr("4 MiB mapped of 4 MiB"));
  EXPECT_EQ(os.Pool(kPageSize2M).free, 30);
}

TEST(AllocOnFake, ShrinkGivesWhollyFreePagesBackOnly) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  absl::StatusOr<FolioHandle> a = alloc->Allocate(kPageSize2M);
  absl::StatusOr<FolioHandle> b = alloc->Allocate(kPageSize2M);
  absl::StatusOr<FolioHandle> c = alloc->Allocate(8192);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  // The pool grows by what it has mapped: 2M, 2M, then 4M for c.
  EXPECT_EQ(os.Pool(kPageSize2M).free, 28);
  a->Reset();
  EXPECT_EQ(alloc->Shrink(), kPageSize2M);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 29);
  b->Reset();
  c->Reset();
  EXPECT_EQ(alloc->Shrink(), 3 * kPageSize2M);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
  EXPECT_EQ(os.live_mappings(), 0u);
}

TEST(AllocOnFake, PinnedFolioOutlivesHandleAndAllocator) {
  FakeOs os;
  Folio* f;
  {
    auto alloc = NewAllocator(os, {.max_bytes_per_pool = kPageSize2M, .thread_cache = false});
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(4);
    ASSERT_TRUE(h.ok()) << h.status();
    f = h->folio();
    std::memset(h->data(), 0x5a, h->size());
    HUGEMM_ASSERT_OK(FolioTryGrab(f, 16, RefKind::kPin));
    h->Reset();
    // Everything else the pool has is handed out, never the pinned folio.
    std::vector<FolioHandle> others;
    while (true) {
      absl::StatusOr<FolioHandle> o = alloc->AllocateOrder(4, {.zero = false});
      if (!o.ok()) break;
      EXPECT_NE(o->folio(), f);
      others.push_back(std::move(*o));
    }
    EXPECT_EQ(others.size(), 31u);
  }  // the allocator goes while the pin holds its memory
  EXPECT_EQ(os.Pool(kPageSize2M).free, 31);
  EXPECT_EQ(std::to_integer<int>(f->data[100]), 0x5a);
  FolioUngrab(f, 16, RefKind::kPin);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32) << "the last unpin gives the memory back";
  EXPECT_EQ(os.live_mappings(), 0u);
}

// An orphaned pool gives back everything with its last folio: the memory, and the
// backing's own descriptor (a device-DAX backing holds the device open).
TEST(AllocOnFake, ThePoolOfAPinnedFolioLetsGoOfItsBackingAfterItsAllocator) {
  FakeOs os({.dax = {{.name = "dax0.0", .size = 2 * kPageSize2M, .align = kPageSize2M}}});
  Folio* f;
  {
    auto alloc = NewAllocator(os);
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(
        0, {.backing = BackingKind::kDevDax, .page_size = 0, .devdax_path = "/dev/dax0.0"});
    ASSERT_TRUE(h.ok()) << h.status();
    f = h->folio();
    HUGEMM_ASSERT_OK(FolioTryGrab(f, 1, RefKind::kPin));
  }
  EXPECT_EQ(os.live_mappings(), 1u);
  FolioUngrab(f, 1, RefKind::kPin);
  EXPECT_EQ(os.live_mappings(), 0u);
  EXPECT_EQ(os.open_fds(), 0u) << "the device is still open";
}

TEST(AllocOnFake, NewOwnerNeverSeesOldData) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  for (int order : {0, 5, 9}) {
    std::byte* where;
    {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
      ASSERT_TRUE(h.ok()) << h.status();
      where = h->data();
      std::memset(h->data(), 0xab, h->size());
    }
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(h->data(), where);
    for (size_t i = 0; i < h->size(); i += 512) ASSERT_EQ(std::to_integer<int>(h->data()[i]), 0);
  }
}

TEST(AllocOnFake, NodePoolsTakeFromTheirNode) {
  FakeOs os({.nodes = 2, .pools = {{kPageSize2M, 4}}});
  auto alloc = NewAllocator(os);
  absl::StatusOr<FolioHandle> on1 = alloc->Allocate(kPageSize2M, {.node = 1});
  ASSERT_TRUE(on1.ok()) << on1.status();
  EXPECT_EQ(on1->folio()->node, 1);
  EXPECT_EQ(os.Pool(kPageSize2M).nodes[1].free, 3);
  EXPECT_EQ(os.Pool(kPageSize2M).nodes[0].free, 4);
  EXPECT_EQ(alloc->Stats().size(), 1u);
  absl::StatusOr<FolioHandle> any = alloc->Allocate(4096);
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(alloc->Stats().size(), 2u) << "node 1 and any node are two pools";
  EXPECT_FALSE(alloc->Allocate(4096, {.node = 5}).ok());
}

TEST(AllocOnFake, DescriptorsInTheReserveThenInSystemMemory) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.meta_reserve_bytes = 4096, .thread_cache = false});
  const AllocOptions opts{.backing = BackingKind::kHugetlbfs, .zero = false};
  std::vector<FolioHandle> held;
  int reserve = 0, system = 0;
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(0, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    (std::string_view(h->info().meta_placement()) == "reserve" ? reserve : system)++;
    const uintptr_t base = reinterpret_cast<uintptr_t>(h->data()) & ~(kPageSize2M - 1);
    EXPECT_GE(reinterpret_cast<uintptr_t>(h->data()), base + 4096) << "the reserve is no folio";
    held.push_back(std::move(*h));
  }
  EXPECT_GT(reserve, 0);
  EXPECT_GT(system, 0) << "4K holds one run of 64: the rest fell back";
  const PoolStats s = StatsOf(*alloc, BackingKind::kHugetlbfs, kPageSize2M);
  EXPECT_EQ(s.reserve_bytes, 4096u);
  // 4K folios' descriptors come in runs of 64 pages: the first run fits the reserve (73
  // slots), the next does not; larger folios' descriptors take single slots left over.
  EXPECT_GE(s.reserve_descriptors, 64u);
  EXPECT_LE(s.reserve_descriptors, 4096 / sizeof(Folio));
  held.clear();
  EXPECT_GT(alloc->Shrink(), 0u);
  EXPECT_EQ(os.live_mappings(), 0u);
}

TEST(AllocOnFake, DevDaxPoolCarvesTheDevice) {
  FakeOs os({.dax = {{.name = "dax0.0", .size = 4 * kPageSize2M, .align = kPageSize2M}}});
  auto alloc = NewAllocator(os, {.thread_cache = false});
  const AllocOptions opts{
      .backing = BackingKind::kDevDax, .page_size = 0, .zero = false, .devdax_path = "/dev/dax0.0"};
  std::vector<FolioHandle> held;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(9, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->folio()->backing, BackingKind::kDevDax);
    held.push_back(std::move(*h));
  }
  absl::Status st = alloc->AllocateOrder(9, opts).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("no free range of 2 MiB in /dev/dax0.0"));
  held.clear();
  EXPECT_EQ(alloc->Shrink(), 4 * kPageSize2M);
}

// A devdax pool is one per device, whatever node a request names: a request for a node
// other than the device's is refused (as Backing::Map refuses it), never served from the
// device's node.
TEST(AllocOnFake, DevDaxRequestForAnotherNodeIsRefused) {
  FakeOs os(
      {.nodes = 2,
       .dax = {{.name = "dax0.0", .size = 4 * kPageSize2M, .align = kPageSize2M, .node = 1}}});
  auto alloc = NewAllocator(os, {.thread_cache = false});
  AllocOptions opts{
      .backing = BackingKind::kDevDax, .page_size = 0, .zero = false, .devdax_path = "/dev/dax0.0"};
  for (const bool pool_exists : {false, true}) {
    SCOPED_TRACE(pool_exists ? "pool exists" : "no pool yet");
    opts.node = 0;
    absl::Status st = alloc->AllocateOrder(0, opts).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(st.message(), HasSubstr("/dev/dax0.0"));
    EXPECT_THAT(st.message(), HasSubstr("node 1, not node 0"));
    opts.node = -2;
    EXPECT_EQ(alloc->AllocateOrder(0, opts).status().code(), absl::StatusCode::kInvalidArgument);
    for (int node : {1, -1}) {
      opts.node = node;
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(0, opts);
      ASSERT_TRUE(h.ok()) << h.status();
      EXPECT_EQ(h->info().node, 1);
    }
  }
  EXPECT_EQ(alloc->Stats().size(), 1u);
}

TEST(AllocOnFake, ManyThreadsLeaveNothingBehind) {
  FakeOs os;
  {
    auto alloc = NewAllocator(os);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(t);
        std::vector<FolioHandle> mine;
        for (int i = 0; i < 2000; ++i) {
          absl::StatusOr<FolioHandle> h =
              alloc->AllocateOrder(static_cast<int>(rng() % 7), {.zero = false});
          ASSERT_TRUE(h.ok()) << h.status();
          std::memset(h->data(), t + 1, 64);
          mine.push_back(std::move(*h));
          if (mine.size() > 8) {
            ASSERT_EQ(std::to_integer<int>(*mine.front().data()), t + 1);
            mine.erase(mine.begin());
          }
        }
      });
    }
    for (std::thread& th : threads) th.join();
    alloc->Shrink();
    EXPECT_EQ(StatsOf(*alloc, BackingKind::kHugetlb, kPageSize2M).folios, 0u);
  }
  EXPECT_EQ(os.live_mappings(), 0u);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 32);
}

}  // namespace
}  // namespace hugemm::testing
