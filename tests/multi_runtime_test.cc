// Several runtimes in one process: each frees, pins, translates and does I/O on its own
// memory only, refuses the other's with the errno hugemm.h documents, and lives on (with
// its buffers, pins and I/O) when the other closes, in either order.
#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"
#include "hugemm/runtime.h"
#include "tests/io_test_util.h"

namespace {

using hugemm::testing::FirstMismatch;
using hugemm::testing::PatternFile;
using hugemm::testing::TestRing;

constexpr size_t k2M = size_t{2} << 20;
constexpr size_t kRead = 256 << 10;

hugemm_runtime* Open() {
  hugemm_runtime* rt = nullptr;
  EXPECT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  return rt;
}

// Reads [off, off + kRead) of `file` into `data` through `io` on `ring`; the CQE's res.
int ReadDirect(hugemm_io* io, TestRing& ring, const PatternFile& file, void* data, uint64_t off) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  if (sqe == nullptr) return -EBUSY;
  if (int rc = hugemm_io_prep_read(io, sqe, file.fd(), data, kRead, off, 7); rc != 0) {
    io_uring_prep_nop(sqe);
    sqe->user_data = 0;
    io_uring_submit(&ring.ring);
    ring.Wait();
    return rc;
  }
  if (io_uring_submit(&ring.ring) != 1) return -EIO;
  io_uring_cqe cqe = ring.Wait();
  uint64_t tag = 0;
  EXPECT_EQ(hugemm_io_complete(io, &cqe, &tag), 0) << hugemm_last_error();
  EXPECT_EQ(tag, 7u);
  return cqe.res;
}

TEST(MultiRuntime, AllocatedBufferOfOneIsRefusedByTheOther) {
  hugemm_runtime* a = Open();
  hugemm_runtime* b = Open();
  ASSERT_TRUE(a && b);
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_alloc(a, 64 << 10, nullptr, 0, &buf), 0) << hugemm_last_error();
  std::memset(buf.data, 0x5a, buf.size);
  EXPECT_EQ(hugemm_free(b, buf.data), -ENOENT);
  hugemm_translation t;
  EXPECT_EQ(hugemm_translate(b, buf.data, 0, &t), -ENOENT);
  hugemm_folio_span spans[2];
  EXPECT_EQ(hugemm_pin_folios(b, buf.data, buf.size, HUGEMM_PIN | HUGEMM_WRITE, spans, 2), -ENOENT);
  EXPECT_EQ(hugemm_unpin_range(b, buf.data, buf.size, HUGEMM_PIN, 0), -EFAULT);
  // Still A's, still mapped.
  ASSERT_EQ(hugemm_translate(a, buf.data, 0, &t), 0) << hugemm_last_error();
  EXPECT_EQ(static_cast<unsigned char*>(buf.data)[buf.size - 1], 0x5a);
  EXPECT_EQ(hugemm_free(a, buf.data), 0) << hugemm_last_error();
  hugemm_close(b);
  hugemm_close(a);
}

