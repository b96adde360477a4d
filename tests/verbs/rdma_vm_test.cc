// The MR cache against real soft-RoCE devices (in the VM, --rxe-pair): registrations the
// device made, and data a peer wrote through them. A queue pair on rxe_b writes into
// memory registered on rxe_a, so what "stale" means is seen in the data itself: a write
// through a stale registration lands in memory the process no longer maps.
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/hugemm_verbs.h"
#include "hugemm/verbs.h"
#include "runtime/verbs/mr_cache_test_peer.h"
#include "tests/test_util.h"
#include "tests/verbs/rc_endpoint.h"

namespace hugemm {
namespace {

using ::hugemm::testing::PeerInfo;
using ::hugemm::testing::RcEndpoint;
using ::hugemm::verbs_internal::MrCacheTestPeer;

constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

class RdmaVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED(!Env("HUGEMM_TEST_RXE_A").empty(),
                "needs the soft-RoCE pair of the VM (tests/vm/run-in-vm.sh --rxe-pair)");
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
    const int gid = std::atoi(Env("HUGEMM_TEST_RXE_GID").c_str());
    absl::StatusOr<std::unique_ptr<RcEndpoint>> a = RcEndpoint::Open(Env("HUGEMM_TEST_RXE_A"), gid);
    absl::StatusOr<std::unique_ptr<RcEndpoint>> b = RcEndpoint::Open(Env("HUGEMM_TEST_RXE_B"), gid);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    a_ = std::move(*a);
    b_ = std::move(*b);
    HUGEMM_ASSERT_OK(a_->Connect(b_->Info()));
    HUGEMM_ASSERT_OK(b_->Connect(a_->Info()));
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
    absl::StatusOr<std::unique_ptr<MrCache>> cache = MrCache::Create(*rt_);
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(*cache);
    // The writer's source, registered on rxe_b without the cache under test.
    absl::StatusOr<Buffer> src = rt_->MapBuffer(kPageSize2M);
    ASSERT_TRUE(src.ok()) << src.status();
    src_ = std::move(*src);
    src_mr_ = ibv_reg_mr(b_->pd(), src_.data(), src_.size(), kAccess);
    ASSERT_NE(src_mr_, nullptr);
  }
  void TearDown() override {
    if (src_mr_ != nullptr) ibv_dereg_mr(src_mr_);
    src_ = Buffer();
    cache_.reset();
    rt_.reset();
  }

  // rxe_b writes `bytes` of `value` to [remote, +bytes) through `rkey` on rxe_a. Returns
  // the completion's status.
  ibv_wc_status WriteFromB(uint64_t remote, uint32_t rkey, size_t bytes, std::byte value) {
    std::memset(src_.data(), static_cast<int>(value), bytes);
    absl::Status st = b_->PostWrite(src_.data(), bytes, src_mr_->lkey, remote, rkey, 7);
    EXPECT_TRUE(st.ok()) << st;
    absl::StatusOr<ibv_wc> wc = b_->Poll();
    EXPECT_TRUE(wc.ok()) << wc.status();
    return wc.ok() ? wc->status : IBV_WC_GENERAL_ERR;
  }
  static bool All(const std::byte* p, size_t n, std::byte value) {
    for (size_t i = 0; i < n; ++i) {
      if (p[i] != value) return false;
    }
    return true;
  }
  Buffer Map(size_t length) {
    absl::StatusOr<Buffer> b = rt_->MapBuffer(length);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : Buffer();
  }

  // Through the C API: a runtime, a 2M buffer, a cache and a handle on the buffer's
  // first 4K, registered on rxe_a.
  struct CApi {
    hugemm_runtime* rt = nullptr;
    hugemm_buffer buf{};
    hugemm_mr_cache* cache = nullptr;
    hugemm_mr* mr = nullptr;
  };
  void OpenCApi(CApi& c) {
    ASSERT_EQ(hugemm_open(nullptr, &c.rt), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_map_buffer(c.rt, kPageSize2M, nullptr, &c.buf), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_mr_cache_create(c.rt, nullptr, &c.cache), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_mr_get(c.cache, a_->pd(), c.buf.data, 4096, kAccess, &c.mr), 0)
        << hugemm_last_error();
  }

  std::unique_ptr<RcEndpoint> a_, b_;
  std::unique_ptr<Runtime> rt_;
  std::unique_ptr<MrCache> cache_;
  Buffer src_;
  ibv_mr* src_mr_ = nullptr;
};

