// The MR cache on real huge pages, with a registrar that pins and records frames as
// ibv_reg_mr does (this machine has no RDMA device; tests/verbs/rdma_vm_test.cc runs the
// cache against soft-RoCE in the VM): hits at buffer and extent granularity, exact
// invalidation on every kind of change, handles that keep memory put, LRU bounds, bad
// input, and the validity check shown to be what keeps it exact.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
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
using ::hugemm::verbs_internal::MrCacheTestPeer;

constexpr int kRead = IBV_ACCESS_REMOTE_READ;
constexpr int kWrite = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;

class MrCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
    HUGEMM_NEED(CanReadFrames(), "needs PFNs from /proc/self/pagemap (root)");
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
  }
  void TearDown() override {
    cache_.reset();
    rt_.reset();
  }

  MrCache& Cache(MrCacheOptions options = {}) {
    options.registrar = &fake_;
    absl::StatusOr<std::unique_ptr<MrCache>> c = MrCache::Create(*rt_, options);
    EXPECT_TRUE(c.ok()) << c.status();
    cache_ = std::move(*c);
    return *cache_;
  }
  Buffer Map(size_t length, size_t page_size = kPageSize2M) {
    absl::StatusOr<Buffer> b = rt_->MapBuffer(length, {.page_size = page_size});
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : Buffer();
  }
  // A handle that must be good, and not stale.
  MrHandle MustGet(const void* addr, size_t length, int access = kWrite) {
    absl::StatusOr<MrHandle> h = cache_->Get(pd_, addr, length, access);
    EXPECT_TRUE(h.ok()) << h.status();
    if (!h.ok()) return MrHandle();
    std::optional<std::string> stale = fake_.Stale(h->mr(), addr, length);
    EXPECT_FALSE(stale.has_value()) << *stale;
    return std::move(*h);
  }
  int32_t PinCount(const void* addr) {
    absl::StatusOr<FolioInfo> info = rt_->FolioInfoAt(addr);
    return info.ok() ? info->pincount : -1;
  }

  FakeRegistrar fake_;
  ibv_pd pd_storage_{};
  ibv_pd* pd_ = &pd_storage_;
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<MrCache> cache_;
};

TEST_F(MrCacheTest, NeighbouringRequestsHitTheBufferRegistration) {
  MrCache& cache = Cache();
  Buffer buf = Map(2 * kPageSize2M);
  {
    MrHandle a = MustGet(buf.data() + 100, 4096);
    // The miss registered the whole buffer, and pinned only the bytes asked for.
    EXPECT_EQ(a.mr()->addr, buf.data());
    EXPECT_EQ(a.mr()->length, buf.size());
    EXPECT_EQ(PinCount(buf.data()), 2);
    EXPECT_EQ(PinCount(buf.data() + kPageSize2M), 0);
    MrHandle b = MustGet(buf.data() + kPageSize2M + 8192, 65536);
    EXPECT_EQ(b.mr(), a.mr());
    EXPECT_EQ(PinCount(buf.data() + kPageSize2M), 16);
    // Straddling both folios: one span per folio.
    MrHandle c = MustGet(buf.data() + kPageSize2M - 4096, 8192, IBV_ACCESS_LOCAL_WRITE);
    EXPECT_EQ(c.mr(), a.mr());
    EXPECT_EQ(c.spans().size(), 2u);
    EXPECT_EQ(cache.Stats().held, 1u);
  }
  EXPECT_EQ(PinCount(buf.data()), 0);
  EXPECT_EQ(PinCount(buf.data() + kPageSize2M), 0);
  const MrCacheStats s = cache.Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.bytes, buf.size());
  EXPECT_EQ(s.held, 0u);
  EXPECT_EQ(fake_.live(), 1u);  // cached, not held
}

