// The heap running out inside the C API (hugemm.h, hugemm_io.h): open, the buffers (map,
// alloc, free, trim), the pins and the unpins, the queries, subscriptions, external memory,
// io_uring attaches, the buffers of an attached ring and its per-I/O calls, and the close.
// This program's operator new (tests/failing_heap.h) fails, on the thread that asks for
// it, at the k-th allocation of one call (and, in the "exhausted" mode, at every one
// after): each call is made for k = 0, 1, 2, ... until it completes without meeting a
// failure. Every call must either do its work or answer -ENOMEM with a message and undo
// what it did: never end the program, never keep a reference, a mapping, a descriptor, a
// kernel pin or a huge page. After each failure the runtime must still do the same call,
// and once it is closed the process must hold what it held before it opened, heap
// allocations included (what a round leaves twice in a row is a leak, not a table grown
// once).
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"
#include "soak/footprint.h"
#include "tests/failing_heap.h"
#include "tests/test_util.h"

namespace {

constexpr size_t k2M = size_t{2} << 20;
using Outcome = hugemm::testing::HeapOutcome;
using hugemm::testing::LiveAllocations;

template <typename Call>
Outcome Failing(long k, bool exhausted, Call call) {
  return hugemm::testing::WithHeapFailing(k, exhausted, call);
}

// What the process holds, waited for: the kernel drops a closed ring's pins, and gives
// its huge pages back, in the background.
std::string LeftBehind(const hugemm::soak::ProcessFootprint& before, int64_t free_2m) {
  std::string leak;
  for (int i = 0; i < 200; ++i) {
    leak = before.Diff(hugemm::soak::ProcessFootprint::Now());
    // More pages free than before is no leak: the kernel may still have been giving back
    // an earlier test's when the round began.
    if (leak.empty() && hugemm::testing::FreeHugePages(k2M) >= free_2m) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (int fd : hugemm::soak::ProcessFootprint::Now(false).fds) {
    if (before.fds.count(fd) != 0) continue;
    char link[256] = {};
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    (void)readlink(path.c_str(), link, sizeof link - 1);
    leak += " (" + std::to_string(fd) + ": " + link + ")";
  }
  if (leak.empty()) {
    leak = "free 2M pages " + std::to_string(hugemm::testing::FreeHugePages(k2M)) + ", were " +
           std::to_string(free_2m);
  }
  return leak;
}

// A failed call's answer: -ENOMEM and a message.
void ExpectOutOfMemory(long rc, const char* what, long k, bool exhausted) {
  EXPECT_EQ(rc, -ENOMEM) << what << " with allocation " << k << " failing"
                         << (exhausted ? " (and every one after)" : "") << ": "
                         << hugemm_last_error();
  EXPECT_STRNE(hugemm_last_error(), "") << what << ", allocation " << k;
}

// Every failure of a round's call in turn (failing_heap.h); after each round the process
// must hold what it held before: descriptors, mappings, huge pages, heap allocations.
template <typename Round>
void EveryFailure(Round round) {
  hugemm::testing::EveryHeapFailure(round, [] {
    return [before = hugemm::soak::ProcessFootprint::Now(),
            free_2m = hugemm::testing::FreeHugePages(k2M)] { return LeftBehind(before, free_2m); };
  });
}

hugemm_runtime* Open() {
  hugemm_runtime* rt = nullptr;
  EXPECT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  return rt;
}

hugemm_folio_info InfoAt(hugemm_runtime* rt, const void* addr) {
  hugemm_folio_info info{};
  EXPECT_EQ(hugemm_folio_info_at(rt, addr, &info), 0) << hugemm_last_error();
  return info;
}

class CApiOutOfMemory : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "the sanitizers' allocators stand in for operator new";
#endif
    HUGEMM_NEED_HUGEPAGES(k2M, 4);
  }
};

TEST_F(CApiOutOfMemory, Open) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = nullptr;
    const Outcome o =
        Failing(k, exhausted, [&] { return static_cast<long>(hugemm_open(nullptr, &rt)); });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_open", k, exhausted);
      EXPECT_EQ(rt, nullptr);
      return;
    }
    hugemm_close(rt);
  });
}

// The pins: one that fails holds nothing; one that succeeds is undone by its unpin.
enum class PinKind { kPages, kFolios, kSegments };