// A thread that allocated and freed through A keeps the folios in its magazines: B must
// not be handed one of them (A's pool goes when A closes).
TEST(MultiRuntime, ThreadCacheOfOneIsNotHandedToTheOther) {
  hugemm_runtime* a = Open();
  hugemm_runtime* b = Open();
  ASSERT_TRUE(a && b);
  for (size_t bytes : {size_t{4096}, size_t{64} << 10}) {
    std::vector<hugemm_buffer> from_a(8), from_b(8);
    for (hugemm_buffer& x : from_a) ASSERT_EQ(hugemm_alloc(a, bytes, nullptr, 0, &x), 0);
    for (hugemm_buffer& x : from_a) ASSERT_EQ(hugemm_free(a, x.data), 0);
    for (hugemm_buffer& x : from_b) ASSERT_EQ(hugemm_alloc(b, bytes, nullptr, 0, &x), 0);
    for (hugemm_buffer& x : from_b) {
      hugemm_translation t;
      EXPECT_EQ(hugemm_translate(a, x.data, 0, &t), -ENOENT);
      for (const hugemm_buffer& y : from_a) EXPECT_NE(x.data, y.data);
    }
    for (hugemm_buffer& x : from_b) ASSERT_EQ(hugemm_free(b, x.data), 0);
  }
  hugemm_buffer kept;
  ASSERT_EQ(hugemm_alloc(b, 4096, nullptr, 0, &kept), 0);
  // A closes with folios in this thread's magazines; a runtime opened after it (whose
  // allocator may sit where A's did) starts from pools of its own.
  hugemm_buffer cached;
  ASSERT_EQ(hugemm_alloc(a, 4096, nullptr, 0, &cached), 0);
  ASSERT_EQ(hugemm_free(a, cached.data), 0);
  hugemm_close(a);
  hugemm_runtime* c = Open();
  ASSERT_NE(c, nullptr);
  for (int i = 0; i < 8; ++i) {
    hugemm_buffer x;
    ASSERT_EQ(hugemm_alloc(c, 4096, nullptr, 0, &x), 0) << hugemm_last_error();
    std::memset(x.data, 2, x.size);
    hugemm_translation t;
    EXPECT_EQ(hugemm_translate(c, x.data, 0, &t), 0) << hugemm_last_error();
    EXPECT_EQ(hugemm_free(b, x.data), -ENOENT);
    EXPECT_EQ(hugemm_free(c, x.data), 0);
  }
  hugemm_close(c);
  std::memset(kept.data, 1, kept.size);  // B's memory outlives A
  hugemm_translation t;
  EXPECT_EQ(hugemm_translate(b, kept.data, 0, &t), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(b, kept.data), 0);
  hugemm_close(b);
}

TEST(MultiRuntime, ClosingOneInEitherOrderLeavesTheOtherWhole) {
  for (int order = 0; order < 2; ++order) {
    hugemm_runtime* rt[2] = {Open(), Open()};
    ASSERT_TRUE(rt[0] && rt[1]);
    hugemm_buffer mapped[2], allocated[2];
    hugemm_folio_span spans[2][2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_EQ(hugemm_map_buffer(rt[i], k2M, nullptr, &mapped[i]), 0) << hugemm_last_error();
      ASSERT_EQ(hugemm_alloc(rt[i], 8192, nullptr, 0, &allocated[i]), 0) << hugemm_last_error();
      ASSERT_EQ(
          hugemm_pin_folios(rt[i], mapped[i].data, k2M, HUGEMM_PIN | HUGEMM_WRITE, spans[i], 2), 1)
          << hugemm_last_error();
    }
    const int closed = order, live = 1 - order;
    // Closing frees the buffers still held; pinned memory would stay mapped (hugemm.h).
    ASSERT_EQ(hugemm_unpin_folios(rt[closed], spans[closed], 1, HUGEMM_PIN, 0), 1);
    hugemm_close(rt[closed]);
    std::memset(mapped[live].data, 3, k2M);
    std::memset(allocated[live].data, 3, 8192);
    EXPECT_EQ(hugemm_maybe_dma_pinned(rt[live], mapped[live].data), 1);
    hugemm_translation t;
    ASSERT_EQ(hugemm_translate(rt[live], mapped[live].data, 0, &t), 0);
    EXPECT_EQ(t.folio, spans[live][0].folio);
    EXPECT_EQ(hugemm_unpin_folios(rt[live], spans[live], 1, HUGEMM_PIN, 1), 1);
    EXPECT_EQ(hugemm_maybe_dma_pinned(rt[live], mapped[live].data), 0);
    EXPECT_EQ(hugemm_free(rt[live], allocated[live].data), 0);
    EXPECT_EQ(hugemm_free(rt[live], mapped[live].data), 0);
    // Open again after closing: a fresh runtime beside the live one.
    hugemm_runtime* again = Open();
    ASSERT_NE(again, nullptr);
    hugemm_buffer x;
    ASSERT_EQ(hugemm_alloc(again, 8192, nullptr, 0, &x), 0) << hugemm_last_error();
    EXPECT_EQ(hugemm_free(rt[live], x.data), -ENOENT);
    EXPECT_EQ(hugemm_free(again, x.data), 0);
    hugemm_close(again);
    hugemm_close(rt[live]);
  }
}