TEST_F(RdmaVmTest, RegistrationsComeFromTheDeviceAndCarryData) {
  Buffer buf = Map(2 * kPageSize2M);
  absl::StatusOr<MrHandle> h = cache_->Get(a_->pd(), buf.data() + 4096, 8192, kAccess);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->mr()->addr, buf.data());
  EXPECT_EQ(h->mr()->length, buf.size());
  EXPECT_EQ(h->mr()->pd, a_->pd());
  const uint64_t far = reinterpret_cast<uintptr_t>(buf.data()) + kPageSize2M + 100;
  absl::StatusOr<MrHandle> hit = cache_->Get(a_->pd(), buf.data() + kPageSize2M, 4096, kAccess);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->mr(), h->mr());
  ASSERT_EQ(WriteFromB(far, h->rkey(), 1000, std::byte{0x6b}), IBV_WC_SUCCESS);
  EXPECT_TRUE(All(buf.data() + kPageSize2M + 100, 1000, std::byte{0x6b}));
  const MrCacheStats s = cache_->Stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 1u);
}

// A registration dropped by a change is really gone from the device: its rkey no longer
// reaches the memory.
TEST_F(RdmaVmTest, ADroppedRegistrationNoLongerReachesTheMemory) {
  Buffer buf = Map(kPageSize2M);
  uint32_t old_rkey;
  {
    absl::StatusOr<MrHandle> h = cache_->Get(a_->pd(), buf.data(), 4096, kAccess);
    ASSERT_TRUE(h.ok()) << h.status();
    old_rkey = h->rkey();
  }
  HUGEMM_ASSERT_OK(rt_->table().Split(buf.data()));
  EXPECT_EQ(cache_->Stats().invalidations, 1u);
  const auto remote = reinterpret_cast<uintptr_t>(buf.data());
  EXPECT_EQ(WriteFromB(remote, old_rkey, 64, std::byte{0x11}), IBV_WC_REM_ACCESS_ERR);
  EXPECT_FALSE(All(buf.data(), 64, std::byte{0x11}));
}

// The data-level proof of the validity check: a buffer freed and replaced at the same
// address, then written by the peer through what the cache hands out. With the check the
// write lands in the new buffer; without it, in the old buffer's memory, which the
// process no longer maps.
TEST_F(RdmaVmTest, WithoutTheValidityCheckAPeerWritesIntoFreedMemory) {
  for (bool check : {true, false}) {
    SCOPED_TRACE(check ? "with the check" : "without the check");
    absl::StatusOr<std::unique_ptr<MrCache>> cache = MrCache::Create(*rt_);
    ASSERT_TRUE(cache.ok());
    MrCacheTestPeer::SetValidityCheck(**cache, check);
    Buffer old_buf = Map(kPageSize2M);
    std::byte* addr = old_buf.data();
    { ASSERT_TRUE((*cache)->Get(a_->pd(), addr, 4096, kAccess).ok()); }
    HUGEMM_ASSERT_OK(old_buf.Free());
    std::vector<Buffer> others;
    Buffer now;
    for (int i = 0; i < 8 && !now; ++i) {
      Buffer b = Map(kPageSize2M);
      if (b.data() == addr) {
        now = std::move(b);
      } else {
        others.push_back(std::move(b));
      }
    }
    HUGEMM_NEED(static_cast<bool>(now), "no new buffer at " << addr);
    std::memset(now.data(), 0, 4096);
    absl::StatusOr<MrHandle> h = (*cache)->Get(a_->pd(), addr, 4096, kAccess);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_EQ(WriteFromB(reinterpret_cast<uintptr_t>(addr), h->rkey(), 4096, std::byte{0x3c}),
              IBV_WC_SUCCESS);
    EXPECT_EQ(All(now.data(), 4096, std::byte{0x3c}), check)
        << (check ? "the write missed the buffer" : "an unchecked cache was not stale");
  }
}

// A buffer freed while a handle holds its registration: the device still reaches the
// buffer's own memory, which stays this process's (no new buffer gets it), until the
// handle is released; then the registration is gone from the device.
TEST_F(RdmaVmTest, AFreedBufferKeepsItsMemoryAndRegistrationUntilTheHandleGoes) {
  Buffer buf = Map(kPageSize2M);
  std::byte* addr = buf.data();
  const auto remote = reinterpret_cast<uintptr_t>(addr);
  std::optional<Translation> before = rt_->Translate(addr);
  ASSERT_TRUE(before.has_value());
  absl::StatusOr<MrHandle> h = cache_->Get(a_->pd(), addr, 4096, kAccess);
  ASSERT_TRUE(h.ok()) << h.status();
  const uint32_t rkey = h->rkey();
  HUGEMM_ASSERT_OK(buf.Free());
  MrCacheStats s = cache_->Stats();
  EXPECT_EQ(s.entries, 1u) << "deregistered under a held handle";
  EXPECT_EQ(s.held, 1u);
  std::vector<Buffer> fresh;
  for (int i = 0; i < 4; ++i) {
    fresh.push_back(Map(kPageSize2M));
    std::optional<Translation> t = rt_->Translate(fresh.back().data());
    ASSERT_TRUE(t.has_value());
    EXPECT_NE(t->pfn, before->pfn) << "a new buffer got the frames under a held registration";
  }
  ASSERT_EQ(WriteFromB(remote, rkey, 64, std::byte{0x77}), IBV_WC_SUCCESS);
  EXPECT_TRUE(All(addr, 64, std::byte{0x77})) << "the write missed the freed buffer's memory";
  // The next request for that address is not handed the dropped registration.
  EXPECT_EQ(cache_->Get(a_->pd(), addr, 4096, kAccess).status().code(),
            absl::StatusCode::kNotFound);
  h->Release();
  s = cache_->Stats();
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.invalidations, 1u);
  EXPECT_EQ(WriteFromB(remote, rkey, 64, std::byte{0x78}), IBV_WC_REM_ACCESS_ERR);
}