long Pin(hugemm_runtime* rt, const hugemm_buffer& b, PinKind kind, hugemm_page* pages,
         hugemm_folio_span* spans, hugemm_dma_segment* segs) {
  switch (kind) {
    case PinKind::kPages:
      return hugemm_pin_pages(rt, b.data, b.size / 4096, HUGEMM_PIN | HUGEMM_WRITE, pages);
    case PinKind::kFolios:
      return hugemm_pin_folios(rt, b.data, b.size, HUGEMM_PIN | HUGEMM_WRITE, spans, 8);
    case PinKind::kSegments:
      return hugemm_pin_segments(rt, b.data, b.size, HUGEMM_PIN | HUGEMM_WRITE, 0, segs, 8);
  }
  return -EINVAL;
}

long Unpin(hugemm_runtime* rt, const hugemm_buffer& b, PinKind kind, long pinned,
           const hugemm_page* pages, const hugemm_folio_span* spans) {
  switch (kind) {
    case PinKind::kPages:
      return hugemm_unpin_pages(rt, pages, static_cast<size_t>(pinned), 1);
    case PinKind::kFolios:
      return hugemm_unpin_folios(rt, spans, static_cast<size_t>(pinned), HUGEMM_PIN, 1);
    case PinKind::kSegments:
      return hugemm_unpin_range(rt, b.data, b.size, HUGEMM_PIN, 1);
  }
  return -EINVAL;
}

// `fail_unpin`: the failures go to the unpin, the pin is made without.
void PinRound(PinKind kind, bool fail_unpin, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  hugemm_buffer b{};
  ASSERT_EQ(hugemm_map_buffer(rt, 2 * k2M, nullptr, &b), 0) << hugemm_last_error();
  const hugemm_folio_info idle = InfoAt(rt, b.data);
  static hugemm_page pages[1024];
  hugemm_folio_span spans[8];
  hugemm_dma_segment segs[8];
  const char* what = kind == PinKind::kPages    ? "pages"
                     : kind == PinKind::kFolios ? "folios"
                                                : "segments";
  long pinned = 0;
  if (!fail_unpin) {
    const Outcome o = Failing(k, exhausted, [&] { return Pin(rt, b, kind, pages, spans, segs); });
    *hit = o.hit;
    pinned = o.rc;
    if (o.rc < 0) {
      ExpectOutOfMemory(o.rc, what, k, exhausted);
      EXPECT_EQ(InfoAt(rt, b.data).pincount, idle.pincount) << what << ": a failed pin kept a pin";
      EXPECT_EQ(InfoAt(rt, b.data).refcount, idle.refcount) << what;
      pinned = Pin(rt, b, kind, pages, spans, segs);
    }
    ASSERT_GT(pinned, 0) << hugemm_last_error();
    EXPECT_GE(Unpin(rt, b, kind, pinned, pages, spans), 0) << hugemm_last_error();
  } else {
    pinned = Pin(rt, b, kind, pages, spans, segs);
    ASSERT_GT(pinned, 0) << hugemm_last_error();
    const Outcome o =
        Failing(k, exhausted, [&] { return Unpin(rt, b, kind, pinned, pages, spans); });
    *hit = o.hit;
    if (o.rc < 0) {
      ExpectOutOfMemory(o.rc, what, k, exhausted);
      EXPECT_GE(Unpin(rt, b, kind, pinned, pages, spans), 0) << hugemm_last_error();
    }
  }
  EXPECT_EQ(InfoAt(rt, b.data).pincount, idle.pincount) << what;
  EXPECT_EQ(InfoAt(rt, b.data).refcount, idle.refcount) << what;
  EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

TEST_F(CApiOutOfMemory, PinPages) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kPages, false, k, e, hit); });
}
TEST_F(CApiOutOfMemory, PinFolios) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kFolios, false, k, e, hit); });
}
TEST_F(CApiOutOfMemory, PinSegments) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kSegments, false, k, e, hit); });
}
TEST_F(CApiOutOfMemory, UnpinPages) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kPages, true, k, e, hit); });
}
TEST_F(CApiOutOfMemory, UnpinFolios) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kFolios, true, k, e, hit); });
}
TEST_F(CApiOutOfMemory, UnpinRange) {
  EveryFailure([](long k, bool e, bool* hit) { PinRound(PinKind::kSegments, true, k, e, hit); });
}