TEST(MultiRuntime, IoOfOneOnTheOthersMemoryIsRefused) {
  PatternFile file(4 << 20, 0x11);
  hugemm_runtime* a = Open();
  hugemm_runtime* b = Open();
  ASSERT_TRUE(a && b);
  TestRing ring_a, ring_b;
  ASSERT_TRUE(ring_a.ok && ring_b.ok);
  hugemm_io *io_a = nullptr, *io_b = nullptr;
  ASSERT_EQ(hugemm_io_attach(a, ring_a.fd(), nullptr, &io_a), 0) << hugemm_last_error();
  // A ring has one runtime's table.
  hugemm_io* twice = nullptr;
  EXPECT_EQ(hugemm_io_attach(b, ring_a.fd(), nullptr, &twice), -EBUSY);
  EXPECT_EQ(twice, nullptr);
  ASSERT_EQ(hugemm_io_attach(b, ring_b.fd(), nullptr, &io_b), 0) << hugemm_last_error();
  hugemm_buffer buf_a, map_a;
  ASSERT_EQ(hugemm_alloc(a, kRead, nullptr, 1, &buf_a), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_map_buffer(a, k2M, nullptr, &map_a), 0) << hugemm_last_error();
  for (void* p : {buf_a.data, map_a.data}) {
    EXPECT_EQ(hugemm_io_buffer_index(io_b, p, kRead), -ENOENT);
    uint64_t token = 0;
    EXPECT_EQ(hugemm_io_pin(io_b, p, kRead, 1, &token), -ENOENT);
    EXPECT_EQ(ReadDirect(io_b, ring_b, file, p, 0), -ENOENT);
    EXPECT_EQ(hugemm_io_in_flight(io_b), 0u);
    // A reads into its own memory.
    ASSERT_EQ(ReadDirect(io_a, ring_a, file, p, kRead), static_cast<int>(kRead));
    EXPECT_EQ(FirstMismatch(p, kRead, kRead, file.seed()), -1);
  }
  hugemm_close(a);  // detaches io_a: its ring may take B's table now
  hugemm_io* again = nullptr;
  EXPECT_EQ(hugemm_io_attach(b, ring_a.fd(), nullptr, &again), 0) << hugemm_last_error();
  hugemm_io_detach(again);
  hugemm_io_detach(io_a);
  // B's I/O goes on after A is gone.
  hugemm_buffer buf_b;
  ASSERT_EQ(hugemm_alloc(b, kRead, nullptr, 1, &buf_b), 0) << hugemm_last_error();
  ASSERT_EQ(ReadDirect(io_b, ring_b, file, buf_b.data, 2 * kRead), static_cast<int>(kRead));
  EXPECT_EQ(FirstMismatch(buf_b.data, kRead, 2 * kRead, file.seed()), -1);
  EXPECT_EQ(hugemm_free(b, buf_b.data), 0);
  hugemm_io_detach(io_b);
  hugemm_close(b);
}