TEST_F(MrCacheTest, ARangeOverManyFoliosPinsEachOnce) {
  Cache();
  Buffer buf = Map(8 * kPageSize2M);
  MrHandle h = MustGet(buf.data() + 4096, buf.size() - 8192);
  ASSERT_EQ(h.spans().size(), 8u);
  EXPECT_EQ(h.spans()[0].first_page, 1u);
  EXPECT_EQ(h.spans()[7].pages, 511u);
  for (size_t i = 0; i < 8; ++i)
    EXPECT_EQ(PinCount(buf.data() + i * kPageSize2M), i == 0 || i == 7 ? 511 : 512);
}

TEST_F(MrCacheTest, ExtentScopeSharesOneRegistrationAmongAllocations) {
  MrCache& cache = Cache({.scope = MrScope::kExtent});
  absl::StatusOr<Buffer> a = rt_->Allocate(4096);
  absl::StatusOr<Buffer> b = rt_->Allocate(4096);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<BufferSpan> sa = rt_->BufferAt(a->data());
  absl::StatusOr<BufferSpan> sb = rt_->BufferAt(b->data());
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(sa->allocated);
  EXPECT_EQ(sa->extent_size, kPageSize2M);
  EXPECT_EQ(sa->size, 4096u);
  ASSERT_EQ(sa->extent_data, sb->extent_data) << "two 4K allocations from different extents";
  MrHandle ha = MustGet(a->data(), 4096);
  MrHandle hb = MustGet(b->data(), 4096);
  EXPECT_EQ(ha.mr(), hb.mr());
  EXPECT_EQ(ha.mr()->addr, sa->extent_data);
  EXPECT_EQ(ha.mr()->length, kPageSize2M);
  EXPECT_EQ(cache.Stats().misses, 1u);
}

TEST_F(MrCacheTest, BufferScopeRegistersEachAllocation) {
  MrCache& cache = Cache({.scope = MrScope::kBuffer});
  absl::StatusOr<Buffer> a = rt_->Allocate(4096);
  absl::StatusOr<Buffer> b = rt_->Allocate(8192);
  ASSERT_TRUE(a.ok() && b.ok());
  MrHandle ha = MustGet(a->data(), 100);
  MrHandle hb = MustGet(b->data() + 4096, 100);
  EXPECT_NE(ha.mr(), hb.mr());
  EXPECT_EQ(ha.mr()->length, 4096u);
  EXPECT_EQ(hb.mr()->addr, b->data());
  EXPECT_EQ(hb.mr()->length, 8192u);
  EXPECT_EQ(cache.Stats().misses, 2u);
  // A request must stay inside the buffer it starts in.
  absl::StatusOr<MrHandle> past = cache.Get(pd_, a->data() + 4000, 200, kWrite);
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(past.status().message().find("runs past the end of the buffer"), std::string::npos);
}

TEST_F(MrCacheTest, ProtectionDomainAndAccessKeyTheRegistration) {
  MrCache& cache = Cache();
  Buffer buf = Map(kPageSize2M);
  ibv_pd other{};
  const ibv_mr* read_only;
  {
    MrHandle r = MustGet(buf.data(), 4096, kRead);
    read_only = r.mr();
  }
  MrHandle w = MustGet(buf.data(), 4096, kWrite);  // needs more access: registers again
  EXPECT_NE(w.mr(), read_only);
  absl::StatusOr<MrHandle> o = cache.Get(&other, buf.data(), 4096, kRead);
  ASSERT_TRUE(o.ok());
  EXPECT_NE(o->mr(), read_only);
  EXPECT_NE(o->mr(), w.mr());
  MrHandle r2 = MustGet(buf.data(), 4096, kRead);
  EXPECT_TRUE(r2.mr() == read_only || r2.mr() == w.mr());
  EXPECT_EQ(cache.Stats().misses, 3u);
}

