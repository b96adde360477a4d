// The folio allocator on real huge pages: page <-> folio, split and merge at every
// order, pins outliving handles, zeroing, exhaustion and shrink back to the kernel,
// descriptor placement, and many threads.
#include "hugemm/alloc.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/os.h"
#include "runtime/alloc/thread_cache.h"
#include "runtime/sys/pagemap.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::FreeHugePages;

std::unique_ptr<Allocator> NewAllocator(AllocatorOptions options = {}) {
  absl::StatusOr<std::unique_ptr<Allocator>> a = Allocator::Create(options);
  EXPECT_TRUE(a.ok()) << a.status();
  return std::move(*a);
}

// The stats of the pool of that backing and page size (a copy; empty if none).
std::optional<PoolStats> FindStats(const Allocator& alloc, BackingKind kind, size_t page) {
  for (const PoolStats& s : alloc.Stats()) {
    if (s.backing == kind && s.page_size == page) return s;
  }
  return std::nullopt;
}

// The 2M hugetlb pool maps and holds nothing, and the kernel has its pages back.
void ExpectTwoMegPoolEmpty(const Allocator& alloc, int64_t baseline) {
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline);
  std::optional<PoolStats> s = FindStats(alloc, BackingKind::kHugetlb, kPageSize2M);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->mapped_bytes, 0u);
  EXPECT_EQ(s->folios, 0u);
}

bool AllBytesAre(const std::byte* p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; i += 64) {
    if (p[i] != std::byte{v} || p[i + 63] != std::byte{v}) return false;
  }
  return true;
}

TEST(Alloc, BytesRoundUpToAFolio) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  auto alloc = NewAllocator();
  absl::StatusOr<FolioHandle> a = alloc->Allocate(1);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->size(), kPageSize4K);
  EXPECT_EQ(a->folio()->order, 0);
  absl::StatusOr<FolioHandle> b = alloc->Allocate(kPageSize4K * 3);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->size(), 4 * kPageSize4K);
  absl::StatusOr<FolioHandle> c = alloc->Allocate(kPageSize2M);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->folio()->order, 9);
  for (FolioHandle* h : {&*a, &*b, &*c}) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(h->data()) % h->size(), 0u);
    FolioInfo info = h->info();
    EXPECT_EQ(info.refcount, 1);
    EXPECT_EQ(info.backing, BackingKind::kHugetlb);
    EXPECT_STREQ(info.meta_placement(), "system");
  }
}

TEST(Alloc, BadRequestsAreErrorsNamingThePool) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto alloc = NewAllocator();
  EXPECT_EQ(alloc->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::Status st = alloc->Allocate(kPageSize2M + 1).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("hugetlb 2M"), absl::string_view::npos) << st;
  EXPECT_EQ(alloc->AllocateOrder(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(alloc->AllocateOrder(10).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(alloc->Allocate(4096, {.node = -7}).ok());
  EXPECT_FALSE(alloc->Allocate(4096, {.page_size = 3 * kPageSize2M}).ok());
  // A page size that is no page size is named as such, not measured against.
  for (size_t page_size : {size_t{3}, size_t{6} << 10, 3 * kPageSize2M}) {
    st = alloc->Allocate(8192, {.page_size = page_size}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()),
                ::testing::HasSubstr(
                    absl::StrCat("huge page size ", PageSizeName(page_size), " not supported")));
  }
  EXPECT_FALSE(
      alloc->Allocate(4096, {.backing = BackingKind::kDevDax, .devdax_path = "/dev/dax-none.0"})
          .ok());
  EXPECT_FALSE(
      alloc->Allocate(4096, {.backing = BackingKind::kAnon, .page_size = kPageSize2M}).ok());
  // The default page size is the kind's own: 4K for anon.
  absl::StatusOr<FolioHandle> anon = alloc->Allocate(4096, {.backing = BackingKind::kAnon});
  ASSERT_TRUE(anon.ok()) << anon.status();
  EXPECT_EQ(anon->folio()->size(), kPageSize4K);
}

// A node that is not online is a bad request, not a shortage, and it costs no pool: more
// such requests than an allocator has pools leave room for a good one.
TEST(Alloc, OfflineNodeIsInvalidAndTakesNoPool) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto alloc = NewAllocator();
  for (int node = 1000; node < 1100; ++node) {
    absl::Status st = alloc->Allocate(4096, {.node = node}).status();
    ASSERT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()),
                ::testing::HasSubstr(absl::StrCat("NUMA node ", node, " is not online")));
  }
  EXPECT_TRUE(alloc->Stats().empty());
  absl::StatusOr<FolioHandle> h = alloc->Allocate(4096);
  EXPECT_TRUE(h.ok()) << h.status();
}