// One runtime per thread, both allocating, reading and freeing at once; then one thread
// that uses both.
TEST(MultiRuntime, ARuntimePerThreadAndOneThreadUsingBoth) {
  PatternFile file(4 << 20, 0x22);
  hugemm_runtime* rt[2] = {Open(), Open()};
  ASSERT_TRUE(rt[0] && rt[1]);
  auto work = [&](hugemm_runtime* r, hugemm_runtime* other, int seed) {
    TestRing ring;
    ASSERT_TRUE(ring.ok);
    hugemm_io* io = nullptr;
    ASSERT_EQ(hugemm_io_attach(r, ring.fd(), nullptr, &io), 0) << hugemm_last_error();
    for (int i = 0; i < 50; ++i) {
      hugemm_buffer buf;
      ASSERT_EQ(hugemm_alloc(r, kRead, nullptr, 1, &buf), 0) << hugemm_last_error();
      const uint64_t off = ((i + seed) % 16) * kRead;
      ASSERT_EQ(ReadDirect(io, ring, file, buf.data, off), static_cast<int>(kRead));
      EXPECT_EQ(FirstMismatch(buf.data, kRead, off, file.seed()), -1);
      EXPECT_EQ(hugemm_free(other, buf.data), -ENOENT);
      ASSERT_EQ(hugemm_free(r, buf.data), 0) << hugemm_last_error();
    }
    hugemm_io_detach(io);
  };
  std::thread t0(work, rt[0], rt[1], 0), t1(work, rt[1], rt[0], 5);
  t0.join();
  t1.join();
  // One thread, both runtimes, interleaved.
  std::vector<hugemm_buffer> bufs;
  for (int i = 0; i < 32; ++i) {
    hugemm_buffer x;
    ASSERT_EQ(hugemm_alloc(rt[i % 2], 4096 << (i % 4), nullptr, 0, &x), 0);
    bufs.push_back(x);
  }
  for (int i = 0; i < 32; i += 2) ASSERT_EQ(hugemm_free(rt[0], bufs[i].data), 0);
  hugemm_close(rt[0]);
  for (int i = 1; i < 32; i += 2) {
    std::memset(bufs[i].data, 9, bufs[i].size);
    ASSERT_EQ(hugemm_free(rt[1], bufs[i].data), 0);
  }
  hugemm_close(rt[1]);
}

// A buffer of A is memory of this process A maps: B may register it as external (borrowed)
// memory like any other, which never makes it B's to free, and A keeps it whole.
TEST(MultiRuntime, RegisterExternalOfTheOthersBuffer) {
  hugemm_runtime* a = Open();
  hugemm_runtime* b = Open();
  ASSERT_TRUE(a && b);
  hugemm_buffer buf;
  ASSERT_EQ(hugemm_map_buffer(a, k2M, nullptr, &buf), 0) << hugemm_last_error();
  std::memset(buf.data, 0x33, k2M);
  uint64_t id = 0;
  ASSERT_EQ(hugemm_register_external(b, buf.data, k2M, &id), 0) << hugemm_last_error();
  hugemm_translation ta, tb;
  ASSERT_EQ(hugemm_translate(a, buf.data, 0, &ta), 0);
  ASSERT_EQ(hugemm_translate(b, buf.data, 0, &tb), 0);
  EXPECT_EQ(ta.pfn, tb.pfn);
  EXPECT_EQ(hugemm_free(b, buf.data), -ENOENT);
  EXPECT_EQ(hugemm_unregister_external(a, id), -ENOENT);
  hugemm_page page;
  ASSERT_EQ(hugemm_pin_pages(b, buf.data, 1, HUGEMM_PIN | HUGEMM_WRITE, &page), 1);
  EXPECT_EQ(hugemm_unregister_external(b, id), -EFAULT);  // pinned
  EXPECT_EQ(hugemm_unpin_pages(b, &page, 1, 0), 1);
  EXPECT_EQ(hugemm_unregister_external(b, id), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_translate(b, buf.data, 0, &tb), -ENOENT);
  EXPECT_EQ(static_cast<unsigned char*>(buf.data)[k2M - 1], 0x33);
  ASSERT_EQ(hugemm_translate(a, buf.data, 0, &ta), 0);
  EXPECT_EQ(hugemm_free(a, buf.data), 0) << hugemm_last_error();
  hugemm_close(b);
  hugemm_close(a);
}