// Every kind of change to memory under a registration drops it: deregistered at once when
// no handle holds it, and the next request registers anew.
TEST_F(MrCacheTest, EveryKindOfChangeDropsTheRegistration) {
  MrCache& cache = Cache();
  Buffer buf = Map(2 * kPageSize2M);
  std::byte* p = buf.data();
  uint64_t invalidations = 0;
  auto registered_then = [&](auto change) {
    const ibv_mr* before;
    {
      MrHandle h = MustGet(p, 4096, kRead);
      before = h.mr();
    }
    ASSERT_TRUE(fake_.IsLive(before));
    change();
    EXPECT_FALSE(fake_.IsLive(before)) << "still registered after the change";
    EXPECT_EQ(cache.Stats().invalidations, ++invalidations);
    MrHandle again = MustGet(p, 4096, kRead);
    EXPECT_TRUE(fake_.IsLive(again.mr()));
  };
  registered_then([&] { HUGEMM_ASSERT_OK(rt_->table().Split(p + kPageSize2M)); });
  registered_then([&] { HUGEMM_ASSERT_OK(rt_->table().Protect(p, 4096, kProtRead)); });
  int device = 0;
  registered_then([&] { HUGEMM_ASSERT_OK(rt_->table().MakeExclusive(p + 8192, &device)); });
  // The device-exclusive page itself cannot be registered for the CPU's side.
  absl::StatusOr<MrHandle> excl = cache.Get(pd_, p + 8192, 4096, kRead);
  EXPECT_EQ(excl.status().code(), absl::StatusCode::kFailedPrecondition);
  registered_then([&] { HUGEMM_ASSERT_OK(rt_->table().RestoreExclusive(p + 8192)); });
  // Read-only memory refuses write access; read access still registers.
  absl::StatusOr<MrHandle> w = cache.Get(pd_, p, 4096, kWrite);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kPermissionDenied);

  const MrCacheStats before_free = cache.Stats();
  HUGEMM_ASSERT_OK(buf.Free());
  EXPECT_EQ(fake_.live(), 0u);
  EXPECT_EQ(cache.Stats().invalidations, before_free.invalidations + 1);
  absl::StatusOr<MrHandle> gone = cache.Get(pd_, p, 4096, kRead);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache.Stats().entries, 0u);
}

// A registration held by handles survives the change until the last handle goes, and the
// memory under a handle is not given back while it is held.
TEST_F(MrCacheTest, HeldRegistrationGoesWithItsLastHandle) {
  MrCache& cache = Cache();
  Buffer buf = Map(kPageSize2M);
  std::byte* p = buf.data();
  MrHandle a = MustGet(p, 4096);
  MrHandle b = MustGet(p + 4096, 4096);
  const ibv_mr* mr = a.mr();
  Folio* folio = a.spans()[0].folio;
  HUGEMM_ASSERT_OK(buf.Free());
  // Freed, unmapped from the table, but not gone: the NIC may still be using it.
  EXPECT_TRUE(fake_.IsLive(mr));
  EXPECT_EQ(folio->pincount(), 2);
  EXPECT_EQ(fake_.Stale(mr, p, 8192), std::nullopt);
  EXPECT_EQ(cache.Stats().held, 1u);
  a.Release();
  EXPECT_TRUE(fake_.IsLive(mr));
  b.Release();
  EXPECT_FALSE(fake_.IsLive(mr));
  const MrCacheStats s = cache.Stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.invalidations, 1u);
}

TEST_F(MrCacheTest, AllocatorMemoryUnderAHandleIsNotReused) {
  Cache({.scope = MrScope::kBuffer});
  absl::StatusOr<Buffer> buf = rt_->Allocate(4096);
  ASSERT_TRUE(buf.ok());
  std::byte* held = buf->data();
  MrHandle h = MustGet(held, 4096);
  HUGEMM_ASSERT_OK(buf->Free());
  std::vector<Buffer> more;
  for (int i = 0; i < 1100; ++i) {  // more than two extents' worth of 4K folios
    absl::StatusOr<Buffer> b = rt_->Allocate(4096);
    ASSERT_TRUE(b.ok()) << b.status();
    ASSERT_NE(b->data(), held) << "a folio pinned under a handle was handed out again";
    more.push_back(std::move(*b));
  }
  h.Release();
  more.clear();
}