// The buffers: a map or an alloc that fails holds nothing; a free that fails leaves the
// buffer as it was, to be freed again. Eight folios: more than an unmap keeps inline, so
// its heap is asked for room too.
constexpr size_t kBufferBytes = 8 * k2M;

TEST_F(CApiOutOfMemory, MapBuffer) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    hugemm_buffer b{};
    const Outcome o = Failing(k, exhausted, [&] {
      return static_cast<long>(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b));
    });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_map_buffer", k, exhausted);
      ASSERT_EQ(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b), 0) << hugemm_last_error();
    }
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    hugemm_close(rt);
  });
}

TEST_F(CApiOutOfMemory, Alloc) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    hugemm_buffer b{};
    const Outcome o = Failing(
        k, exhausted, [&] { return static_cast<long>(hugemm_alloc(rt, k2M, nullptr, 0, &b)); });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_alloc", k, exhausted);
      ASSERT_EQ(hugemm_alloc(rt, k2M, nullptr, 0, &b), 0) << hugemm_last_error();
    }
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    hugemm_close(rt);
  });
}

// `pinned`: a page array pins the buffer across the failing free (the memory then goes
// with the unpin after it).
void FreeRound(bool allocated, bool pinned, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  hugemm_buffer b{};
  ASSERT_EQ(allocated ? hugemm_alloc(rt, k2M, nullptr, 0, &b)
                      : hugemm_map_buffer(rt, kBufferBytes, nullptr, &b),
            0)
      << hugemm_last_error();
  static hugemm_page pages[kBufferBytes / 4096];
  const size_t npages = b.size / 4096;
  if (pinned) {
    ASSERT_EQ(hugemm_pin_pages(rt, b.data, npages, HUGEMM_PIN, pages), static_cast<long>(npages))
        << hugemm_last_error();
  }
  const Outcome o =
      Failing(k, exhausted, [&] { return static_cast<long>(hugemm_free(rt, b.data)); });
  *hit = o.hit;
  if (o.rc != 0) {
    ExpectOutOfMemory(o.rc, "hugemm_free", k, exhausted);
    // Still the program's, whole: mapped, and freed by the next free.
    hugemm_folio_info info{};
    EXPECT_EQ(hugemm_folio_info_at(rt, static_cast<std::byte*>(b.data) + b.size - 1, &info), 0)
        << "a failed free unmapped the buffer: " << hugemm_last_error();
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  }
  hugemm_folio_info info{};
  EXPECT_NE(hugemm_folio_info_at(rt, b.data, &info), 0) << "freed, yet still mapped";
  if (pinned) {
    EXPECT_EQ(hugemm_unpin_pages(rt, pages, npages, 0), static_cast<long>(b.size / b.folio_size))
        << hugemm_last_error();
  }
  hugemm_close(rt);
}

TEST_F(CApiOutOfMemory, FreeMapped) {
  EveryFailure([](long k, bool e, bool* hit) { FreeRound(false, false, k, e, hit); });
}
TEST_F(CApiOutOfMemory, FreeMappedWhilePinned) {
  EveryFailure([](long k, bool e, bool* hit) { FreeRound(false, true, k, e, hit); });
}
TEST_F(CApiOutOfMemory, FreeAllocated) {
  EveryFailure([](long k, bool e, bool* hit) { FreeRound(true, false, k, e, hit); });
}

// The close of a runtime with a buffer, an allocation, a pin and a subscription: nothing
// it held may stay, whatever allocation fails.
void Ignore(void*, const void*, size_t, int) {}

TEST_F(CApiOutOfMemory, Close) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    hugemm_buffer mapped{}, allocated{};
    ASSERT_EQ(hugemm_map_buffer(rt, kBufferBytes, nullptr, &mapped), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_alloc(rt, k2M, nullptr, 0, &allocated), 0) << hugemm_last_error();
    hugemm_folio_span span{};
    ASSERT_EQ(hugemm_pin_folios(rt, mapped.data, k2M, HUGEMM_PIN, &span, 1), 1)
        << hugemm_last_error();
    ASSERT_EQ(hugemm_unpin_folios(rt, &span, 1, HUGEMM_PIN, 0), 1) << hugemm_last_error();
    hugemm_subscription* sub = nullptr;
    const volatile uint64_t* seq = nullptr;
    ASSERT_EQ(hugemm_subscribe(rt, mapped.data, mapped.size, Ignore, Ignore, nullptr, &sub, &seq),
              0)
        << hugemm_last_error();
    const Outcome o = Failing(k, exhausted, [&] {
      hugemm_close(rt);
      return 0L;
    });
    *hit = o.hit;
    hugemm_unsubscribe(sub);  // the handle only, after the close
  });
}

