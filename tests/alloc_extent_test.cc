// The allocator's extents on the fake machine: geometric growth and its fallback, the
// descriptor of a region's head folio kept in the extent's array through splits and
// merges, split records only for split regions, what the metadata costs per folio, and
// page -> folio lookups racing splits and merges (run under TSan too).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "runtime/alloc/address_index.h"
#include "tests/fake_os.h"

namespace hugemm::testing {
namespace {

using alloc_internal::ExtentRecord;
using alloc_internal::IndexReader;

constexpr size_t kSize64K = size_t{64} << 10;

std::unique_ptr<Allocator> NewAllocator(FakeOs& os, AllocatorOptions options = {}) {
  options.os = &os;
  options.thread_cache = false;
  absl::StatusOr<std::unique_ptr<Allocator>> a = Allocator::Create(options);
  EXPECT_TRUE(a.ok()) << a.status();
  return std::move(*a);
}

// The stats of the pool of `page` pages.
PoolStats Only(const Allocator& alloc, size_t page = kPageSize2M) {
  for (const PoolStats& s : alloc.Stats()) {
    if (s.page_size == page) return s;
  }
  ADD_FAILURE() << "no " << PageSizeName(page) << " pool";
  return {};
}

TEST(AllocExtents, GrowByWhatIsMappedUpTo1GAndCostAFractionOverTheDescriptor) {
  FakeOs os({.pools = {{kPageSize2M, 2048}}});
  auto alloc = NewAllocator(os);
  const AllocOptions opts{.zero = false};
  std::vector<FolioHandle> held;
  for (int i = 0; i < 2048; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(9, opts);
    ASSERT_TRUE(h.ok()) << i << ": " << h.status();
    held.push_back(std::move(*h));
    if (i + 1 == 512) {
      // 2M, 2M, 4M, ..., 512M: 1 GiB in 10 extents, exactly what the model assumes.
      const PoolStats s = Only(*alloc);
      EXPECT_EQ(s.extents, 10u);
      EXPECT_EQ(s.metadata_bytes, FolioMetadataCost(kPageSize2M, kPageSize2M)->bytes_per_gib);
    }
  }
  // Then 1 GiB at a time: 4 GiB in 13 extents.
  const PoolStats s = Only(*alloc);
  EXPECT_EQ(s.extents, 13u);
  EXPECT_EQ(s.mapped_bytes, size_t{4} << 30);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 0);
  const double per_folio = static_cast<double>(s.metadata_bytes) / static_cast<double>(s.folios);
  std::printf("metadata per 2M folio, 4 GiB pool: %.2f bytes\n", per_folio);
  // The 56-byte descriptor and 13 extent records shared by 2048 folios: under 64 B.
  EXPECT_GT(per_folio, sizeof(Folio));
  EXPECT_LT(per_folio, sizeof(Folio) + 2.0);
  EXPECT_LE(per_folio, 64.0);
  held.clear();
  EXPECT_EQ(alloc->Shrink(), size_t{4} << 30);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 2048);
}

TEST(AllocExtents, TheStatsCountWhatSplitPoolsAnd1GPoolsHold) {
  // 64K folios fill 1 GiB of 2M pages: every region split, its record holding the
  // slots of orders 4 to 8, the slab holding all but the head descriptors.
  FakeOs os({.pools = {{kPageSize2M, 512}, {kPageSize1G, 1}}});
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> held;
  for (size_t i = 0; i < kPageSize1G / kSize64K; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(4, {.zero = false});
    ASSERT_TRUE(h.ok()) << i << ": " << h.status();
    held.push_back(std::move(*h));
  }
  EXPECT_EQ(Only(*alloc).metadata_bytes, FolioMetadataCost(kSize64K, kPageSize2M)->bytes_per_gib);
  held.clear();
  EXPECT_EQ(alloc->Shrink(), kPageSize1G);
  // Given back, the split records go with their extents; the slab and the head
  // arrays stay (descriptors stay readable memory), and are counted.
  EXPECT_GT(Only(*alloc).metadata_bytes, 0u);

  absl::StatusOr<FolioHandle> big =
      alloc->AllocateOrder(18, {.page_size = kPageSize1G, .zero = false});
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(Only(*alloc, kPageSize1G).metadata_bytes,
            FolioMetadataCost(kPageSize1G, kPageSize1G)->bytes_per_gib);
}