// Nor does an order outside the page's: the pool it names is not made for it.
TEST(Alloc, BadOrderTakesNoPool) {
  auto alloc = NewAllocator();
  const std::vector<std::pair<int, AllocOptions>> bad = {
      {-1, {}},
      {10, {}},
      {19, {.page_size = kPageSize1G}},
      {-1, {.page_size = kPageSize1G, .node = 0}},
      {1, {.backing = BackingKind::kAnon, .page_size = 0}},
  };
  for (const auto& [order, options] : bad) {
    absl::Status st = alloc->AllocateOrder(order, options).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()),
                ::testing::HasSubstr(absl::StrCat("order ", order, " is outside 0..")));
    EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("pool on node"));
  }
  EXPECT_TRUE(alloc->Stats().empty());
}

// Every 4K page of every folio maps back to its folio, and folio -> page i agrees with
// the kernel's PFNs.
TEST(Alloc, AnyPageMapsBackToItsFolio) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  auto alloc = NewAllocator();
  std::vector<FolioHandle> handles;
  for (int order = 0; order <= 9; ++order) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(std::move(*h));
  }
  const bool pfns = sys::CanReadPfns(Os::Default());
  for (const FolioHandle& h : handles) {
    Folio* f = h.folio();
    for (size_t i = 0; i < f->nr_pages(); ++i) {
      const std::byte* page = f->page_address(i);
      ASSERT_EQ(Allocator::FolioOf(page), f) << "order " << int{f->order} << " page " << i;
      ASSERT_EQ(Allocator::FolioOf(page + kPageSize4K - 1), f);
    }
    if (pfns) {
      ASSERT_NE(f->head_pfn, kUnknownPfn);
      absl::StatusOr<std::vector<uint64_t>> kernel =
          sys::ReadPfns(Os::Default(), f->data, f->nr_pages(), kPageSize4K);
      ASSERT_TRUE(kernel.ok()) << kernel.status();
      for (size_t i = 0; i < f->nr_pages(); ++i) ASSERT_EQ((*kernel)[i], f->page_pfn(i));
    }
  }
  int on_stack = 0;
  EXPECT_EQ(Allocator::FolioOf(&on_stack), nullptr);
  EXPECT_EQ(Allocator::FolioOf(nullptr), nullptr);
}

// Fill one native page with folios of one order, free them all, and the page is whole
// again; for each order from 0 to the page's.
void SplitAndMerge(size_t page_size, int low, int high) {
  auto alloc = NewAllocator({.max_bytes_per_pool = page_size, .thread_cache = false});
  const AllocOptions opts{.page_size = page_size, .zero = false};
  const int top = PageOrder(page_size);
  for (int order = high; order >= low; --order) {
    SCOPED_TRACE(::testing::Message() << "order " << order);
    const size_t count = size_t{1} << (top - order);
    std::vector<FolioHandle> all;
    std::set<std::byte*> seen;
    for (size_t i = 0; i < count; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
      ASSERT_TRUE(h.ok()) << h.status();
      ASSERT_TRUE(seen.insert(h->data()).second);
      all.push_back(std::move(*h));
    }
    // The page is exactly used up.
    EXPECT_EQ(alloc->AllocateOrder(order, opts).status().code(),
              absl::StatusCode::kResourceExhausted);
    PoolStats s = *FindStats(*alloc, BackingKind::kHugetlb, page_size);
    EXPECT_EQ(s.free_bytes, 0u);
    EXPECT_EQ(s.folios, count);
    // Free in a shuffled order so merges happen in every direction.
    std::shuffle(all.begin(), all.end(), std::mt19937(order));
    all.clear();
    s = *FindStats(*alloc, BackingKind::kHugetlb, page_size);
    EXPECT_EQ(s.folios, 1u);
    EXPECT_EQ(s.free_bytes, page_size);
    EXPECT_EQ(s.free_by_order[top], 1u);
  }
  absl::StatusOr<FolioHandle> whole = alloc->AllocateOrder(top, opts);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->size(), page_size);
}

TEST(Alloc, SplitAndMergeEveryOrderOf2M) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  SplitAndMerge(kPageSize2M, 0, 9);
}

TEST(Alloc, SplitAndMerge1GInto2MAndBelow) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  // Every order from 2M up; below it 512x more folios per order only repeat the 2M case.
  SplitAndMerge(kPageSize1G, 9, 18);
  // And a 1G page split all the way to 4K in one corner merges back.
  auto alloc = NewAllocator({.max_bytes_per_pool = kPageSize1G, .thread_cache = false});
  const AllocOptions opts{.page_size = kPageSize1G, .zero = false};
  std::vector<FolioHandle> small;
  for (int order = 0; order < 18; ++order) {  // 4K + 8K + ... + 512M: all but 4K
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(Allocator::FolioOf(h->data() + h->size() - 1), h->folio());
    small.push_back(std::move(*h));
  }
  EXPECT_EQ(FindStats(*alloc, BackingKind::kHugetlb, kPageSize1G)->free_bytes, kPageSize4K);
  small.clear();
  PoolStats s = *FindStats(*alloc, BackingKind::kHugetlb, kPageSize1G);
  EXPECT_EQ(s.folios, 1u);
  EXPECT_EQ(s.free_by_order[18], 1u);
}