// A subscription that fails is none: it hears nothing of the buffer's free.
void Count(void* user, const void*, size_t, int) { ++*static_cast<int*>(user); }

TEST_F(CApiOutOfMemory, Subscribe) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    hugemm_buffer b{};
    ASSERT_EQ(hugemm_map_buffer(rt, k2M, nullptr, &b), 0) << hugemm_last_error();
    int heard = 0;
    hugemm_subscription* sub = nullptr;
    const volatile uint64_t* seq = nullptr;
    const Outcome o = Failing(k, exhausted, [&] {
      return static_cast<long>(
          hugemm_subscribe(rt, b.data, b.size, Count, nullptr, &heard, &sub, &seq));
    });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_subscribe", k, exhausted);
      EXPECT_EQ(sub, nullptr);
    }
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    EXPECT_EQ(heard, o.rc == 0 ? 1 : 0) << "a failed subscription heard the free";
    hugemm_unsubscribe(sub);
    hugemm_close(rt);
  });
}

// An unsubscribe from inside a callback, with the heap empty: it asks the heap for
// nothing, and the subscription still ends once the announcement is over (here, in the
// close after it). Leaving it muted but never ended would keep its handle allocated.
struct Unsubscriber {
  hugemm_subscription* sub = nullptr;
  int calls = 0;
  bool met_the_heap = false;
};

void UnsubscribeWithoutHeap(void* user, const void*, size_t, int) {
  auto* u = static_cast<Unsubscriber*>(user);
  ++u->calls;
  hugemm::testing::ArmHeapFailure(0, /*exhausted=*/true);
  hugemm_unsubscribe(u->sub);
  u->met_the_heap = hugemm::testing::DisarmHeapFailure();
}

TEST_F(CApiOutOfMemory, UnsubscribeInACallback) {
  // Twice: the first round may leave what lives as long as the process (a thread's error
  // message); the second must leave nothing.
  long left[2] = {0, 0};
  for (long& round_left : left) {
    const long live = LiveAllocations();
    hugemm_runtime* rt = Open();
    ASSERT_NE(rt, nullptr);
    hugemm_buffer b{};
    ASSERT_EQ(hugemm_map_buffer(rt, 2 * k2M, nullptr, &b), 0) << hugemm_last_error();
    Unsubscriber u;
    ASSERT_EQ(hugemm_subscribe(rt, b.data, b.size, UnsubscribeWithoutHeap, UnsubscribeWithoutHeap,
                               &u, &u.sub, nullptr),
              0)
        << hugemm_last_error();
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    EXPECT_EQ(u.calls, 1) << "an unsubscribed subscription heard the end of the free";
    EXPECT_FALSE(u.met_the_heap) << "hugemm_unsubscribe in a callback asked the heap";
    hugemm_close(rt);
    round_left = LiveAllocations() - live;
  }
  EXPECT_EQ(left[1], 0) << "allocations left behind by a runtime with a subscription "
                           "unsubscribed in its callback, without heap";
}