TEST_F(MrCacheTest, EvictsTheLeastRecentlyReleased) {
  MrCache& cache = Cache({.max_entries = 2});
  Buffer a = Map(kPageSize2M), b = Map(kPageSize2M), c = Map(kPageSize2M);
  const ibv_mr *ma, *mb;
  { ma = MustGet(a.data(), 64).mr(); }
  { mb = MustGet(b.data(), 64).mr(); }
  { EXPECT_EQ(MustGet(a.data(), 64).mr(), ma); }  // a is now the most recent
  MrHandle hc = MustGet(c.data(), 64);
  EXPECT_TRUE(fake_.IsLive(ma));
  EXPECT_FALSE(fake_.IsLive(mb));
  MrCacheStats s = cache.Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.entries, 2u);
  // Both left are needed now: with c held and a held, nothing can make room for b.
  MrHandle ha = MustGet(a.data(), 64);
  absl::StatusOr<MrHandle> hb = cache.Get(pd_, b.data(), 64, kWrite);
  EXPECT_EQ(hb.status().code(), absl::StatusCode::kResourceExhausted);
  // The bytes are the held registrations' sum, not each one's size.
  EXPECT_NE(hb.status().message().find("2 registrations, 4194304 bytes in all, are held"),
            std::string::npos)
      << hb.status();
  EXPECT_EQ(fake_.live(), 2u);
  hc.Release();
  MustGet(b.data(), 64);
  EXPECT_EQ(cache.Stats().evictions, 2u);
}

TEST_F(MrCacheTest, MaxBytesBoundsTheRegisteredBytes) {
  MrCache& cache = Cache({.max_bytes = 2 * kPageSize2M});
  Buffer a = Map(kPageSize2M), b = Map(kPageSize2M), c = Map(kPageSize2M);
  Buffer big = Map(2 * kPageSize2M + kPageSize2M);
  { MustGet(a.data(), 64); }
  { MustGet(b.data(), 64); }
  { MustGet(c.data(), 64); }
  MrCacheStats s = cache.Stats();
  EXPECT_EQ(s.bytes, 2 * kPageSize2M);
  EXPECT_EQ(s.evictions, 1u);
  absl::StatusOr<MrHandle> h = cache.Get(pd_, big.data(), 64, kWrite);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(h.status().message().find("larger than max_bytes"), std::string::npos);
  EXPECT_EQ(cache.Flush(), 2u);
  EXPECT_EQ(fake_.live(), 0u);
  EXPECT_EQ(cache.Stats().entries, 0u);
}

TEST_F(MrCacheTest, ARefusedRegistrationLeavesNothingBehind) {
  MrCache& cache = Cache();
  Buffer buf = Map(kPageSize2M);
  fake_.FailNextRegister(absl::ResourceExhaustedError("device out of MRs"));
  absl::StatusOr<MrHandle> h = cache.Get(pd_, buf.data(), 4096, kWrite);
  ASSERT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(h.status().message().find("device out of MRs"), std::string::npos);
  EXPECT_NE(h.status().message().find("registering"), std::string::npos);
  EXPECT_EQ(PinCount(buf.data()), 0);
  MrCacheStats s = cache.Stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.bytes, 0u);
  EXPECT_EQ(fake_.live(), 0u);
  MustGet(buf.data(), 4096);
  EXPECT_EQ(cache.Stats().misses, 1u);
}