TEST(Alloc, PinnedFolioOutlivesItsHandleUntouched) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  for (int order : {0, 4, 9}) {
    SCOPED_TRACE(::testing::Message() << "order " << order);
    auto alloc = NewAllocator({.max_bytes_per_pool = 2 * kPageSize2M, .thread_cache = false});
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
    ASSERT_TRUE(h.ok()) << h.status();
    Folio* f = h->folio();
    std::byte* data = h->data();
    const size_t size = h->size();
    std::memset(data, 0x5a, size);
    const int32_t pages = static_cast<int32_t>(f->nr_pages());
    HUGEMM_ASSERT_OK(FolioTryGrab(f, pages, RefKind::kPin));
    h->Reset();  // the owner frees; the DMA pin holds on
    EXPECT_TRUE(FolioMaybeDmaPinned(f));
    EXPECT_EQ(f->refcount(), order == 0 ? kPinBias : pages);
    // Everything else the pool has is handed out, never the pinned folio.
    std::vector<FolioHandle> others;
    while (true) {
      absl::StatusOr<FolioHandle> o = alloc->AllocateOrder(order);
      if (!o.ok()) break;
      EXPECT_FALSE(o->data() == data);
      others.push_back(std::move(*o));
    }
    EXPECT_TRUE(AllBytesAre(data, size, 0x5a));
    FolioUngrab(f, pages, RefKind::kPin, /*dirty=*/true);
    // Back in the pool: the next allocation gets it, zeroed.
    absl::StatusOr<FolioHandle> again = alloc->AllocateOrder(order);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->data(), data);
    EXPECT_TRUE(AllBytesAre(again->data(), size, 0));
    EXPECT_FALSE(again->folio()->has_flag(FolioFlag::kDirty));
  }
}

TEST(Alloc, ReferenceAndMappingRefsAlsoDelayReuse) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto alloc = NewAllocator({.thread_cache = false});
  absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(9);
  ASSERT_TRUE(h.ok()) << h.status();
  Folio* f = h->folio();
  HUGEMM_ASSERT_OK(FolioGet(f));  // e.g. a page-table mapping
  h->Reset();
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_FALSE(f->has_flag(FolioFlag::kFree));
  FolioPut(f);
  EXPECT_TRUE(f->has_flag(FolioFlag::kFree));
  EXPECT_FALSE(FolioTryGet(f));  // a racing reader cannot resurrect it
}

TEST(Alloc, NewOwnerNeverSeesOldData) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  auto alloc = NewAllocator();
  for (int order : {0, 3, 9}) {
    SCOPED_TRACE(::testing::Message() << "order " << order);
    std::byte* where;
    {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
      ASSERT_TRUE(h.ok()) << h.status();
      where = h->data();
      std::memset(h->data(), 0xab, h->size());
    }
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(h->data(), where);  // the magazine hands back the same folio
    EXPECT_TRUE(AllBytesAre(h->data(), h->size(), 0));
    // Opting out of zeroing gets the previous bytes of this process.
    std::memset(h->data(), 0xcd, h->size());
    h->Reset();
    absl::StatusOr<FolioHandle> raw = alloc->AllocateOrder(order, {.zero = false});
    ASSERT_TRUE(raw.ok()) << raw.status();
    ASSERT_EQ(raw->data(), where);
    EXPECT_TRUE(AllBytesAre(raw->data(), raw->size(), 0xcd));
  }
}

// A folio's flags are of one life: dirty or referenced in the last one is not what the
// next owner gets, whether the folio comes back through a thread's cache or its pool.
TEST(Alloc, ANewLifeStartsWithoutTheOldFlags) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  for (bool cached : {true, false}) {
    SCOPED_TRACE(cached ? "thread cache" : "pool");
    auto alloc = NewAllocator({.thread_cache = cached});
    std::byte* where;
    {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(2);
      ASSERT_TRUE(h.ok()) << h.status();
      where = h->data();
      h->folio()->set_flag(kFolioDirty);
      h->folio()->set_flag(kFolioReferenced);
    }
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(2);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(h->data(), where);
    EXPECT_FALSE(h->folio()->has_flag(kFolioDirty));
    EXPECT_FALSE(h->folio()->has_flag(kFolioReferenced));
  }
}

TEST(Alloc, ExhaustionNamesThePoolAndRecoversToBaseline) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator({.max_bytes_per_pool = 2 * kPageSize2M});
  std::vector<FolioHandle> held;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize2M);
    ASSERT_TRUE(h.ok()) << h.status();
    held.push_back(std::move(*h));
  }
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline - 2);
  absl::Status st = alloc->Allocate(kPageSize2M).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  for (const char* word : {"hugetlb", "2M", "node", "free", "4 MiB"}) {
    EXPECT_NE(st.message().find(word), absl::string_view::npos) << word << " in " << st;
  }
  // A smaller folio does not fit either: the pool's pages are whole folios in use.
  EXPECT_EQ(alloc->Allocate(4096).status().code(), absl::StatusCode::kResourceExhausted);
  held.pop_back();
  absl::StatusOr<FolioHandle> small = alloc->Allocate(4096);
  ASSERT_TRUE(small.ok()) << small.status();
  small->Reset();
  held.clear();
  EXPECT_EQ(alloc->Shrink(), 2 * kPageSize2M);
  ExpectTwoMegPoolEmpty(*alloc, baseline);
  // And it grows again on demand.
  EXPECT_TRUE(alloc->Allocate(kPageSize2M).ok());
}