// The queries: one that fails changes nothing, and the same query answers after it.
template <typename Query>
void QueryRound(const char* what, Query query, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  hugemm_buffer b{};
  ASSERT_EQ(hugemm_map_buffer(rt, 2 * k2M, nullptr, &b), 0) << hugemm_last_error();
  const hugemm_folio_info idle = InfoAt(rt, b.data);
  const Outcome o = Failing(k, exhausted, [&] { return query(rt, b); });
  *hit = o.hit;
  if (o.rc < 0) {
    ExpectOutOfMemory(o.rc, what, k, exhausted);
    EXPECT_GE(query(rt, b), 0) << what << " after a failed one: " << hugemm_last_error();
  }
  EXPECT_EQ(InfoAt(rt, b.data).refcount, idle.refcount) << what;
  EXPECT_EQ(InfoAt(rt, b.data).pincount, idle.pincount) << what;
  EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

long Translate(hugemm_runtime* rt, const hugemm_buffer& b) {
  hugemm_translation t{};
  return hugemm_translate(rt, b.data, b.size, &t);
}
long FolioInfo(hugemm_runtime* rt, const hugemm_buffer& b) {
  hugemm_folio_info info{};
  return hugemm_folio_info_at(rt, b.data, &info);
}
long Verify(hugemm_runtime* rt, const hugemm_buffer& b) {
  hugemm_verify_report report{};
  return hugemm_verify(rt, b.data, b.size, &report);
}

TEST_F(CApiOutOfMemory, Translate) {
  EveryFailure(
      [](long k, bool e, bool* hit) { QueryRound("hugemm_translate", Translate, k, e, hit); });
}
TEST_F(CApiOutOfMemory, FolioInfoAt) {
  EveryFailure(
      [](long k, bool e, bool* hit) { QueryRound("hugemm_folio_info_at", FolioInfo, k, e, hit); });
}
TEST_F(CApiOutOfMemory, Verify) {
  EveryFailure([](long k, bool e, bool* hit) { QueryRound("hugemm_verify", Verify, k, e, hit); });
}

// A trim that fails leaves the cached buffer where it was: a trim after it gives it back.
TEST_F(CApiOutOfMemory, Trim) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    hugemm_buffer b{};
    ASSERT_EQ(hugemm_alloc(rt, k2M, nullptr, 0, &b), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    const Outcome o = Failing(k, exhausted, [&] { return hugemm_trim(rt); });
    *hit = o.hit;
    if (o.rc < 0) {
      ExpectOutOfMemory(o.rc, "hugemm_trim", k, exhausted);
      EXPECT_GT(hugemm_trim(rt), 0) << "after a failed trim: " << hugemm_last_error();
    } else {
      EXPECT_GT(o.rc, 0) << "a trim gave nothing back";
    }
    hugemm_close(rt);
  });
}

// A 2M page the program maps itself, faulted in.
void* MapOwnHugePage() {
  return mmap(nullptr, k2M, PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
}

// Memory the program mapped itself: a registration that fails leaves none (the same range
// registers again), and its kernel pin goes.
TEST_F(CApiOutOfMemory, RegisterExternal) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    void* p = MapOwnHugePage();
    ASSERT_NE(p, MAP_FAILED);
    uint64_t id = 0;
    const Outcome o = Failing(
        k, exhausted, [&] { return static_cast<long>(hugemm_register_external(rt, p, k2M, &id)); });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_register_external", k, exhausted);
      ASSERT_EQ(hugemm_register_external(rt, p, k2M, &id), 0) << hugemm_last_error();
    }
    EXPECT_EQ(hugemm_unregister_external(rt, id), 0) << hugemm_last_error();
    hugemm_close(rt);
    ASSERT_EQ(munmap(p, k2M), 0);
  });
}

// An unregistration that fails keeps the registration, which the next one ends.
TEST_F(CApiOutOfMemory, UnregisterExternal) {
  EveryFailure([](long k, bool exhausted, bool* hit) {
    hugemm_runtime* rt = Open();
    if (rt == nullptr) return;
    void* p = MapOwnHugePage();
    ASSERT_NE(p, MAP_FAILED);
    uint64_t id = 0;
    ASSERT_EQ(hugemm_register_external(rt, p, k2M, &id), 0) << hugemm_last_error();
    const Outcome o = Failing(
        k, exhausted, [&] { return static_cast<long>(hugemm_unregister_external(rt, id)); });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_unregister_external", k, exhausted);
      hugemm_folio_info info{};
      EXPECT_EQ(hugemm_folio_info_at(rt, p, &info), 0)
          << "a failed unregistration dropped the memory: " << hugemm_last_error();
      EXPECT_EQ(hugemm_unregister_external(rt, id), 0) << hugemm_last_error();
    }
    hugemm_folio_info info{};
    EXPECT_NE(hugemm_folio_info_at(rt, p, &info), 0) << "unregistered, yet still mapped";
    hugemm_close(rt);
    ASSERT_EQ(munmap(p, k2M), 0);
  });
}