TEST(AllocExtents, FourKFoliosLiveInRunsUnderTheKernelsSixtyFourBytes) {
  // One 2M page split into 512 4K folios: each descriptor at its page's place in a run
  // of 64 (page 0's is the region head's), the slots of orders 1 to 8 retired once the
  // splits left them empty, and all of it under 64 bytes per folio.
  FakeOs os({.pools = {{kPageSize2M, 1}}});
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> held;
  for (int i = 0; i < 512; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(0, {.zero = false});
    ASSERT_TRUE(h.ok()) << i << ": " << h.status();
    held.push_back(std::move(*h));
  }
  std::sort(held.begin(), held.end(),
            [](const FolioHandle& a, const FolioHandle& b) { return a.data() < b.data(); });
  for (size_t p = 1; p < held.size(); ++p) {
    ASSERT_EQ(held[p].data(), held[0].data() + p * kPageSize4K);
    if (p % 64 != 0 && p != 1) {
      EXPECT_EQ(held[p].folio(), held[p - 1].folio() + 1) << "page " << p << " sits in its run";
    }
    EXPECT_EQ(Allocator::FolioOf(held[p].data() + 100), held[p].folio());
  }
  {
    IndexReader reader;
    ExtentRecord* rec = reader.Lookup(held[0].data());
    ASSERT_NE(rec, nullptr);
    EXPECT_EQ(held[0].folio(), &rec->heads[0]);
  }
  const PoolStats s = Only(*alloc);
  EXPECT_EQ(s.folios, 512u);
  const double per_folio = static_cast<double>(s.metadata_bytes) / 512.0;
  std::printf("metadata per 4K folio, one 2M page: %.2f bytes\n", per_folio);
  EXPECT_LE(per_folio, 64.0);
  // Freed in a scattered order, the buddies merge back into the one 2M folio.
  std::shuffle(held.begin(), held.end(), std::mt19937(7));
  held.clear();
  EXPECT_EQ(Only(*alloc).folios, 1u);
  absl::StatusOr<FolioHandle> whole = alloc->AllocateOrder(9, {.zero = false});
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(Allocator::FolioOf(whole->data() + kPageSize2M - 1), whole->folio());
}

TEST(AllocExtents, FallsBackToOneNativePageWhenTheStepDoesNotFit) {
  FakeOs os({.pools = {{kPageSize2M, 3}}});
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> held;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(9, {.zero = false});
    ASSERT_TRUE(h.ok()) << i << ": " << h.status();
    held.push_back(std::move(*h));
  }
  // 2M, 2M, then 4M is more than the kernel has: the last page comes alone.
  EXPECT_EQ(Only(*alloc).extents, 3u);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 0);
  EXPECT_EQ(alloc->AllocateOrder(9, {.zero = false}).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(AllocExtents, TheLimitCutsTheStep) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = 3 * kPageSize2M});
  std::vector<FolioHandle> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::move(*alloc->AllocateOrder(9, {.zero = false})));
  EXPECT_EQ(Only(*alloc).mapped_bytes, 3 * kPageSize2M);
  EXPECT_EQ(Only(*alloc).extents, 3u);
  EXPECT_EQ(os.Pool(kPageSize2M).free, 29);
}

TEST(AllocExtents, OnlySplitRegionsHaveSplitRecords) {
  FakeOs os;
  auto alloc = NewAllocator(os);
  std::vector<FolioHandle> whole;
  for (int i = 0; i < 4; ++i) whole.push_back(std::move(*alloc->AllocateOrder(9, {.zero = false})));
  {
    IndexReader reader;
    for (const FolioHandle& h : whole) {
      ExtentRecord* rec = reader.Lookup(h.data());
      ASSERT_NE(rec, nullptr);
      EXPECT_EQ(rec->split.load(), nullptr) << "an unsplit extent has no split directory";
      EXPECT_TRUE(rec->IsHead(h.folio()));
      EXPECT_EQ(Allocator::FolioOf(h.data() + kPageSize2M - 1), h.folio());
    }
  }
  const size_t unsplit = Only(*alloc).metadata_bytes;
  absl::StatusOr<FolioHandle> small = alloc->AllocateOrder(0, {.zero = false});
  ASSERT_TRUE(small.ok()) << small.status();
  IndexReader reader;
  ExtentRecord* rec = reader.Lookup(small->data());
  ASSERT_NE(rec, nullptr);
  EXPECT_NE(rec->SplitRecord(rec->RegionOf(small->data())), nullptr);
  EXPECT_EQ(rec->split_records, 1u);
  for (const FolioHandle& h : whole) {
    ExtentRecord* other = reader.Lookup(h.data());
    if (other != rec) {
      EXPECT_EQ(other->split.load(), nullptr);
    }
  }
  // The split is counted: its directory, record, slots and the slab it took from.
  EXPECT_GT(Only(*alloc).metadata_bytes, unsplit);
}