TEST_F(MrCacheTest, BadInputIsRefusedWithAReason) {
  MrCache& cache = Cache();
  Buffer buf = Map(kPageSize2M);
  auto code_of = [&](ibv_pd* pd, const void* addr, size_t len, int access) {
    return cache.Get(pd, addr, len, access).status().code();
  };
  using absl::StatusCode;
  EXPECT_EQ(code_of(nullptr, buf.data(), 64, kWrite), StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, buf.data(), 0, kWrite), StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, reinterpret_cast<void*>(~uintptr_t{0} - 10), 64, kWrite),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, buf.data(), 64, 1 << 12), StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, buf.data(), 64, IBV_ACCESS_ON_DEMAND), StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, buf.data(), 64, IBV_ACCESS_ZERO_BASED), StatusCode::kInvalidArgument);
  EXPECT_EQ(code_of(pd_, buf.data() + 4096, kPageSize2M, kWrite), StatusCode::kInvalidArgument);
  std::vector<char> heap(4096);
  absl::StatusOr<MrHandle> h = cache.Get(pd_, heap.data(), 64, kWrite);
  EXPECT_EQ(h.status().code(), StatusCode::kNotFound);
  EXPECT_NE(h.status().message().find("not memory of this runtime"), std::string::npos);
  EXPECT_EQ(fake_.registered(), 0u);
  EXPECT_EQ(PinCount(buf.data()), 0);

  EXPECT_EQ(MrCache::Create(*rt_, {.max_entries = 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(MrCache::Create(*rt_, {.max_bytes = 0}).status().code(), StatusCode::kInvalidArgument);
  MrHandle empty;
  EXPECT_FALSE(empty);
  EXPECT_EQ(empty.mr(), nullptr);
  empty.Release();
}

// Memory of another runtime is not this cache's: refused, with nothing registered or
// pinned; and the other runtime closing leaves this cache's registrations whole.
TEST_F(MrCacheTest, AnotherRuntimesMemoryIsRefused) {
  MrCache& cache = Cache();
  absl::StatusOr<std::unique_ptr<Runtime>> other = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Buffer> mapped = (*other)->MapBuffer(kPageSize2M);
  absl::StatusOr<Buffer> allocated = (*other)->Allocate(64 << 10);
  ASSERT_TRUE(mapped.ok() && allocated.ok());
  for (const std::byte* p : {mapped->data(), allocated->data()}) {
    absl::StatusOr<MrHandle> h = cache.Get(pd_, p, 4096, kWrite);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kNotFound) << h.status();
    EXPECT_NE(h.status().message().find("not memory of this runtime"), std::string::npos);
    absl::StatusOr<FolioInfo> info = (*other)->FolioInfoAt(p);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->pincount, 0);
  }
  EXPECT_EQ(fake_.registered(), 0u);
  Buffer mine = Map(kPageSize2M);
  MrHandle h = MustGet(mine.data(), 4096);
  *mapped = Buffer();
  *allocated = Buffer();
  other->reset();
  EXPECT_EQ(fake_.registered(), 1u);
  EXPECT_EQ(PinCount(mine.data()), 1);
  MrHandle again = MustGet(mine.data(), 4096);
  EXPECT_EQ(again.mr(), h.mr());
}

