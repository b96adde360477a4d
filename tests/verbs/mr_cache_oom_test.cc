// The MR cache with the heap failing (tests/failing_heap.h) at each allocation in turn of
// a Get (a miss, then a hit), of a Get on memory freed under a held registration, of a
// Flush, and of the cache's destruction; on real huge pages, with the stand-in registrar
// of mr_cache_test (this machine has no RDMA device). The registrar stands for the device,
// so its own allocations are let through. A Get that fails answers ResourceExhausted (or
// throws std::bad_alloc, as a C++ call may) and holds nothing: no pin, no registration, no
// entry, and the same Get succeeds after it. Whatever fails, once the cache and the
// runtime are gone the process holds what it held before: no registration, no pin, no
// huge page, no heap allocation (what a round leaves twice in a row is a leak).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>

#include "gtest/gtest.h"
#include "hugemm/verbs.h"
#include "tests/failing_heap.h"
#include "tests/test_util.h"
#include "tests/verbs/fake_registrar.h"

namespace hugemm {
namespace {

using ::hugemm::testing::EveryHeapFailure;
using ::hugemm::testing::FakeRegistrar;
using ::hugemm::testing::FreeHugePagesSnapshot;
using ::hugemm::testing::HeapFailuresPaused;
using ::hugemm::testing::WithHeapFailing;

constexpr int kWrite = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;

// The stand-in registrar with the heap let through: what fails is the cache's.
class DeviceRegistrar final : public MrRegistrar {
 public:
  explicit DeviceRegistrar(FakeRegistrar& fake) : fake_(fake) {}
  absl::StatusOr<ibv_mr*> Register(ibv_pd* pd, void* addr, size_t length, int access) override {
    HeapFailuresPaused paused;
    return fake_.Register(pd, addr, length, access);
  }
  absl::Status Deregister(ibv_mr* mr) override {
    HeapFailuresPaused paused;
    return fake_.Deregister(mr);
  }

 private:
  FakeRegistrar& fake_;
};

// What a round is: a runtime, a buffer of two 2M folios, a cache, and the step under test.
enum class Step { kGetMiss, kGetHit, kGetAfterFree, kFlush, kDestroy };

class MrCacheOutOfMemory : public ::testing::TestWithParam<Step> {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "the sanitizers' allocators stand in for operator new";
#endif
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
    HUGEMM_NEED(testing::CanReadFrames(), "needs PFNs from /proc/self/pagemap (root)");
  }

  // A Get as the step makes it: 0 when it gave a handle, -1 when it refused for want of
  // memory (a status or a throw); anything else fails the test.
  long Get(MrCache& cache, const void* addr, MrHandle* out) {
    try {
      absl::StatusOr<MrHandle> h = cache.Get(&pd_, addr, 4096, kWrite);
      if (h.ok()) {
        *out = std::move(*h);
        return 0;
      }
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted) << h.status();
      EXPECT_NE(h.status().message(), "");
      return -1;
    } catch (const std::bad_alloc&) {
      return -1;
    }
  }