// A hugetlbfs pool whose mount (size=6M) fills while it grows: 2M, 2M, then 2M where the
// geometric step (4M) no longer fits, then nothing. The refusal names the pool and the
// mount's limit; what was handed out stays good, a freed folio serves again, and Shrink
// gives the whole mount back.
TEST(Alloc, PoolGrowingIntoAFullMountNamesItsLimitAndRecovers) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int code = testing::RunWithSmallHugetlbfs(3 * kPageSize2M, [](const std::string& mount) {
    auto alloc = NewAllocator({.thread_cache = false});
    const AllocOptions fs{.backing = BackingKind::kHugetlbfs, .hugetlbfs_mount = mount};
    std::vector<FolioHandle> held;
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize2M, fs);
      if (!h.ok()) {
        std::fprintf(stderr, "folio %d: %s\n", i, h.status().ToString().c_str());
        return 2;
      }
      std::memset(h->data(), i + 1, kPageSize2M);
      held.push_back(std::move(*h));
    }
    absl::Status st = alloc->Allocate(kPageSize4K, fs).status();
    if (st.code() != absl::StatusCode::kResourceExhausted) return 3;
    for (const std::string& word :
         std::vector<std::string>{"hugetlbfs 2M at " + mount + " pool", "6 MiB mapped",
                                  mount + " holds at most 6 MiB", "size="}) {
      if (st.message().find(word) == absl::string_view::npos) {
        std::fprintf(stderr, "no \"%s\" in %s\n", word.c_str(), st.ToString().c_str());
        return 4;
      }
    }
    std::optional<PoolStats> s = FindStats(*alloc, BackingKind::kHugetlbfs, kPageSize2M);
    if (!s.has_value() || s->extents != 3 || s->mapped_bytes != 3 * kPageSize2M) return 5;
    for (int i = 0; i < 3; ++i) {
      if (!AllBytesAre(held[i].data(), kPageSize2M, i + 1)) return 6;
    }
    held.pop_back();
    absl::StatusOr<FolioHandle> again = alloc->Allocate(kPageSize4K, fs);
    if (!again.ok()) return 7;
    again->Reset();
    held.clear();
    if (alloc->Shrink() != 3 * kPageSize2M) return 8;
    // The mount is empty again, and the pool grows from it.
    absl::StatusOr<FolioHandle> whole = alloc->Allocate(kPageSize2M, fs);
    return whole.ok() ? 0 : 9;
  });
  HUGEMM_NEED(code != testing::kCannotMount, "needs to mount a hugetlbfs (root)");
  EXPECT_EQ(code, 0) << "2: a folio that fits was refused; 3: not ResourceExhausted; 4: the "
                        "message does not name the pool and limit; 5: unexpected extents; 6: "
                        "data changed; 7: a freed folio does not serve; 8: Shrink; 9: after";
}

// The kernel refusing a 1G page (as when a request is larger than the free 1G pool) is
// injected at the prefault, so the test never drains the machine's 1G pool.
class NoHugePagesOs : public OsWrapper {
 public:
  NoHugePagesOs() : OsWrapper(Os::Default()) {}
  absl::Status Madvise(void* addr, size_t length, int advice) override {
    if (advice == 23 /* MADV_POPULATE_WRITE */) return ErrnoStatus(ENOMEM, "madvise");
    return OsWrapper::Madvise(addr, length, advice);
  }
};

TEST(Alloc, OneGigRequestBeyondTheKernelsFreePages) {
  NoHugePagesOs os;
  auto alloc = NewAllocator({.os = &os});
  const int64_t baseline = FreeHugePages(kPageSize1G);
  {
    absl::Status st = alloc->Allocate(kPageSize1G, {.page_size = kPageSize1G}).status();
    if (st.code() == absl::StatusCode::kInvalidArgument) GTEST_SKIP() << st;  // no 1G pool
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    for (const char* word : {"hugetlb", "1G", "node", "free"}) {
      EXPECT_NE(st.message().find(word), absl::string_view::npos) << word << " in " << st;
    }
  }
  EXPECT_EQ(FreeHugePages(kPageSize1G), baseline);
  std::optional<PoolStats> s = FindStats(*alloc, BackingKind::kHugetlb, kPageSize1G);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->mapped_bytes, 0u);
  EXPECT_EQ(s->folios, 0u);
}

