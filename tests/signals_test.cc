// The public C calls while a timer signal keeps arriving (10 kHz, a handler installed
// without SA_RESTART, as a profiler or an interval timer of the program would): no call
// fails because a system call under it was interrupted.
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"
#include "tests/test_util.h"

namespace {

std::atomic<uint64_t> g_signals{0};

void OnTick(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

constexpr size_t k2M = 2u << 20;
constexpr size_t k1G = 1u << 30;
constexpr size_t kFileSize = 4u << 20;

// Runs `call` and, when it fails, records the message.
#define EXPECT_CALL_OK(call)                                   \
  do {                                                         \
    const long rc_ = (call);                                   \
    EXPECT_GE(rc_, 0) << #call << ": " << hugemm_last_error(); \
  } while (0)

class SignalsTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    hugemm_runtime* probe = nullptr;
    ASSERT_EQ(hugemm_open(nullptr, &probe), 0) << hugemm_last_error();
    hugemm_buffer buf;
    const int rc = hugemm_map_buffer(probe, k2M, nullptr, &buf);
    if (rc == 0) hugemm_free(probe, buf.data);
    hugemm_close(probe);
    if (rc == -ENOMEM) GTEST_SKIP() << "no free 2M huge pages";
    ASSERT_EQ(rc, 0);
  }
};