TEST_F(MrCacheTest, ExternalMemoryRegistersTheRequest) {
  MrCache& cache = Cache();
  void* mem = mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  absl::StatusOr<uint64_t> id = rt_->RegisterExternal(mem, kPageSize2M);
  ASSERT_TRUE(id.ok()) << id.status();
  auto* p = static_cast<std::byte*>(mem);
  const ibv_mr* mr;
  {
    MrHandle h = MustGet(p + 100, 5000);
    mr = h.mr();
    EXPECT_EQ(h.mr()->addr, p);
    EXPECT_EQ(h.mr()->length, 8192u);
    // Pinned under the handle: the registration of the memory cannot be taken back.
    EXPECT_EQ(rt_->UnregisterExternal(*id).code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_TRUE(fake_.IsLive(mr));
  HUGEMM_ASSERT_OK(rt_->UnregisterExternal(*id));
  EXPECT_FALSE(fake_.IsLive(mr));
  EXPECT_EQ(cache.Stats().invalidations, 1u);
  munmap(mem, kPageSize2M);
}

// Registered memory is bounded by nothing the cache can see before it pins: a request far
// past its end is refused, at the cost of the folios met, and one over many folios is
// pinned whole.
TEST_F(MrCacheTest, ARequestFarPastRegisteredMemoryIsRefused) {
  MrCache& cache = Cache({.max_bytes = ~uint64_t{0}});
  constexpr size_t kPages = 40;
  void* mem = mmap(nullptr, kPages * kPageSize4K, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  absl::StatusOr<uint64_t> id = rt_->RegisterExternal(mem, kPages * kPageSize4K);
  ASSERT_TRUE(id.ok()) << id.status();
  auto* p = static_cast<std::byte*>(mem);
  auto pinned_pages = [&] {
    size_t n = 0;
    for (size_t i = 0; i < kPages; ++i) n += rt_->pinner().MaybeDmaPinned(p + i * kPageSize4K);
    return n;
  };
  absl::StatusOr<MrHandle> far = cache.Get(pd_, p, size_t{1} << 50, kRead);
  EXPECT_EQ(far.status().code(), absl::StatusCode::kNotFound) << far.status();
  EXPECT_EQ(pinned_pages(), 0u);
  EXPECT_EQ(cache.Stats().registrations, 0u);
  {
    MrHandle h = MustGet(p + 100, kPages * kPageSize4K - 100, kRead);
    EXPECT_EQ(h.spans().size(), kPages);
    EXPECT_EQ(pinned_pages(), kPages);
  }
  EXPECT_EQ(pinned_pages(), 0u);
  cache_.reset();
  HUGEMM_ASSERT_OK(rt_->UnregisterExternal(*id));
  munmap(mem, kPages * kPageSize4K);
}

// A handle that holds nothing says so: no registration, nothing pinned, and releasing it
// again does nothing.
TEST_F(MrCacheTest, AnEmptyHandleHoldsNoRegistration) {
  Cache();
  Buffer b = Map(kPageSize2M);
  MrHandle h = MustGet(b.data(), 4096);
  ASSERT_TRUE(h);
  MrHandle moved = std::move(h);
  EXPECT_FALSE(h);  // NOLINT(bugprone-use-after-move): moved-from handles are empty
  EXPECT_EQ(h.mr(), nullptr);
  EXPECT_TRUE(h.spans().empty());
  moved.Release();
  EXPECT_FALSE(moved);
  EXPECT_EQ(moved.mr(), nullptr);
  moved.Release();
  EXPECT_EQ(PinCount(b.data()), 0);
}

TEST_F(MrCacheTest, AHandleOutlivesItsCache) {
  Cache();
  Buffer buf = Map(kPageSize2M);
  MrHandle h = MustGet(buf.data(), 64);
  { MrHandle cached = MustGet(buf.data() + kPageSize4K, 64); }
  const ibv_mr* mr = h.mr();
  cache_.reset();
  EXPECT_TRUE(fake_.IsLive(mr));
  EXPECT_EQ(PinCount(buf.data()), 1);
  h.Release();
  EXPECT_FALSE(fake_.IsLive(mr));
  EXPECT_EQ(PinCount(buf.data()), 0);
}

// The proof that the sequence-word check is what keeps the cache exact: the same steps
// with the check switched off hand out a registration of memory the process no longer
// maps at that address.
TEST_F(MrCacheTest, WithoutTheValidityCheckAFreedBufferIsHandedOutStale) {
  for (bool check : {true, false}) {
    SCOPED_TRACE(check ? "with the check" : "without the check");
    MrCache& cache = Cache();
    MrCacheTestPeer::SetValidityCheck(cache, check);
    Buffer old_buf = Map(kPageSize2M);
    std::byte* addr = old_buf.data();
    { MustGet(addr, 4096); }
    HUGEMM_ASSERT_OK(old_buf.Free());
    // A new buffer at the same address, on other memory (the old registration still pins
    // the old page when it was not dropped).
    std::vector<Buffer> tries;
    Buffer reused;
    for (int i = 0; i < 8 && !reused; ++i) {
      Buffer b = Map(kPageSize2M);
      if (b.data() == addr) {
        reused = std::move(b);
      } else {
        tries.push_back(std::move(b));
      }
    }
    HUGEMM_NEED(static_cast<bool>(reused), "the kernel never placed a new buffer at " << addr);
    absl::StatusOr<MrHandle> h = cache.Get(pd_, addr, 4096, kWrite);
    ASSERT_TRUE(h.ok()) << h.status();
    std::optional<std::string> stale = fake_.Stale(h->mr(), addr, 4096);
    if (check) {
      EXPECT_EQ(stale, std::nullopt) << *stale;
      EXPECT_EQ(cache.Stats().misses, 2u);
    } else {
      EXPECT_TRUE(stale.has_value()) << "an unchecked cache returned a fresh registration";
      EXPECT_EQ(cache.Stats().misses, 1u);
    }
    h->Release();
    cache_.reset();
  }
}

// A child of fork() shares the device context, and so every registration, with its
// parent: its copy of the cache deregisters nothing (flushed, dropped, or at the last
// release of a handle, also of a registration invalidated before the fork) and registers
// nothing new.
TEST_F(MrCacheTest, AChildOfForkDeregistersAndRegistersNothing) {
  MrCache& cache = Cache();
  Buffer kept = Map(kPageSize2M);
  Buffer freed = Map(kPageSize2M);
  Buffer cached = Map(kPageSize2M);
  MrHandle a = MustGet(kept.data(), 4096);
  MrHandle b = MustGet(freed.data(), 4096);
  { MrHandle c = MustGet(cached.data(), 4096); }
  HUGEMM_ASSERT_OK(freed.Free());  // invalidates b's registration: dropped at b's release
  ASSERT_EQ(fake_.live(), 3u);
  const size_t registered = fake_.registered();
  const size_t deregistered = fake_.deregistered();

  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    int code = 0;
    absl::StatusOr<MrHandle> h = cache.Get(pd_, cached.data(), 4096, kWrite);
    if (h.ok() || h.status().code() != absl::StatusCode::kFailedPrecondition ||
        h.status().message().find("fork()") == absl::string_view::npos) {
      code = 1;
    }
    if (code == 0 && cache.Flush() != 0) code = 2;
    b.Release();
    if (code == 0 && fake_.deregistered() != deregistered) code = 3;
    cache_.reset();
    if (code == 0 && fake_.deregistered() != deregistered) code = 4;
    a.Release();  // after the cache: the entry is freed without deregistering
    if (code == 0 && (fake_.deregistered() != deregistered || fake_.registered() != registered)) {
      code = 5;
    }
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "1: Get was not refused, 2: Flush dropped, 3: the invalidated registration's last "
         "release, 4: dropping the cache, 5: the last release after the cache deregistered";

  // The parent's cache goes on: a hit, and the invalidated registration dropped here.
  MrHandle again = MustGet(cached.data() + 8192, 4096);
  EXPECT_EQ(cache.Stats().hits, 1u);
  b.Release();
  EXPECT_EQ(fake_.deregistered(), deregistered + 1);
  EXPECT_EQ(fake_.registered(), registered);
}

// What hugemm_close does under a handle still held: the cache goes, then the runtime. The
// memory under the held registration stays mapped on the same frames; the handle's
// release deregisters it, then unpins through the folios alone, and the memory goes back.
TEST_F(MrCacheTest, AHandleReleasedAfterItsRuntimeWentDeregistersThenGivesTheMemoryBack) {
  Cache();
  Buffer held = Map(kPageSize2M);
  Buffer unheld = Map(kPageSize2M);
  std::byte* addr = held.data();
  MrHandle h = MustGet(addr, 4096);
  { MrHandle u = MustGet(unheld.data(), 4096); }
  ASSERT_EQ(fake_.live(), 2u);
  const size_t deregistered = fake_.deregistered();
  held.Detach();  // left to the runtime's close, as the C API leaves its buffers
  unheld.Detach();

  cache_.reset();
  EXPECT_EQ(fake_.deregistered(), deregistered + 1);  // the registration no handle held
  rt_.reset();
  ASSERT_EQ(fake_.live(), 1u);
  // Still mapped, on the frames it was registered with.
  std::optional<std::string> stale = fake_.Stale(h.mr(), addr, 4096);
  EXPECT_FALSE(stale.has_value()) << *stale;
  h.Release();
  EXPECT_EQ(fake_.live(), 0u);
  EXPECT_EQ(fake_.deregistered(), deregistered + 2);
  // The last pin of the closed runtime's folio: its memory is unmapped.
  unsigned char resident = 0;
  EXPECT_EQ(mincore(addr, 4096, &resident), -1);
  EXPECT_EQ(errno, ENOMEM);
}

}  // namespace
}  // namespace hugemm