// A 1G folio is never cached, but the pieces of its page may be: a 2M folio freed from
// a 1G pool waits in its thread's magazine, and the page cannot merge back while it does.
// A 1G request from a pool at its limit gets the page all the same, whether the piece
// waits in the requesting thread's magazine or in another's, idle, thread's.
TEST(Alloc, AWholeGigMergesBackFromPiecesInTheMagazines) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  auto alloc = NewAllocator({.max_bytes_per_pool = kPageSize1G});
  const AllocOptions gig{.page_size = kPageSize1G, .zero = false};
  // This thread's magazine.
  {
    absl::StatusOr<FolioHandle> piece = alloc->Allocate(kPageSize2M, gig);
    ASSERT_TRUE(piece.ok()) << piece.status();
  }
  {
    absl::StatusOr<FolioHandle> whole = alloc->Allocate(kPageSize1G, gig);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(whole->size(), kPageSize1G);
  }
  // Another thread's, idle while the request runs.
  std::mutex mu;
  std::condition_variable cv;
  int step = 0;
  std::thread idle([&] {
    {
      absl::StatusOr<FolioHandle> piece = alloc->Allocate(kPageSize2M, gig);
      EXPECT_TRUE(piece.ok()) << piece.status();
    }
    std::unique_lock<std::mutex> lock(mu);
    step = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return step == 2; });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return step == 1; });
  }
  absl::StatusOr<FolioHandle> whole = alloc->Allocate(kPageSize1G, gig);
  EXPECT_TRUE(whole.ok()) << whole.status();
  {
    std::lock_guard<std::mutex> lock(mu);
    step = 2;
    cv.notify_all();
  }
  idle.join();
}

TEST(Alloc, ShrinkGivesWhollyFreePagesBackOnly) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator();
  absl::StatusOr<FolioHandle> a = alloc->Allocate(kPageSize2M);
  absl::StatusOr<FolioHandle> b = alloc->Allocate(kPageSize2M);
  absl::StatusOr<FolioHandle> c = alloc->Allocate(8192);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  // The pool grows by what it has mapped: 2M, 2M, then 4M for c.
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline - 4);
  a->Reset();
  EXPECT_EQ(alloc->Shrink(), kPageSize2M);  // b and the extent holding c stay
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline - 3);
  b->Reset();
  c->Reset();
  EXPECT_EQ(alloc->Shrink(), 3 * kPageSize2M);
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline);
}

// The kernel page size in kB of the mapping holding `p` (/proc/self/smaps), 0 if none.
int64_t KernelPageKb(const void* p) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return -1;
  const auto a = reinterpret_cast<uintptr_t>(p);
  char line[512];
  bool inside = false;
  int64_t kb = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      inside = a >= lo && a < hi;
    } else if (inside && std::sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) {
      break;
    }
  }
  std::fclose(f);
  return inside ? kb : 0;
}

// A child of fork() has none of the pools' memory (MADV_DONTFORK): an allocator made
// before the fork refuses to hand it out there, and its end leaves the holes alone, which
// the child may have filled with mappings of its own.
TEST(Alloc, ForkedChildIsRefusedThePoolsAndKeepsItsOwnMappings) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 3);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator();
  // A 4K folio in this thread's magazine, a free 2M one in the pool, a live one held.
  for (size_t bytes : {kPageSize4K, kPageSize2M}) {
    absl::StatusOr<FolioHandle> h = alloc->Allocate(bytes);
    ASSERT_TRUE(h.ok()) << h.status();
  }
  absl::StatusOr<FolioHandle> held = alloc->Allocate(kPageSize2M);
  ASSERT_TRUE(held.ok()) << held.status();
  void* const hole = held->data();

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    for (size_t bytes : {kPageSize4K, kPageSize2M}) {
      absl::StatusOr<FolioHandle> h = alloc->Allocate(bytes);
      if (h.ok()) code = 1;
      if (!h.ok() && (h.status().code() != absl::StatusCode::kFailedPrecondition ||
                      h.status().message().find("fork()") == absl::string_view::npos)) {
        code = 2;
      }
    }
    if (alloc->Shrink() != 0) code = 3;
    held->Reset();  // bookkeeping only: touches none of the folio's memory
    // The child's own memory where the held folio's extent was: a mapping of its own, or
    // one its runtime made there meanwhile (ThreadSanitizer's threads take such holes).
    void* own = ::mmap(hole, kPageSize2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (own == MAP_FAILED && errno == EEXIST && KernelPageKb(hole) == 2048) _exit(4);
    if (own != MAP_FAILED && own != hole) _exit(6);
    if (own == hole) *static_cast<volatile uint64_t*>(own) = 42;
    const bool occupied = own == hole || errno == EEXIST;
    alloc.reset();
    if (occupied && KernelPageKb(hole) == 0) _exit(5);  // unmapped by the allocator's end
    if (own == hole && *static_cast<volatile uint64_t*>(own) != 42) _exit(5);
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: the child was handed a folio, 2: another error or a message without fork(), "
         "3: Shrink gave something back, 4: the extent was still mapped in the child, "
         "5: the allocator's end changed the child's mapping, 6: the kernel placed the child's "
         "mapping elsewhere";
  held->Reset();
  alloc->Shrink();
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline);
}