// Every call that makes system calls, many times over, with the timer running.
int Exercise(int rounds, bool with_1g) {
  int one_g_maps = 0;
  for (int round = 0; round < rounds; ++round) {
    hugemm_runtime* rt = nullptr;
    if (hugemm_open(nullptr, &rt) != 0) {
      ADD_FAILURE() << "hugemm_open: " << hugemm_last_error();
      return one_g_maps;
    }

    std::vector<hugemm_buffer> bufs;
    hugemm_buffer buf;
    EXPECT_CALL_OK(hugemm_map_buffer(rt, 4 * k2M, nullptr, &buf));
    bufs.push_back(buf);
    hugemm_buffer_options fs = {HUGEMM_BACKING_HUGETLBFS, 0, -1, nullptr};
    if (hugemm_map_buffer(rt, 2 * k2M, &fs, &buf) == 0) {
      bufs.push_back(buf);
    } else {
      EXPECT_EQ(std::string(hugemm_last_error()).find("nterrupted"), std::string::npos)
          << hugemm_last_error();
    }
    hugemm_buffer_options anon = {HUGEMM_BACKING_ANON, 0, -1, nullptr};
    EXPECT_CALL_OK(hugemm_map_buffer(rt, 64 * 4096, &anon, &buf));
    bufs.push_back(buf);
    if (with_1g) {
      hugemm_buffer_options one_g = {HUGEMM_BACKING_HUGETLB, k1G, -1, nullptr};
      const int rc = hugemm_map_buffer(rt, k1G, &one_g, &buf);
      if (rc == 0) {
        bufs.push_back(buf);
        ++one_g_maps;
      } else {
        EXPECT_EQ(rc, -ENOMEM) << hugemm_last_error();  // none free here: not a failure
      }
    }
    for (int i = 0; i < 4; ++i) {
      EXPECT_CALL_OK(hugemm_alloc(rt, 64 << 10, nullptr, i % 2, &buf));
      bufs.push_back(buf);
    }

    // Pins of every output, a translation, on each buffer.
    for (const hugemm_buffer& b : bufs) {
      const size_t len = std::min<size_t>(b.size, 2 * k2M);
      std::vector<hugemm_page> pages(len / 4096);
      const long np =
          hugemm_pin_pages(rt, b.data, pages.size(), HUGEMM_PIN | HUGEMM_WRITE, pages.data());
      EXPECT_EQ(np, static_cast<long>(pages.size())) << hugemm_last_error();
      if (np > 0) EXPECT_CALL_OK(hugemm_unpin_pages(rt, pages.data(), np, 1));
      std::vector<hugemm_folio_span> spans(1024);
      const long nf = hugemm_pin_folios(rt, b.data, len, HUGEMM_GET, spans.data(), spans.size());
      EXPECT_GT(nf, 0) << hugemm_last_error();
      if (nf > 0) EXPECT_CALL_OK(hugemm_unpin_folios(rt, spans.data(), nf, HUGEMM_GET, 0));
      std::vector<hugemm_dma_segment> segs(1024);
      const long ns = hugemm_pin_segments(rt, b.data, len, HUGEMM_PIN, 0, segs.data(), segs.size());
      EXPECT_GT(ns, 0) << hugemm_last_error();
      if (ns > 0) EXPECT_CALL_OK(hugemm_unpin_range(rt, b.data, len, HUGEMM_PIN, 0));
      hugemm_translation t;
      EXPECT_CALL_OK(hugemm_translate(rt, b.data, len, &t));
    }

    // Memory the program mapped itself.
    void* ext = ::mmap(nullptr, k2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (ext != MAP_FAILED) {
      uint64_t id = 0;
      EXPECT_CALL_OK(hugemm_register_external(rt, ext, k2M, &id));
      if (id != 0) EXPECT_CALL_OK(hugemm_unregister_external(rt, id));
      ::munmap(ext, k2M);
    }

    for (const hugemm_buffer& b : bufs) EXPECT_CALL_OK(hugemm_free(rt, b.data));
    hugemm_close(rt);
  }
  return one_g_maps;
}

TEST_P(SignalsTest, MapPinTranslateFree) {
  g_signals = 0;
  {
    hugemm::testing::ThreadTicker ticker(100'000, GetParam(), OnTick);  // 10 kHz
    Exercise(40, /*with_1g=*/false);
    RecordProperty("one_g_buffers",
                   Exercise(2, hugemm::testing::KernelHasHugePageSize(size_t{1} << 30)));
  }
  RecordProperty("signals", static_cast<int>(g_signals.load()));
  EXPECT_GT(g_signals.load(), 0u);
}

// O_DIRECT reads through an attached ring, on a file under /var/tmp.
TEST_P(SignalsTest, IoReads) {
  char path[] = "/var/tmp/hugemm-signals-XXXXXX";
  const int wfd = ::mkstemp(path);
  ASSERT_GE(wfd, 0);
  std::vector<unsigned char> data(kFileSize);
  for (size_t i = 0; i < kFileSize; ++i) data[i] = static_cast<unsigned char>(i * 7 + i / 4096);
  ASSERT_EQ(::pwrite(wfd, data.data(), kFileSize, 0), static_cast<ssize_t>(kFileSize));
  ::fsync(wfd);
  const int fd = ::open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  ::unlink(path);
  ::close(wfd);
  ASSERT_GE(fd, 0);

  g_signals = 0;
  {
    hugemm::testing::ThreadTicker ticker(100'000, GetParam(), OnTick);  // 10 kHz
    for (int round = 0; round < 20; ++round) {
      hugemm_runtime* rt = nullptr;
      ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
      io_uring ring;
      ASSERT_EQ(io_uring_queue_init(16, &ring, 0), 0);
      hugemm_io* io = nullptr;
      EXPECT_CALL_OK(hugemm_io_attach(rt, ring.ring_fd, nullptr, &io));
      hugemm_buffer buf;
      EXPECT_CALL_OK(hugemm_map_buffer(rt, k2M, nullptr, &buf));
      if (io == nullptr || buf.data == nullptr) {
        hugemm_close(rt);
        io_uring_queue_exit(&ring);
        break;
      }
      for (int i = 0; i < 8; ++i) {
        const unsigned len = 256 << 10;
        const off_t off = static_cast<off_t>((round + i) % 16) * len;
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        ASSERT_NE(sqe, nullptr);
        EXPECT_CALL_OK(hugemm_io_prep_read(io, sqe, fd, buf.data, len, off, 100 + i));
        int rc;
        do rc = io_uring_submit(&ring);
        while (rc == -EINTR);
        ASSERT_EQ(rc, 1);
        io_uring_cqe* cqe = nullptr;
        do rc = io_uring_wait_cqe(&ring, &cqe);
        while (rc == -EINTR);
        ASSERT_EQ(rc, 0);
        EXPECT_EQ(cqe->res, static_cast<int>(len));
        EXPECT_EQ(std::memcmp(buf.data, data.data() + off, len), 0);
        uint64_t tag = 0;
        EXPECT_CALL_OK(hugemm_io_complete(io, cqe, &tag));
        EXPECT_EQ(tag, 100u + i);
        io_uring_cqe_seen(&ring, cqe);
      }
      uint64_t token = 0;
      EXPECT_CALL_OK(hugemm_io_pin(io, buf.data, k2M, 1, &token));
      EXPECT_CALL_OK(hugemm_io_unpin(io, token));
      EXPECT_CALL_OK(hugemm_free(rt, buf.data));
      hugemm_io_detach(io);
      io_uring_queue_exit(&ring);
      hugemm_close(rt);
    }
  }
  ::close(fd);
  RecordProperty("signals", static_cast<int>(g_signals.load()));
  EXPECT_GT(g_signals.load(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Handlers, SignalsTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "SaRestart" : "NoSaRestart";
                         });

}  // namespace