// A ring's fixed buffers: an attach that fails leaves the ring's table unregistered (the
// ring attaches again); a map and a free with a ring attached keep the ring's table
// as the buffers are, whatever allocation fails. The ring is io_uring_setup(2)'s alone:
// the attach needs nothing of its queues.
int NewRing() {
  io_uring_params params{};
  return static_cast<int>(syscall(__NR_io_uring_setup, 8, &params));
}

void AttachRound(int mode, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  hugemm_buffer b{};
  ASSERT_EQ(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b), 0) << hugemm_last_error();
  const int ring = NewRing();
  ASSERT_GE(ring, 0) << strerror(errno);
  const hugemm_io_options options{.mode = mode, .max_in_flight = 0};
  hugemm_io* io = nullptr;
  const Outcome o = Failing(
      k, exhausted, [&] { return static_cast<long>(hugemm_io_attach(rt, ring, &options, &io)); });
  *hit = o.hit;
  if (o.rc != 0) {
    ExpectOutOfMemory(o.rc, "hugemm_io_attach", k, exhausted);
    EXPECT_EQ(io, nullptr);
    ASSERT_EQ(hugemm_io_attach(rt, ring, &options, &io), 0)
        << "after a failed attach: " << hugemm_last_error();
  }
  EXPECT_GE(hugemm_io_buffer_index(io, b.data, b.size), 0) << hugemm_last_error();
  hugemm_io_detach(io);
  close(ring);
  EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

TEST_F(CApiOutOfMemory, IoAttachClone) {
  EveryFailure([](long k, bool e, bool* hit) { AttachRound(HUGEMM_IO_CLONE, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoAttachIovec) {
  EveryFailure([](long k, bool e, bool* hit) { AttachRound(HUGEMM_IO_IOVEC, k, e, hit); });
}

// `fail_free`: the failures go to the free, the map is made without.
void RingBufferRound(int mode, bool fail_free, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  const int ring = NewRing();
  ASSERT_GE(ring, 0) << strerror(errno);
  const hugemm_io_options options{.mode = mode, .max_in_flight = 0};
  hugemm_io* io = nullptr;
  ASSERT_EQ(hugemm_io_attach(rt, ring, &options, &io), 0) << hugemm_last_error();
  hugemm_buffer b{};
  if (!fail_free) {
    const Outcome o = Failing(k, exhausted, [&] {
      return static_cast<long>(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b));
    });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_map_buffer with a ring", k, exhausted);
      ASSERT_EQ(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b), 0) << hugemm_last_error();
    }
    EXPECT_GE(hugemm_io_buffer_index(io, b.data, b.size), 0) << hugemm_last_error();
    EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  } else {
    ASSERT_EQ(hugemm_map_buffer(rt, kBufferBytes, nullptr, &b), 0) << hugemm_last_error();
    const Outcome o =
        Failing(k, exhausted, [&] { return static_cast<long>(hugemm_free(rt, b.data)); });
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, "hugemm_free with a ring", k, exhausted);
      EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
    }
  }
  // The freed buffer's slot is no buffer of the ring's any more.
  EXPECT_LT(hugemm_io_buffer_index(io, b.data, b.size), 0) << "a freed buffer is still in the ring";
  hugemm_io_detach(io);
  close(ring);
  hugemm_close(rt);
}

TEST_F(CApiOutOfMemory, MapBufferWithARing) {
  EveryFailure(
      [](long k, bool e, bool* hit) { RingBufferRound(HUGEMM_IO_CLONE, false, k, e, hit); });
}
TEST_F(CApiOutOfMemory, FreeWithARing) {
  EveryFailure(
      [](long k, bool e, bool* hit) { RingBufferRound(HUGEMM_IO_CLONE, true, k, e, hit); });
}
TEST_F(CApiOutOfMemory, FreeWithAnIovecRing) {
  EveryFailure(
      [](long k, bool e, bool* hit) { RingBufferRound(HUGEMM_IO_IOVEC, true, k, e, hit); });
}

// The per-I/O pins of an attached ring: a pin or a prep that fails pins nothing and
// counts nothing in flight; an unpin, a completion or a cancel that fails keeps the
// I/O's pins, which the next one gives back. The SQE is filled, never submitted, and its
// completion made up from it: what hugemm reads of a CQE is its user_data.
enum class IoStep { kPin, kUnpin, kPrepRead, kPrepWrite, kComplete, kCancel };