TEST(Alloc, AllocatorGoneWhilePinnedKeepsTheMemoryUntilUnpin) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  Folio* f;
  {
    auto alloc = NewAllocator();
    absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize2M);
    ASSERT_TRUE(h.ok()) << h.status();
    f = h->folio();
    std::memset(h->data(), 7, h->size());
    HUGEMM_ASSERT_OK(FolioTryGrab(f, 1, RefKind::kPin));
  }  // handle, then allocator, gone
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline - 1);
  EXPECT_TRUE(AllBytesAre(f->data, f->size(), 7));
  FolioUngrab(f, 1, RefKind::kPin);
  EXPECT_EQ(FreeHugePages(kPageSize2M), baseline);
}

TEST(Alloc, HugetlbfsDescriptorsInTheReserveThenSystemMemory) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a 2M hugetlbfs mount");
  auto alloc = NewAllocator({.meta_reserve_bytes = 4096, .thread_cache = false});
  const AllocOptions opts{.backing = BackingKind::kHugetlbfs, .hugetlbfs_mount = mount};
  std::vector<FolioHandle> held;
  int reserve = 0, system = 0;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(0, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    std::string_view where = h->info().meta_placement();
    (where == "reserve" ? reserve : system)++;
    held.push_back(std::move(*h));
  }
  EXPECT_GT(reserve, 0);
  EXPECT_GT(system, 0);  // 4K holds one run of 64: the rest fell back
  PoolStats s = *FindStats(*alloc, BackingKind::kHugetlbfs, kPageSize2M);
  EXPECT_EQ(s.reserve_bytes, 4096u);
  // 4K folios' descriptors come in runs of 64 pages: the first run fits the reserve (73
  // slots), the next does not; larger folios' descriptors take single slots left over.
  EXPECT_GE(s.reserve_descriptors, 64u);
  EXPECT_LE(s.reserve_descriptors, 4096 / sizeof(Folio));
  // The reserve page itself is never a folio.
  for (const FolioHandle& h : held) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(h.data()) & ~(kPageSize2M - 1);
    EXPECT_GE(reinterpret_cast<uintptr_t>(h.data()), base + 4096);
    EXPECT_EQ(Allocator::FolioOf(reinterpret_cast<void*>(base)), nullptr);
  }
  // A whole 2M folio still comes (from a second page of that extent).
  absl::StatusOr<FolioHandle> whole = alloc->Allocate(kPageSize2M, opts);
  ASSERT_TRUE(whole.ok()) << whole.status();
  held.clear();
  whole->Reset();
  EXPECT_GT(alloc->Shrink(), 0u);
  EXPECT_EQ(FindStats(*alloc, BackingKind::kHugetlbfs, kPageSize2M)->mapped_bytes, 0u);
}

// A reserve larger than the cap (half the first native page) is the cap, up to SIZE_MAX,
// whose rounding up to 4K must not wrap to no reserve at all.
TEST(Alloc, HugetlbfsReserveBeyondTheCapIsTheCap) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a 2M hugetlbfs mount");
  const AllocOptions opts{.backing = BackingKind::kHugetlbfs, .hugetlbfs_mount = mount};
  for (size_t reserve : {kPageSize2M, size_t{1} << 40, SIZE_MAX - kPageSize4K, SIZE_MAX}) {
    SCOPED_TRACE(::testing::Message() << "meta_reserve_bytes " << reserve);
    auto alloc = NewAllocator({.meta_reserve_bytes = reserve, .thread_cache = false});
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(0, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_STREQ(h->info().meta_placement(), "reserve");
    const PoolStats s = *FindStats(*alloc, BackingKind::kHugetlbfs, kPageSize2M);
    EXPECT_EQ(s.reserve_bytes, kPageSize2M / 2);
    EXPECT_EQ(s.free_bytes + h->size() + s.reserve_bytes, s.mapped_bytes);
  }
}

TEST(Alloc, RealDevDaxSplitMergeAndReserve) {
  const std::string dax = testing::TestDaxDevice();
  HUGEMM_NEED(!dax.empty(), "needs a device-DAX device in $HUGEMM_TEST_DAX (VM tests)");
  auto alloc = NewAllocator({.meta_reserve_bytes = 4096, .thread_cache = false});
  const AllocOptions opts{.backing = BackingKind::kDevDax, .page_size = 0, .devdax_path = dax};
  std::vector<FolioHandle> held;
  for (int order = 0; order <= 9; ++order) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(Allocator::FolioOf(h->data() + h->size() - 1), h->folio());
    held.push_back(std::move(*h));
  }
  EXPECT_STREQ(held.front().info().meta_placement(), "reserve");
  held.clear();
  EXPECT_GT(alloc->Shrink(), 0u);
}