TEST(MultiRuntime, StatisticsCountOnlyTheirOwn) {
  auto a = hugemm::Runtime::Open();
  auto b = hugemm::Runtime::Open();
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  const hugemm::KernelPinStats before = (*b)->kernel_pin_stats();
  auto mapped = (*a)->MapBuffer(k2M);
  auto allocated = (*a)->Allocate(64 << 10);
  ASSERT_TRUE(mapped.ok() && allocated.ok());
  const hugemm::KernelPinStats after = (*b)->kernel_pin_stats();
  EXPECT_EQ(after.slots_used, before.slots_used);
  EXPECT_EQ(after.bytes, before.bytes);
  EXPECT_EQ(after.pinned_bytes, before.pinned_bytes);
  EXPECT_GT((*a)->kernel_pin_stats().bytes, 0u);
  size_t b_mapped = 0, a_mapped = 0;
  for (const hugemm::PoolStats& s : (*b)->allocator().Stats()) b_mapped += s.mapped_bytes;
  for (const hugemm::PoolStats& s : (*a)->allocator().Stats()) a_mapped += s.mapped_bytes;
  EXPECT_EQ(b_mapped, 0u);
  EXPECT_GT(a_mapped, 0u);
  EXPECT_TRUE(absl::IsNotFound((*b)->Free(allocated->data())));
  EXPECT_TRUE(absl::IsNotFound((*b)->BufferAt(mapped->data()).status()));
}

// A thread frees a buffer of A; a callback of that frees a buffer of B, whose subscriptions
// unsubscribe themselves there, so they end once A's announcement is over, still inside the
// thread's hugemm_free of A. Its calls on B have all returned by then, so another thread may
// close B meanwhile: the close waits for those ends, which still use B's table.
TEST(MultiRuntime, ClosingOneWhileAThreadEndsItsSubscriptionsInACallOnTheOther) {
  constexpr int kSubscriptions = 100;
  struct State;
  struct Sub {
    State* state = nullptr;
    hugemm_subscription* handle = nullptr;
  };
  struct State {
    hugemm_runtime* b = nullptr;
    void* b_data = nullptr;
    Sub subs[kSubscriptions];
    int heard = 0;  // callbacks of B's subscriptions that ran
    int b_freed = -1;
    std::atomic<bool> may_close{false};
  };
  for (int round = 0; round < 5; ++round) {
    State st;
    hugemm_runtime* a = Open();
    st.b = Open();
    ASSERT_TRUE(a && st.b);
    hugemm_buffer a_buf, b_buf;
    ASSERT_EQ(hugemm_map_buffer(a, k2M, nullptr, &a_buf), 0) << hugemm_last_error();
    ASSERT_EQ(hugemm_map_buffer(st.b, k2M, nullptr, &b_buf), 0) << hugemm_last_error();
    st.b_data = b_buf.data;
    for (Sub& sub : st.subs) {
      sub.state = &st;
      auto unsubscribe = [](void* user, const void*, size_t, int) {
        Sub* self = static_cast<Sub*>(user);
        ++self->state->heard;
        hugemm_unsubscribe(self->handle);  // inside a callback: ended after the announcement
      };
      ASSERT_EQ(
          hugemm_subscribe(st.b, b_buf.data, k2M, unsubscribe, nullptr, &sub, &sub.handle, nullptr),
          0)
          << hugemm_last_error();
    }
    auto free_b = [](void* user, const void*, size_t, int) {
      State* s = static_cast<State*>(user);
      s->b_freed = hugemm_free(s->b, s->b_data);
    };
    auto let_close = [](void* user, const void*, size_t, int) {
      static_cast<State*>(user)->may_close.store(true, std::memory_order_release);
    };
    hugemm_subscription* a_sub = nullptr;
    ASSERT_EQ(hugemm_subscribe(a, a_buf.data, k2M, free_b, let_close, &st, &a_sub, nullptr), 0)
        << hugemm_last_error();
    std::thread closer([&st] {
      while (!st.may_close.load(std::memory_order_acquire)) std::this_thread::yield();
      hugemm_close(st.b);
    });
    EXPECT_EQ(hugemm_free(a, a_buf.data), 0) << hugemm_last_error();
    closer.join();
    EXPECT_EQ(st.b_freed, 0);
    EXPECT_EQ(st.heard, kSubscriptions);
    hugemm_unsubscribe(a_sub);
    hugemm_close(a);
  }
}

}  // namespace
