#include "perf/io_loop.h"

#include <liburing.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "hugemm/io.h"
#include "perf/bench_util.h"

namespace hugemm::perf::io_internal {
namespace {

// User + system time of the whole process (io_uring's workers are its threads), in ns.
uint64_t CpuNs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ns = [](const timeval& tv) {
    return static_cast<uint64_t>(tv.tv_sec) * 1000000000u +
           static_cast<uint64_t>(tv.tv_usec) * 1000u;
  };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

// xorshift64*: cheap and the same sequence for every candidate of a job.
struct Random {
  uint64_t state;
  uint64_t Next() {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
  }
};

struct Ring {
  io_uring ring{};
  bool ok = false;
  ~Ring() {
    if (ok) io_uring_queue_exit(&ring);
  }
};

}  // namespace

double Percentile(std::vector<uint64_t>& samples, double p) {
  if (samples.empty()) return 0;
  // Nearest rank.
  const size_t k =
      static_cast<size_t>(std::llround(p / 100.0 * static_cast<double>(samples.size() - 1)));
  std::nth_element(samples.begin(), samples.begin() + static_cast<ptrdiff_t>(k), samples.end());
  return static_cast<double>(samples[k]);
}

absl::StatusOr<IoRun> RunLoop(Runtime& rt, const std::vector<std::byte*>& buffers,
                              IoCandidate candidate, const LoopJob& job, std::string* fixed_mode) {
  const bool read = job.pattern == IoPattern::kRandRead;
  const unsigned depth = job.depth;
  const uint32_t bs = job.block_size;
  Ring ring;
  if (int rc = io_uring_queue_init(std::max(depth, 8u), &ring.ring, 0); rc < 0) {
    return absl::InternalError(absl::StrCat("io_uring_queue_init: ", std::strerror(-rc)));
  }
  ring.ok = true;
  std::unique_ptr<FixedBuffers> fixed;
  std::unique_ptr<IoRing> io;
  std::vector<int> index(depth, -1);
  if (candidate == IoCandidate::kFixed) {
    absl::StatusOr<std::unique_ptr<FixedBuffers>> f = FixedBuffers::Attach(rt, ring.ring.ring_fd);
    if (!f.ok()) return f.status();
    fixed = std::move(*f);
    for (unsigned i = 0; i < depth; ++i) {
      absl::StatusOr<int> x = fixed->IndexOf(buffers[i], bs);
      if (!x.ok()) return x.status();
      index[i] = *x;
    }
    *fixed_mode = fixed->mode() == FixedBufferMode::kClone ? "clone" : "iovec";
  } else if (candidate == IoCandidate::kFixedPinned) {
    absl::StatusOr<std::unique_ptr<IoRing>> r =
        IoRing::Attach(rt, ring.ring.ring_fd, {.max_in_flight = depth});
    if (!r.ok()) return r.status();
    io = std::move(*r);
    *fixed_mode = io->fixed().mode() == FixedBufferMode::kClone ? "clone" : "iovec";
  }

  Random random{job.seed | 1};
  const uint64_t blocks = job.size / bs;
  std::vector<uint64_t> submitted(depth);
  absl::Status failed;
  auto issue = [&](unsigned slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
    const uint64_t off = random.Next() % blocks * bs;
    std::byte* buf = buffers[slot];
    switch (candidate) {
      case IoCandidate::kPlain:
        if (read) {
          io_uring_prep_read(sqe, job.fd, buf, bs, off);
        } else {
          io_uring_prep_write(sqe, job.fd, buf, bs, off);
        }
        io_uring_sqe_set_data64(sqe, slot);
        break;
      case IoCandidate::kFixed:
        if (read) {
          io_uring_prep_read_fixed(sqe, job.fd, buf, bs, off, index[slot]);
        } else {
          io_uring_prep_write_fixed(sqe, job.fd, buf, bs, off, index[slot]);
        }
        io_uring_sqe_set_data64(sqe, slot);
        break;
      default:
        if (absl::Status st = read ? io->PrepareRead(sqe, job.fd, buf, bs, off, slot)
                                   : io->PrepareWrite(sqe, job.fd, buf, bs, off, slot);
            !st.ok()) {
          failed = st;
          io_uring_prep_nop(sqe);  // keeps the ring's count: it completes as slot ~0
          io_uring_sqe_set_data64(sqe, ~uint64_t{0});
        }
    }
    submitted[slot] = NowNs();
  };

  const uint64_t start = NowNs();
  const uint64_t warm_end = start + static_cast<uint64_t>(job.seconds * 0.1e9);
  const uint64_t end = warm_end + static_cast<uint64_t>(job.seconds * 1e9);
  bool measuring = false, stopped = false;
  uint64_t t0 = 0, cpu0 = 0, t1 = 0, cpu1 = 0, ios = 0;
  std::vector<uint64_t> latency;
  latency.reserve(1 << 20);
  for (unsigned i = 0; i < depth; ++i) issue(i);
  unsigned in_flight = depth;
  while (in_flight > 0) {
    if (int rc = io_uring_submit_and_wait(&ring.ring, 1); rc < 0 && rc != -EINTR) {
      return absl::InternalError(absl::StrCat("io_uring_submit_and_wait: ", std::strerror(-rc)));
    }
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring.ring, head, cqe) {
      ++seen;
      uint64_t slot = cqe->user_data;
      if (io != nullptr && slot != ~uint64_t{0}) {
        absl::StatusOr<uint64_t> u = io->Complete(cqe);
        if (!u.ok() && failed.ok()) failed = u.status();
        slot = u.ok() ? *u : ~uint64_t{0};
      }
      if (failed.ok() && cqe->res != static_cast<int>(bs)) {
        failed =
            cqe->res < 0
                ? absl::InternalError(absl::StrCat(IoPatternName(job.pattern), " of ", bs,
                                                   " bytes: ", std::strerror(-cqe->res)))
                : absl::InternalError(absl::StrCat("short I/O: ", cqe->res, " of ", bs, " bytes"));
      }
      const uint64_t now = NowNs();
      if (!measuring && now >= warm_end) {
        // The window opens at warm_end, not at this completion: a stall that delays the
        // first completion past `end` still leaves a window as long as the stall, with
        // the I/O that ended it, never a window of zero seconds.
        measuring = true;
        t0 = warm_end;
        cpu0 = CpuNs();
      }
      if (measuring && !stopped && slot != ~uint64_t{0}) {
        latency.push_back(now - submitted[slot]);
        ++ios;
      }
      if (!stopped && now >= end) {
        stopped = true;
        t1 = now;
        cpu1 = CpuNs();
      }
      if (stopped || !failed.ok() || slot == ~uint64_t{0}) {
        --in_flight;
      } else {
        issue(static_cast<unsigned>(slot));
      }
    }
    io_uring_cq_advance(&ring.ring, seen);
  }
  if (!failed.ok()) return failed;
  IoRun run;
  run.ran = true;
  run.ios = ios;
  run.seconds = static_cast<double>(t1 - t0) / 1e9;
  run.iops = run.seconds > 0 ? static_cast<double>(ios) / run.seconds : 0;
  run.cpu_us_per_io =
      ios > 0 ? static_cast<double>(cpu1 - cpu0) / 1e3 / static_cast<double>(ios) : 0;
  run.p50_us = Percentile(latency, 50) / 1e3;
  run.p99_us = Percentile(latency, 99) / 1e3;
  return run;
}

}  // namespace hugemm::perf::io_internal