TEST(Alloc, AnonFallbackHandsOut4KFolios) {
  auto alloc = NewAllocator();
  const AllocOptions opts{.backing = BackingKind::kAnon, .page_size = 0};
  absl::StatusOr<FolioHandle> h = alloc->Allocate(100, opts);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->size(), kPageSize4K);
  EXPECT_EQ(Allocator::FolioOf(h->data() + 4095), h->folio());
  EXPECT_EQ(alloc->Allocate(8192, opts).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Alloc, ManyThreadsNoLeak) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 64);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator();
  constexpr int kThreads = 4;
  constexpr int kRounds = 3000;
  // Handles cross threads: each thread frees what its neighbour allocated.
  std::vector<std::vector<FolioHandle>> mailbox(kThreads);
  std::vector<std::mutex> mu(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<FolioHandle> mine;
      for (int i = 0; i < kRounds; ++i) {
        const int order = static_cast<int>(rng() % 7);
        absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, {.zero = (i % 4) == 0});
        if (!h.ok()) {
          failures.fetch_add(1);
          continue;
        }
        if ((i % 4) == 0 && !AllBytesAre(h->data(), h->size(), 0)) failures.fetch_add(1);
        std::memset(h->data(), t + 1, 64);
        if (rng() % 3 == 0) {
          std::lock_guard<std::mutex> lock(mu[(t + 1) % kThreads]);
          mailbox[(t + 1) % kThreads].push_back(std::move(*h));
        } else {
          mine.push_back(std::move(*h));
        }
        if (mine.size() > 8) {
          if (*mine.front().data() != std::byte(t + 1)) failures.fetch_add(1);
          mine.erase(mine.begin());
        }
        if (i % 16 == 0) {
          std::lock_guard<std::mutex> lock(mu[t]);
          mailbox[t].clear();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (auto& m : mailbox) m.clear();  // freed on this thread: into its magazine
  EXPECT_EQ(failures.load(), 0);
  alloc->Shrink();  // flushes this thread's magazine; the workers drained theirs at exit
  ExpectTwoMegPoolEmpty(*alloc, baseline);
}

// A thread that frees and then waits (a completion thread between bursts) holds the freed
// folios in its magazines. They are still the allocator's to give: another thread's
// Shrink gives their pages back to the kernel, and another thread's allocation from a
// pool at its limit gets them, where both used to find nothing.
TEST(Alloc, WhatAnIdleThreadsMagazinesHoldServesOtherThreads) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator({.max_bytes_per_pool = 2 * kPageSize2M});
  std::mutex mu;
  std::condition_variable cv;
  int step = 0;
  auto wait_for = [&](int s) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return step >= s; });
  };
  auto go = [&](int s) {
    std::lock_guard<std::mutex> lock(mu);
    step = std::max(step, s);
    cv.notify_all();
  };
  std::thread idle([&] {
    for (int round = 0; round < 2; ++round) {
      std::vector<FolioHandle> held;
      for (int i = 0; i < 2; ++i) {
        absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize2M, {.zero = false});
        EXPECT_TRUE(h.ok()) << h.status();
        if (h.ok()) held.push_back(std::move(*h));
      }
      held.clear();  // into this thread's magazine (it holds 16 of 2M)
      go(2 * round + 1);
      wait_for(2 * round + 2);
    }
  });
  // Steps in a lambda, so that a failed ASSERT still lets the thread finish.
  [&] {
    // The pool is at its limit and both pages wait in the idle thread's magazine.
    wait_for(1);
    std::vector<FolioHandle> mine;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize2M, {.zero = false});
      ASSERT_TRUE(h.ok()) << h.status();
      mine.push_back(std::move(*h));
    }
    EXPECT_EQ(alloc->Allocate(kPageSize2M).status().code(), absl::StatusCode::kResourceExhausted);
    mine.clear();
    alloc->FlushThreadCache();  // this thread's magazine holds them now: back to the pool
    go(2);
    // The idle thread takes them again, frees them, and waits.
    wait_for(3);
    EXPECT_EQ(alloc->Shrink(), 2 * kPageSize2M);
    ExpectTwoMegPoolEmpty(*alloc, baseline);
  }();
  go(4);
  idle.join();
}