// The thread-safety sentence on a real device: two threads get and release registrations
// while this one frees buffers and maps new ones; then every buffer's registration
// carries the peer's data into that buffer.
TEST_F(RdmaVmTest, TwoThreadsGetAndReleaseWhileBuffersComeAndGo) {
  constexpr int kSlots = 4;
  std::vector<Buffer> bufs;
  std::atomic<uintptr_t> addr[kSlots];
  for (int i = 0; i < kSlots; ++i) {
    bufs.push_back(Map(kPageSize2M));
    addr[i].store(reinterpret_cast<uintptr_t>(bufs[i].data()));
  }
  std::atomic<bool> done{false};
  std::atomic<int> got{0};
  std::vector<std::thread> getters;
  for (int t = 0; t < 2; ++t) {
    getters.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!done.load()) {
        const uintptr_t p = addr[rng() % kSlots].load() + (rng() % 256) * 4096;
        absl::StatusOr<MrHandle> h =
            cache_->Get(a_->pd(), reinterpret_cast<const void*>(p), 4096, kAccess);
        if (!h.ok()) {
          // Freed meanwhile, or changing: never anything else.
          EXPECT_TRUE(absl::IsNotFound(h.status()) || absl::IsUnavailable(h.status()))
              << h.status();
          continue;
        }
        const auto start = reinterpret_cast<uintptr_t>(h->mr()->addr);
        EXPECT_TRUE(p >= start && p + 4096 <= start + h->mr()->length);
        got.fetch_add(1);
      }
    });
  }
  std::mt19937 rng(7);
  for (int n = 0; n < 40; ++n) {
    const int slot = static_cast<int>(rng() % kSlots);
    EXPECT_TRUE(bufs[slot].Free().ok());
    bufs[slot] = Map(kPageSize2M);
    addr[slot].store(reinterpret_cast<uintptr_t>(bufs[slot].data()));
  }
  done.store(true);
  for (std::thread& th : getters) th.join();
  EXPECT_GT(got.load(), 0);
  const MrCacheStats s = cache_->Stats();
  EXPECT_EQ(s.held, 0u);
  EXPECT_GT(s.invalidations, 0u);
  for (int i = 0; i < kSlots; ++i) {
    absl::StatusOr<MrHandle> h = cache_->Get(a_->pd(), bufs[i].data(), 4096, kAccess);
    ASSERT_TRUE(h.ok()) << h.status();
    const auto value = static_cast<std::byte>(0x20 + i);
    ASSERT_EQ(WriteFromB(reinterpret_cast<uintptr_t>(bufs[i].data()), h->rkey(), 256, value),
              IBV_WC_SUCCESS);
    EXPECT_TRUE(All(bufs[i].data(), 256, value)) << "slot " << i;
  }
}

// The C API on a real device: get, keys, hit, put, stats.
TEST_F(RdmaVmTest, CApiRegistersThroughTheDevice) {
  CApi c;
  ASSERT_NO_FATAL_FAILURE(OpenCApi(c));
  auto [rt, buf, cache, mr] = c;
  EXPECT_EQ(hugemm_mr_ibv(mr)->addr, buf.data);
  EXPECT_EQ(hugemm_mr_rkey(mr), hugemm_mr_ibv(mr)->rkey);
  ASSERT_EQ(
      WriteFromB(reinterpret_cast<uintptr_t>(buf.data), hugemm_mr_rkey(mr), 256, std::byte{0x42}),
      IBV_WC_SUCCESS);
  EXPECT_TRUE(All(static_cast<std::byte*>(buf.data), 256, std::byte{0x42}));
  hugemm_mr* again = nullptr;
  ASSERT_EQ(
      hugemm_mr_get(cache, a_->pd(), static_cast<char*>(buf.data) + 8192, 64, kAccess, &again), 0);
  EXPECT_EQ(hugemm_mr_ibv(again), hugemm_mr_ibv(mr));
  hugemm_mr_put(again);
  hugemm_mr_put(mr);
  hugemm_mr_cache_stats s;
  ASSERT_EQ(hugemm_mr_cache_stats_get(cache, &s), 0);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(hugemm_free(rt, buf.data), 0);
  ASSERT_EQ(hugemm_mr_cache_stats_get(cache, &s), 0);
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.invalidations, 1u);
  hugemm_mr_cache_destroy(cache);
  hugemm_close(rt);
}