void IoRound(IoStep step, long k, bool exhausted, bool* hit) {
  hugemm_runtime* rt = Open();
  if (rt == nullptr) return;
  hugemm_buffer b{};
  ASSERT_EQ(hugemm_map_buffer(rt, 2 * k2M, nullptr, &b), 0) << hugemm_last_error();
  const hugemm_folio_info idle = InfoAt(rt, b.data);
  const int ring = NewRing();
  ASSERT_GE(ring, 0) << strerror(errno);
  const hugemm_io_options options{.mode = HUGEMM_IO_CLONE, .max_in_flight = 0};
  hugemm_io* io = nullptr;
  ASSERT_EQ(hugemm_io_attach(rt, ring, &options, &io), 0) << hugemm_last_error();
  const unsigned length = 3 * 4096;
  void* at = static_cast<std::byte*>(b.data) + k2M - 4096;  // across the two folios
  uint64_t token = 0;
  io_uring_sqe sqe{};
  auto start = [&]() -> long {
    switch (step) {
      case IoStep::kPin:
      case IoStep::kUnpin:
        return hugemm_io_pin(io, at, length, 1, &token);
      case IoStep::kPrepWrite:
        return hugemm_io_prep_write(io, &sqe, ring, at, length, 0, 7);
      default:
        return hugemm_io_prep_read(io, &sqe, ring, at, length, 0, 7);
    }
  };
  auto finish = [&]() -> long {
    uint64_t user_data = 0;
    switch (step) {
      case IoStep::kPin:
      case IoStep::kUnpin:
        return hugemm_io_unpin(io, token);
      case IoStep::kCancel:
        return hugemm_io_cancel(io, &sqe, &user_data);
      default: {
        io_uring_cqe cqe{};
        cqe.user_data = sqe.user_data;
        cqe.res = static_cast<int32_t>(length);
        const long rc = hugemm_io_complete(io, &cqe, &user_data);
        EXPECT_TRUE(rc < 0 || user_data == 7) << "the completion lost the user_data";
        return rc;
      }
    }
  };
  const bool fail_start =
      step == IoStep::kPin || step == IoStep::kPrepRead || step == IoStep::kPrepWrite;
  const char* what = fail_start ? "the pin or prep" : "the unpin, completion or cancel";
  if (fail_start) {
    const Outcome o = Failing(k, exhausted, start);
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, what, k, exhausted);
      EXPECT_EQ(hugemm_io_in_flight(io), 0u) << "a failed pin counts in flight";
      EXPECT_EQ(InfoAt(rt, b.data).pincount, idle.pincount) << "a failed pin kept a pin";
      ASSERT_EQ(start(), 0) << hugemm_last_error();
    }
    EXPECT_EQ(finish(), 0) << hugemm_last_error();
  } else {
    ASSERT_EQ(start(), 0) << hugemm_last_error();
    const Outcome o = Failing(k, exhausted, finish);
    *hit = o.hit;
    if (o.rc != 0) {
      ExpectOutOfMemory(o.rc, what, k, exhausted);
      EXPECT_EQ(hugemm_io_in_flight(io), 1u) << "a failed unpin forgot the I/O";
      EXPECT_EQ(finish(), 0) << hugemm_last_error();
    }
  }
  EXPECT_EQ(hugemm_io_in_flight(io), 0u);
  EXPECT_EQ(InfoAt(rt, b.data).pincount, idle.pincount) << "pins left by the I/O";
  EXPECT_EQ(InfoAt(rt, b.data).refcount, idle.refcount);
  hugemm_io_detach(io);
  close(ring);
  EXPECT_EQ(hugemm_free(rt, b.data), 0) << hugemm_last_error();
  hugemm_close(rt);
}

TEST_F(CApiOutOfMemory, IoPin) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kPin, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoUnpin) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kUnpin, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoPrepRead) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kPrepRead, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoPrepWrite) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kPrepWrite, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoComplete) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kComplete, k, e, hit); });
}
TEST_F(CApiOutOfMemory, IoCancel) {
  EveryFailure([](long k, bool e, bool* hit) { IoRound(IoStep::kCancel, k, e, hit); });
}

}  // namespace