// Threads allocating and freeing while another drains the magazines of whichever of them
// is idle (Shrink, again and again): no folio is handed out twice (each carries its
// holder's stamp until freed), nothing is lost, and once the workers stop (still alive)
// one Shrink gives every page back.
TEST(Alloc, DrainingIdleThreadsWhileTheyWorkLosesAndDoublesNothing) {
  constexpr int kThreads = 3, kRounds = 4000;
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 64);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  auto alloc = NewAllocator();
  std::atomic<int> failures{0};
  std::atomic<int> done{0};
  std::atomic<bool> release{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t + 17);
      std::vector<std::pair<FolioHandle, uint64_t>> mine;
      for (int i = 0; i < kRounds; ++i) {
        const int order = static_cast<int>(rng() % 10);
        absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, {.zero = false});
        if (!h.ok()) {
          failures.fetch_add(1);
          continue;
        }
        const uint64_t stamp =
            (uint64_t{static_cast<uint32_t>(t)} << 32) | static_cast<uint32_t>(i);
        std::memcpy(h->data(), &stamp, sizeof stamp);
        std::memcpy(h->data() + h->size() - sizeof stamp, &stamp, sizeof stamp);
        mine.emplace_back(std::move(*h), stamp);
        if (mine.size() > 6 || rng() % 5 == 0) {
          const size_t k = rng() % mine.size();
          uint64_t head = 0, tail = 0;
          const FolioHandle& f = mine[k].first;
          std::memcpy(&head, f.data(), sizeof head);
          std::memcpy(&tail, f.data() + f.size() - sizeof tail, sizeof tail);
          if (head != mine[k].second || tail != mine[k].second) failures.fetch_add(1);
          mine.erase(mine.begin() + static_cast<ptrdiff_t>(k));
        }
        if (i % 256 == 0) std::this_thread::yield();  // idle for a moment: a drain may come
      }
      mine.clear();
      done.fetch_add(1);
      while (!release.load()) std::this_thread::yield();
    });
  }
  do {
    alloc->Shrink();
  } while (done.load() < kThreads);
  EXPECT_EQ(failures.load(), 0);
  // Every worker is alive and idle, its magazines full of what it freed.
  alloc->Shrink();
  ExpectTwoMegPoolEmpty(*alloc, baseline);
  release.store(true);
  for (auto& th : threads) th.join();
}

// A thread that outlives many allocators (a program opening and closing runtimes) keeps
// per-thread state for the live ones only.
TEST(Alloc, ThreadForgetsTheCachesOfAllocatorsGone) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const size_t named_before = alloc_internal::ThreadCacheSet::NamedByThisThread();
  auto kept = NewAllocator();
  absl::StatusOr<FolioHandle> k = kept->Allocate(kPageSize4K);
  ASSERT_TRUE(k.ok()) << k.status();
  for (int i = 0; i < 50; ++i) {
    auto alloc = NewAllocator();
    absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize4K);
    ASSERT_TRUE(h.ok()) << h.status();
    std::memset(h->data(), i, 64);
  }
  auto last = NewAllocator();
  absl::StatusOr<FolioHandle> h = last->Allocate(kPageSize4K);
  ASSERT_TRUE(h.ok()) << h.status();
  // The kept allocator's and the last one's, besides what the thread named before.
  EXPECT_LE(alloc_internal::ThreadCacheSet::NamedByThisThread(), named_before + 2);
  // The kept allocator's cache is still this thread's: a free goes back into it.
  k->Reset();
  absl::StatusOr<FolioHandle> again = kept->Allocate(kPageSize4K);
  ASSERT_TRUE(again.ok()) << again.status();
}

// Folios may be freed on any thread and outlive their allocator (alloc.h): here the last
// references drop on another thread while the allocator's destructor runs. Each release
// goes into a thread cache that is being closed, or straight to the pool: none reads the
// cache set after it is gone (ASan's use-after-free, a hang on its destroyed mutex in a
// Release build, before the caches were closed), and every page is back afterwards.
TEST(Alloc, LastReferencesDroppedOnAnotherThreadWhileTheAllocatorGoes) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int64_t baseline = FreeHugePages(kPageSize2M);
  for (int round = 0; round < 2000; ++round) {
    auto alloc = NewAllocator();
    std::vector<FolioHandle> held;
    for (int i = 0; i < 64; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->Allocate(kPageSize4K);
      ASSERT_TRUE(h.ok()) << h.status();
      held.push_back(std::move(*h));
    }
    std::atomic<bool> go{false};
    std::thread dropper([&] {
      while (!go.load(std::memory_order_acquire)) {
      }
      // A different moment of the destructor each round.
      for (int spin = 0; spin < round % 64; ++spin) __builtin_ia32_pause();
      held.clear();  // the last references, racing with ~Allocator
    });
    go.store(true, std::memory_order_release);
    alloc.reset();
    dropper.join();
  }
  EXPECT_TRUE(testing::WaitForFreeHugePages(kPageSize2M, baseline))
      << "pages of the allocators gone were not all given back: " << FreeHugePages(kPageSize2M)
      << " free of " << baseline;
}

TEST(Alloc, MetadataMeasuredMatchesTheModel) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  // Grown from empty by 2M, 2M, 4M, 8M, 16M: 16 pages in 5 extents. The model is a
  // 1 GiB pool (10 extents for 512 pages), so per folio this one costs more.
  auto alloc = NewAllocator({.thread_cache = false});
  std::vector<FolioHandle> held;
  for (int i = 0; i < 16; ++i) held.push_back(std::move(*alloc->Allocate(kPageSize2M)));
  PoolStats s = *FindStats(*alloc, BackingKind::kHugetlb, kPageSize2M);
  EXPECT_EQ(s.extents, 5u);
  EXPECT_EQ(s.folios, 16u);
  const MetadataCost model = *FolioMetadataCost(kPageSize2M, kPageSize2M);
  EXPECT_GE(s.metadata_bytes / s.folios, model.bytes_per_gib / 512);
  EXPECT_LE(s.metadata_bytes / s.folios, 160u);
}

}  // namespace
}  // namespace hugemm