// What hugemm_verbs.h says of a refusal by the device and of the PD's lifetime: the
// device's EINVAL comes back as -EINVAL naming the device; a registration stays cached
// after its put, so the PD cannot go (EBUSY) until the cache is flushed.
TEST_F(RdmaVmTest, CApiTheDeviceRefusesAndThePdWaitsForTheFlush) {
  CApi c;
  ASSERT_NO_FATAL_FAILURE(OpenCApi(c));
  auto [rt, buf, cache, mr] = c;
  hugemm_mr_put(mr);
  hugemm_buffer other;
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &other), 0) << hugemm_last_error();
  hugemm_mr* refused = nullptr;
  EXPECT_EQ(hugemm_mr_get(cache, a_->pd(), other.data, 64, IBV_ACCESS_REMOTE_WRITE, &refused),
            -EINVAL);
  EXPECT_EQ(refused, nullptr);
  EXPECT_NE(std::strstr(hugemm_last_error(), "ibv_reg_mr on rxe_a"), nullptr)
      << hugemm_last_error();
  hugemm_mr_cache_stats s;
  ASSERT_EQ(hugemm_mr_cache_stats_get(cache, &s), 0);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_EQ(s.held, 0u);

  ibv_pd* pd = ibv_alloc_pd(a_->pd()->context);
  ASSERT_NE(pd, nullptr);
  hugemm_mr* on_pd = nullptr;
  ASSERT_EQ(hugemm_mr_get(cache, pd, other.data, 64, kAccess, &on_pd), 0) << hugemm_last_error();
  hugemm_mr_put(on_pd);
  EXPECT_EQ(ibv_dealloc_pd(pd), EBUSY);
  EXPECT_EQ(hugemm_mr_cache_flush(cache), 2);
  EXPECT_EQ(ibv_dealloc_pd(pd), 0);
  hugemm_mr_cache_destroy(cache);
  hugemm_close(rt);
}

// A hugemm_mr still held at hugemm_close: its registration and the memory under it stay
// (the device may still be using them) until its put, which deregisters it, then unpins,
// and the memory goes back.
TEST_F(RdmaVmTest, CApiAHandleHeldAtCloseKeepsItsRegistrationUntilItsPut) {
  CApi c;
  ASSERT_NO_FATAL_FAILURE(OpenCApi(c));
  auto [rt, buf, cache, mr] = c;
  hugemm_buffer other;  // a second registration, given back before the close
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &other), 0) << hugemm_last_error();
  hugemm_mr* unheld = nullptr;
  ASSERT_EQ(hugemm_mr_get(cache, a_->pd(), other.data, 64, kAccess, &unheld), 0);
  hugemm_mr_put(unheld);
  const auto remote = reinterpret_cast<uintptr_t>(buf.data);
  auto* bytes = static_cast<std::byte*>(buf.data);
  const uint32_t rkey = hugemm_mr_rkey(mr);
  const uint32_t lkey = hugemm_mr_lkey(mr);

  hugemm_close(rt);
  // Still registered, still mapped: the peer's write lands in the buffer's memory.
  EXPECT_EQ(hugemm_mr_rkey(mr), rkey);
  EXPECT_EQ(hugemm_mr_lkey(mr), lkey);
  ASSERT_EQ(WriteFromB(remote, rkey, 256, std::byte{0x5a}), IBV_WC_SUCCESS);
  EXPECT_TRUE(All(bytes, 256, std::byte{0x5a}));
  hugemm_mr_cache_stats s;
  EXPECT_EQ(hugemm_mr_cache_stats_get(cache, &s), -EINVAL);  // the cache went with the close
  hugemm_mr_put(mr);
  // Deregistered by the put: the key no longer reaches the memory, which is unmapped.
  EXPECT_EQ(WriteFromB(remote, rkey, 64, std::byte{0x11}), IBV_WC_REM_ACCESS_ERR);
  unsigned char resident = 0;
  EXPECT_EQ(mincore(bytes, 4096, &resident), -1);
  EXPECT_EQ(errno, ENOMEM);
  hugemm_mr_cache_destroy(cache);
}

}  // namespace
}  // namespace hugemm
