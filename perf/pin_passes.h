// The timed parts of the pin benchmark (bench_pin.h): passes of pin calls over a range,
// run on one or more threads, and the floor of their output.
#ifndef HUGEMM_PERF_PIN_PASSES_H_
#define HUGEMM_PERF_PIN_PASSES_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/gup.h"
#include "perf/bench_pin.h"

namespace hugemm::perf::pin_internal {

// What every pass of a run shares.
struct PassConfig {
  std::byte* base = nullptr;  // the buffer's first byte, a folio boundary
  size_t pages = 0;           // 4K pages in the range the run pins
  size_t folio_pages = 0;     // 4K pages per folio
  long pages_per_call = 512;  // -1: a pass's whole range in one call
  GupFlags flags = kGupNone;
  PinOutput output = PinOutput::kPages;
};

// One thread's pass: pins pages [first, first + pages) of the range in calls of
// pages_per_call, into output buffers of its own, then unpins them.
class Pass {
 public:
  Pass(Pinner& pinner, const PassConfig& c, size_t first, size_t pages);

  // Pins the pass's pages; on failure unpins what it took and returns the error.
  absl::Status Pin();
  void Unpin();

  // The pass's output arrays, dead between an unpin and the next pin: the floor writes
  // the same memory the pins write (Floor).
  absl::Span<PageRef> page_out() { return absl::MakeSpan(page_out_); }
  absl::Span<FolioSpan> span_out() { return absl::MakeSpan(span_out_); }

 private:
  template <typename Call>
  absl::Status PinLoop(Call call);

  Pinner& pinner_;
  const PassConfig& c_;
  const size_t first_, pages_;
  std::vector<PageRef> page_out_;
  std::vector<FolioSpan> span_out_;
  std::vector<DmaSegment> seg_out_;
  size_t count_ = 0;
  size_t pinned_pages_ = 0;
};

// Threads that wait for each other, spinning (they are about to be timed): a while on the
// CPU's pause hint, so that the last one's release is seen within a cache-line transfer
// rather than after a sched_yield, then yielding, so that a loaded machine still schedules
// the one they wait for. Reusable.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void Wait();

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> round_{0};
};

// Passes on `threads` threads, each over the whole range (gup_test -j: the same folios
// from every thread) or, `disjoint`, over its own part of it, cut at folio boundaries.
// The threads live as long as the runner, as gup_test's do, so that a repeat times
// pinning alone, not a thread's start or its first read section. Between repeats they
// sleep; within one they wait for each other before they pin, before they unpin and at
// the end, so that the wall times measure pinning and unpinning alone.
class PassRunner {
 public:
  PassRunner(Pinner& pinner, const PassConfig& c, int threads, bool disjoint);
  ~PassRunner();
  PassRunner(const PassRunner&) = delete;
  PassRunner& operator=(const PassRunner&) = delete;

  // One repeat: appends each thread's times, and the wall times of all of them, to `t`.
  // A thread the system refused to start (RLIMIT_NPROC, threads-max) fails every repeat
  // with its errno (EAGAIN).
  absl::Status RunOnce(PinTimes* t);

  // Thread i's pass.
  Pass& pass(int i) { return *passes_[i]; }

 private:
  struct Times {
    uint64_t pin_start = 0, pin_end = 0, unpin_start = 0, unpin_end = 0;
    absl::Status status;
  };
  void Repeat(int i);  // thread i's part of one repeat
  void Work(int i);    // worker thread i: a repeat per round until stopped

  std::vector<std::unique_ptr<Pass>> passes_;
  std::vector<Times> times_;
  SpinBarrier barrier_;
  std::atomic<uint32_t> round_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;  // threads 1.., thread 0 is the caller
  absl::Status started_;              // a worker that could not be started
};

// Throughput of `threads` threads each running the same compute loop (no memory
// touched), against one thread running it: the control for the passes' scaling. An
// error when a thread cannot be started.
absl::StatusOr<double> CpuScaling(int threads);

// Throughput of `threads` threads each writing its own part of an array of `entries`
// 8-byte entries at once (as many pages' entries as a page-array pin writes), against
// one thread writing it all: what the memory gives the page array's writes, the second
// control. The median of a few rounds. An error when a thread cannot be started.
absl::StatusOr<double> WriteScaling(int threads, size_t entries);

// Throughput of `threads` threads each making one atomic add (and, untimed, its undo) on
// every folio of its own part of `folios` at once, against one thread on all of them: the
// floor of a folio-span pin, on as many threads: what the machine gives the pins' locked
// instructions, which a compute loop's scaling does not say (the third control). The
// folios must be live and held by the caller. An error when a thread cannot be started.
absl::StatusOr<double> AtomicScaling(int threads, absl::Span<Folio* const> folios);

// The floor of the output, the least work that produces it: writing the page array (as
// the kernel's record_subpages does), or one atomic add per folio each call reaches (what
// a pin of folio spans or segments cannot do with less). It writes into `whole`'s output
// arrays, a pass over the whole range that is not pinned while the floor runs: the same
// memory the pins write, so that where the machine put an array (its caches, its pages,
// the host's pages under a VM) weighs on both alike.
class Floor {
 public:
  Floor(const std::vector<Folio*>& folios, const PassConfig& c, Pass& whole);
  double RunOnce();  // microseconds

  // The call floor, for folio spans: the floor's atomic adds made by as many calls as the
  // pass makes, each out of line as a pin is, writing one span per folio and returning a
  // StatusOr the caller checks: what any pin with this signature costs at least. It takes
  // no read section, looks nothing up and checks nothing, so what a pin costs beyond it
  // is its own work. Microseconds.
  double RunCallsOnce();

 private:
  const PassConfig& c_;
  std::vector<Folio*> touched_;  // spans, segments: one folio per call and folio, in order
  std::vector<size_t> calls_;    // where each call's folios start in touched_, and the end
  absl::Span<FolioSpan> spans_;  // the whole pass's
  std::vector<Folio*> folios_;   // pages: every folio of the range
  absl::Span<PageRef> pages_;    // the whole pass's
};

}  // namespace hugemm::perf::pin_internal

#endif  // HUGEMM_PERF_PIN_PASSES_H_