void SplitAndMergeKeepTheHead(size_t page, int low) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = page});
  const AllocOptions opts{.page_size = page, .zero = false};
  const int top = PageOrder(page);
  absl::StatusOr<FolioHandle> first = alloc->AllocateOrder(top, opts);
  ASSERT_TRUE(first.ok()) << first.status();
  Folio* head = first->folio();
  std::byte* base = first->data();
  {
    IndexReader reader;
    ExtentRecord* rec = reader.Lookup(base);
    ASSERT_NE(rec, nullptr);
    EXPECT_EQ(&rec->heads[0], head);
  }
  first->Reset();
  for (int order = top - 1; order >= low; --order) {
    SCOPED_TRACE(::testing::Message() << "order " << order);
    std::vector<FolioHandle> all;
    for (size_t i = 0; i < (size_t{1} << (top - order)); ++i) {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
      ASSERT_TRUE(h.ok()) << h.status();
      if (h->data() == base) {
        EXPECT_EQ(h->folio(), head) << "the lower half keeps the slot";
      }
      all.push_back(std::move(*h));
    }
    for (const FolioHandle& h : all) {
      for (size_t p = 0; p < h.folio()->nr_pages();
           p += std::max<size_t>(1, h.folio()->nr_pages() / 4)) {
        ASSERT_EQ(Allocator::FolioOf(h.data() + p * kPageSize4K + 1), h.folio());
      }
      ASSERT_EQ(Allocator::FolioOf(h.data() + h.size() - 1), h.folio());
    }
    std::shuffle(all.begin(), all.end(), std::mt19937(order));
    all.clear();
    // Merged back whole, into the region's own slot.
    EXPECT_EQ(Allocator::FolioOf(base + page - 1), head);
    EXPECT_EQ(head->order, top);
    EXPECT_EQ(Only(*alloc, page).folios, 1u);
  }
}

TEST(AllocExtents, SplitAndMergeKeepTheRegionHeadIn2MSlot) {
  SplitAndMergeKeepTheHead(kPageSize2M, 0);
}

TEST(AllocExtents, SplitAndMergeKeepTheRegionHeadIn1GSlot) {
  SplitAndMergeKeepTheHead(kPageSize1G, 9);
}

TEST(AllocExtents, LookupsRaceSplitsAndMerges) {
  FakeOs os;
  auto alloc = NewAllocator(os, {.max_bytes_per_pool = kPageSize2M});
  absl::StatusOr<FolioHandle> first = alloc->AllocateOrder(9, {.zero = false});
  ASSERT_TRUE(first.ok()) << first.status();
  std::byte* base = first->data();
  first->Reset();
  std::atomic<bool> stop{false};
  std::atomic<int> found{0}, outside{0};
  std::thread reader([&] {
    std::mt19937 rng(1);
    while (!stop.load(std::memory_order_relaxed)) {
      std::byte* p = base + (rng() % 512) * kPageSize4K;
      Folio* f = Allocator::FolioOf(p);
      if (f == nullptr || !FolioTryGet(f)) continue;
      // Held: its data and order cannot change under us.
      if (f->data < base || f->data + f->size() > base + kPageSize2M) outside.fetch_add(1);
      found.fetch_add(1, std::memory_order_relaxed);
      FolioPut(f);
    }
  });
  std::mt19937 rng(2);
  for (int round = 0; round < 300; ++round) {
    std::vector<FolioHandle> held;
    for (int i = 0; i < 8; ++i) {
      absl::StatusOr<FolioHandle> h =
          alloc->AllocateOrder(static_cast<int>(rng() % 10), {.zero = false});
      if (h.ok()) held.push_back(std::move(*h));
    }
  }
  stop.store(true);
  reader.join();
  EXPECT_EQ(outside.load(), 0);
  EXPECT_GT(found.load(), 0);
  const PoolStats s = Only(*alloc);
  EXPECT_EQ(s.free_bytes, s.mapped_bytes);
  EXPECT_EQ(s.folios, 1u) << "everything merged back";
}

}  // namespace
}  // namespace hugemm::testing