  // Everything a round makes is its own, the registrar's records too, so that the heap
  // holds after it what it held before.
  void Round(Step step, long k, bool exhausted, bool* hit) {
    FakeRegistrar fake_;
    DeviceRegistrar device_(fake_);
    absl::StatusOr<std::unique_ptr<Runtime>> opened = Runtime::Open({.kernel_pins = false});
    ASSERT_TRUE(opened.ok()) << opened.status();
    std::unique_ptr<Runtime> rt = std::move(*opened);
    absl::StatusOr<Buffer> mapped = rt->MapBuffer(2 * kPageSize2M, {.page_size = kPageSize2M});
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    Buffer buf = std::move(*mapped);
    std::byte* p = buf.data() + kPageSize2M - 2048;  // across the two folios
    absl::StatusOr<std::unique_ptr<MrCache>> made = MrCache::Create(*rt, {.registrar = &device_});
    ASSERT_TRUE(made.ok()) << made.status();
    std::unique_ptr<MrCache> cache = std::move(*made);
    auto pins = [&] {
      absl::StatusOr<FolioInfo> a = rt->FolioInfoAt(buf.data());
      absl::StatusOr<FolioInfo> b = rt->FolioInfoAt(buf.data() + kPageSize2M);
      return a.ok() && b.ok() ? a->pincount + b->pincount : -1;
    };
    MrHandle h;
    switch (step) {
      case Step::kGetMiss:
      case Step::kGetHit: {
        if (step == Step::kGetHit) {
          ASSERT_EQ(Get(*cache, p, &h), 0);
          h.Release();
        }
        const auto o = WithHeapFailing(k, exhausted, [&] { return Get(*cache, p, &h); });
        *hit = o.hit;
        if (o.rc != 0) {
          EXPECT_EQ(pins(), step == Step::kGetHit ? 2 : 0) << "a failed Get kept a pin";
          EXPECT_EQ(fake_.live(), step == Step::kGetHit ? 1u : 0u);
          EXPECT_EQ(cache->Stats().entries, step == Step::kGetHit ? 1u : 0u);
          ASSERT_EQ(Get(*cache, p, &h), 0) << "after a failed Get";
        }
        EXPECT_FALSE(fake_.Stale(h.mr(), p, 4096).has_value());
        h.Release();
        break;
      }
      case Step::kGetAfterFree: {
        // A held registration over memory freed meanwhile: the Get must not hand it out.
        MrHandle held;
        ASSERT_EQ(Get(*cache, p, &held), 0);
        HUGEMM_ASSERT_OK(buf.Free());
        const auto o = WithHeapFailing(k, exhausted, [&] {
          try {
            return static_cast<long>(cache->Get(&pd_, p, 4096, kWrite).status().raw_code());
          } catch (const std::bad_alloc&) {
            return -1L;
          }
        });
        *hit = o.hit;
        EXPECT_NE(o.rc, 0) << "a Get on freed memory succeeded";
        held.Release();
        break;
      }
      case Step::kFlush: {
        ASSERT_EQ(Get(*cache, p, &h), 0);
        h.Release();
        const auto o = WithHeapFailing(k, exhausted, [&] {
          try {
            return static_cast<long>(cache->Flush());
          } catch (const std::bad_alloc&) {
            return -1L;
          }
        });
        *hit = o.hit;
        if (o.rc != 1) {
          EXPECT_EQ(cache->Flush(), 1u) << "after a failed flush";
        }
        EXPECT_EQ(fake_.live(), 0u);
        EXPECT_EQ(pins(), 0);
        break;
      }
      case Step::kDestroy: {
        ASSERT_EQ(Get(*cache, p, &h), 0);
        h.Release();
        const auto o = WithHeapFailing(k, exhausted, [&] {
          cache.reset();
          return 0L;
        });
        *hit = o.hit;
        EXPECT_EQ(fake_.live(), 0u) << "the cache went, its registration stayed";
        EXPECT_EQ(pins(), 0);
        break;
      }
    }
    cache.reset();
    EXPECT_EQ(fake_.live(), 0u) << "registrations left after the cache";
    if (buf.data() != nullptr) {
      EXPECT_EQ(pins(), 0) << "pins left after the cache";
    }
  }

  ibv_pd pd_{};
};

TEST_P(MrCacheOutOfMemory, EveryAllocationFailingInTurn) {
  EveryHeapFailure([this](long k, bool e, bool* hit) { Round(GetParam(), k, e, hit); },
                   FreeHugePagesSnapshot(kPageSize2M));
}

constexpr const char* kStepNames[] = {"GetMiss", "GetHit", "GetAfterFree", "Flush", "Destroy"};
INSTANTIATE_TEST_SUITE_P(Steps, MrCacheOutOfMemory,
                         ::testing::Values(Step::kGetMiss, Step::kGetHit, Step::kGetAfterFree,
                                           Step::kFlush, Step::kDestroy),
                         [](const ::testing::TestParamInfo<Step>& info) {
                           return std::string(kStepNames[static_cast<int>(info.param)]);
                         });

}  // namespace
}  // namespace hugemm
