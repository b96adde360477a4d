// The timed parts of the pin benchmark (pin_passes.h).
#include "perf/pin_passes.h"

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/types/span.h"
#include "hugemm/os.h"
#include "perf/bench_util.h"

namespace hugemm::perf::pin_internal {
namespace {

// Starts `body` on a new thread, appended to `threads`. The system may refuse one
// (RLIMIT_NPROC, threads-max), which std::thread throws: an error here, with its errno.
template <typename F>
absl::Status StartThread(std::vector<std::thread>& threads, F&& body) {
  try {
    threads.emplace_back(std::forward<F>(body));
  } catch (const std::system_error& e) {
    return ErrnoStatus(e.code().value(), "start a thread");
  }
  return absl::OkStatus();
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace
void SpinBarrier::Wait() {
  const int round = round_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
    arrived_.store(0, std::memory_order_relaxed);
    round_.fetch_add(1, std::memory_order_release);
    return;
  }
  // A release seen one sched_yield late would start this thread's timed part up to a few
  // microseconds after the others': the wall time of a short repeat would count it.
  // About a millisecond of pause hints, then yield to whatever else the machine runs.
  for (int spin = 0; spin < (1 << 15); ++spin) {
    if (round_.load(std::memory_order_acquire) != round) return;
    CpuRelax();
  }
  while (round_.load(std::memory_order_acquire) == round) std::this_thread::yield();
}

Pass::Pass(Pinner& pinner, const PassConfig& c, size_t first, size_t pages)
    : pinner_(pinner), c_(c), first_(first), pages_(pages) {
  switch (c.output) {
    case PinOutput::kPages:
      page_out_.resize(pages);
      break;
    case PinOutput::kFolios:
      span_out_.resize(pages);
      break;
    case PinOutput::kSegments:
      seg_out_.resize(pages);
      break;
  }
}

// The calls of n pages each over the pass, as a user's loop makes them: the output is
// chosen once, and each call is the pin, its result check and the count.
template <typename Call>
absl::Status Pass::PinLoop(Call call) {
  const size_t per_call = c_.pages_per_call < 0 ? pages_ : static_cast<size_t>(c_.pages_per_call);
  std::byte* const va = c_.base + first_ * kPageSize4K;
  size_t count = 0;
  for (size_t done = 0; done < pages_;) {
    const size_t n = std::min(per_call, pages_ - done);
    absl::StatusOr<size_t> got = call(va + done * kPageSize4K, n, done, count);
    if (!got.ok()) [[unlikely]] {
      pinned_pages_ = done;
      count_ = count;
      Unpin();
      return got.status();
    }
    count += *got;
    done += n;
  }
  pinned_pages_ = pages_;
  count_ = count;
  return absl::OkStatus();
}

absl::Status Pass::Pin() {
  const GupFlags flags = c_.flags;
  switch (c_.output) {
    case PinOutput::kPages:
      return PinLoop([&](std::byte* va, size_t n, size_t done, size_t /*count*/) {
        return pinner_.PinPages(va, n, flags, absl::MakeSpan(page_out_.data() + done, n));
      });
    case PinOutput::kFolios:
      return PinLoop([&, out = span_out_.data(), room = span_out_.size()](
                         std::byte* va, size_t n, size_t /*done*/, size_t count) {
        return pinner_.PinFolios(va, n * kPageSize4K, flags,
                                 absl::MakeSpan(out + count, room - count));
      });
    case PinOutput::kSegments:
      return PinLoop([&, out = seg_out_.data(), room = seg_out_.size()](
                         std::byte* va, size_t n, size_t /*done*/, size_t count) {
        return pinner_.PinSegments(va, n * kPageSize4K, flags, 0,
                                   absl::MakeSpan(out + count, room - count));
      });
  }
  return absl::InternalError("unknown output");
}

void Pass::Unpin() {
  const bool dirty = HasAny(c_.flags, kGupWrite);
  const RefKind kind = HasAny(c_.flags, kGupGet) ? RefKind::kGet : RefKind::kPin;
  switch (c_.output) {
    case PinOutput::kPages:
      pinner_.UnpinPages(absl::MakeConstSpan(page_out_.data(), pinned_pages_), dirty);
      break;
    case PinOutput::kFolios:
      pinner_.UnpinFolios(absl::MakeConstSpan(span_out_.data(), count_), kind, dirty);
      break;
    case PinOutput::kSegments:
      if (pinned_pages_ > 0) {
        (void)pinner_.UnpinRange(c_.base + first_ * kPageSize4K, pinned_pages_ * kPageSize4K, kind,
                                 dirty);
      }
      break;
  }
  pinned_pages_ = 0;
  count_ = 0;
}

PassRunner::PassRunner(Pinner& pinner, const PassConfig& c, int threads, bool disjoint)
    : times_(threads), barrier_(threads) {
  // Disjoint parts: whole folios each, as even as the folios allow.
  const size_t folios = (c.pages + c.folio_pages - 1) / c.folio_pages;
  for (int i = 0; i < threads; ++i) {
    size_t first = 0, pages = c.pages;
    if (disjoint) {
      first = std::min(c.pages, folios * i / threads * c.folio_pages);
      pages = std::min(c.pages, folios * (i + 1) / threads * c.folio_pages) - first;
    }
    passes_.push_back(std::make_unique<Pass>(pinner, c, first, pages));
  }
  // Workers that started wait for a round; the destructor stops them.
  for (int i = 1; i < threads && started_.ok(); ++i) {
    started_ = StartThread(workers_, [this, i] { Work(i); });
  }
}

PassRunner::~PassRunner() {
  stop_.store(true, std::memory_order_relaxed);
  round_.fetch_add(1, std::memory_order_release);
  round_.notify_all();
  for (std::thread& w : workers_) w.join();
}

void PassRunner::Work(int i) {
  uint32_t seen = 0;
  for (;;) {
    round_.wait(seen, std::memory_order_acquire);
    seen = round_.load(std::memory_order_acquire);
    if (stop_.load(std::memory_order_relaxed)) return;
    Repeat(i);
  }
}

void PassRunner::Repeat(int i) {
  Times& my = times_[i];
  barrier_.Wait();
  my.pin_start = NowNs();
  my.status = passes_[i]->Pin();
  my.pin_end = NowNs();
  barrier_.Wait();
  my.unpin_start = NowNs();
  if (my.status.ok()) passes_[i]->Unpin();
  my.unpin_end = NowNs();
  barrier_.Wait();  // every thread's times are in
}

absl::Status PassRunner::RunOnce(PinTimes* t) {
  if (!started_.ok()) return started_;
  round_.fetch_add(1, std::memory_order_release);
  round_.notify_all();
  Repeat(0);
  uint64_t pin_start = UINT64_MAX, pin_end = 0, unpin_start = UINT64_MAX, unpin_end = 0;
  for (const Times& my : times_) {
    if (!my.status.ok()) return my.status;
    t->pin_us.push_back(static_cast<double>(my.pin_end - my.pin_start) / 1e3);
    t->unpin_us.push_back(static_cast<double>(my.unpin_end - my.unpin_start) / 1e3);
    pin_start = std::min(pin_start, my.pin_start);
    pin_end = std::max(pin_end, my.pin_end);
    unpin_start = std::min(unpin_start, my.unpin_start);
    unpin_end = std::max(unpin_end, my.unpin_end);
  }
  t->wall_pin_us.push_back(static_cast<double>(pin_end - pin_start) / 1e3);
  t->wall_unpin_us.push_back(static_cast<double>(unpin_end - unpin_start) / 1e3);
  return absl::OkStatus();
}

absl::StatusOr<double> CpuScaling(int threads) {
  auto loop = [] {
    uint64_t x = 1;
    for (int i = 0; i < 20000000; ++i) x = x * 6364136223846793005u + 1442695040888963407u;
    DoNotOptimize(x);
  };
  const uint64_t t0 = NowNs();
  loop();
  const uint64_t t1 = NowNs();
  std::vector<std::thread> all;
  absl::Status started;
  for (int i = 0; i < threads && started.ok(); ++i) started = StartThread(all, loop);
  for (std::thread& t : all) t.join();
  if (!started.ok()) return started;
  const uint64_t t2 = NowNs();
  return static_cast<double>(threads) * static_cast<double>(t1 - t0) / static_cast<double>(t2 - t1);
}

namespace {

// `threads` threads each doing `work(from, to, round)` on its own part of [0, n) at once,
// against one thread doing it on all of [0, n): throughput over one thread's, the median
// of a few rounds. As the passes run: the one thread alone while the others sleep, then
// all of them released together by a spin barrier, the wall time from the first start to
// the last end. `undo(from, to)` runs after each timed part, untimed.
template <typename Work, typename Undo>
absl::StatusOr<double> PartScaling(int threads, size_t n, Work work, Undo undo) {
  constexpr int kRounds = 15;
  auto part = [&](int i) { return std::pair{n * i / threads, n * (i + 1) / threads}; };
  std::vector<double> one, all;
  std::vector<uint64_t> start(threads), end(threads);
  std::atomic<uint32_t> round{0};
  SpinBarrier go(threads), finished(threads);
  auto run_part = [&](int i, uint32_t r) {
    go.Wait();
    start[i] = NowNs();
    work(part(i).first, part(i).second, r);
    end[i] = NowNs();
    undo(part(i).first, part(i).second);
    finished.Wait();
  };
  std::vector<std::thread> workers;
  std::atomic<bool> abandoned{false};  // a thread could not be started: no rounds run
  absl::Status started;
  for (int i = 1; i < threads && started.ok(); ++i) {
    started = StartThread(workers, [&, i] {
      for (uint32_t r = 1; r <= kRounds; ++r) {
        round.wait(r - 1, std::memory_order_acquire);
        if (abandoned.load(std::memory_order_acquire)) return;
        run_part(i, r);
      }
    });
  }
  if (!started.ok()) {
    abandoned.store(true, std::memory_order_release);
    round.store(1, std::memory_order_release);
    round.notify_all();
    for (std::thread& w : workers) w.join();
    return started;
  }
  for (uint32_t r = 1; r <= kRounds; ++r) {
    const uint64_t t0 = NowNs();
    work(0, n, r);
    one.push_back(static_cast<double>(NowNs() - t0));
    undo(0, n);
    round.store(r, std::memory_order_release);
    round.notify_all();
    run_part(0, r);
    all.push_back(static_cast<double>(*std::max_element(end.begin(), end.end()) -
                                      *std::min_element(start.begin(), start.end())));
  }
  for (std::thread& w : workers) w.join();
  return Summarize(one).median / Summarize(all).median;
}

}  // namespace

absl::StatusOr<double> WriteScaling(int threads, size_t entries) {
  std::vector<uint64_t> out(entries);
  auto write = [&out](size_t from, size_t to, uint64_t v) {
    for (size_t i = from; i < to; ++i) out[i] = v + i;
    if (to > from) DoNotOptimize(out[to - 1]);
  };
  write(0, entries, 0);  // faulted in and warm, as the pins' own array is
  return PartScaling(threads, entries, write, [](size_t, size_t) {});
}

absl::StatusOr<double> AtomicScaling(int threads, absl::Span<Folio* const> folios) {
  // A few sweeps, so that a part lasts about as long as a pin of it (a few times the
  // floor) and the threads' start and end, which the wall time counts, weigh alike.
  constexpr uint64_t kSweeps = 4;
  auto add = [folios](size_t from, size_t to, uint32_t /*round*/) {
    for (uint64_t sweep = 0; sweep < kSweeps; ++sweep) {
      for (size_t i = from; i < to; ++i) folios[i]->counts.fetch_add(1, std::memory_order_acquire);
    }
  };
  auto sub = [folios](size_t from, size_t to) {
    for (size_t i = from; i < to; ++i) {
      folios[i]->counts.fetch_sub(kSweeps, std::memory_order_relaxed);
    }
  };
  return PartScaling(threads, folios.size(), add, sub);
}

Floor::Floor(const std::vector<Folio*>& folios, const PassConfig& c, Pass& whole)
    : c_(c), folios_(folios) {
  if (c.output == PinOutput::kPages) {
    pages_ = whole.page_out();
    return;
  }
  const size_t per_call = c.pages_per_call < 0 ? c.pages : static_cast<size_t>(c.pages_per_call);
  for (size_t call = 0; call < c.pages; call += per_call) {
    calls_.push_back(touched_.size());
    const size_t end = std::min(c.pages, call + per_call);
    for (size_t f = call / c.folio_pages; f * c.folio_pages < end; ++f)
      touched_.push_back(folios[f]);
  }
  calls_.push_back(touched_.size());
  // The call floor's spans (folio spans only): one per folio and call, and a pass's span
  // array has room for one per page.
  if (c.output == PinOutput::kFolios) spans_ = whole.span_out().first(touched_.size());
}

namespace {

// One call of the call floor (Floor::RunCallsOnce): out of line, as a pin is.
ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<size_t> FloorCall(Folio* const* folios, size_t n,
                                                         absl::Span<FolioSpan> out) {
  if (n > out.size()) [[unlikely]]
    return absl::InvalidArgumentError("no room for folio spans");
  for (size_t i = 0; i < n; ++i) {
    folios[i]->counts.fetch_add(1, std::memory_order_acquire);
    out[i] = FolioSpan{folios[i], 0, static_cast<uint32_t>(folios[i]->nr_pages())};
  }
  return n;
}

}  // namespace

double Floor::RunCallsOnce() {
  const uint64_t t0 = NowNs();
  size_t count = 0;
  for (size_t call = 0; call + 1 < calls_.size(); ++call) {
    const absl::StatusOr<size_t> got = FloorCall(
        touched_.data() + calls_[call], calls_[call + 1] - calls_[call], spans_.subspan(count));
    if (!got.ok()) [[unlikely]]
      break;
    count += *got;
  }
  const double us = static_cast<double>(NowNs() - t0) / 1e3;
  DoNotOptimize(spans_[count - 1]);
  for (Folio* f : touched_) f->counts.fetch_sub(1, std::memory_order_relaxed);
  return us;
}

double Floor::RunOnce() {
  const RefKind kind = HasAny(c_.flags, kGupGet) ? RefKind::kGet : RefKind::kPin;
  const uint64_t t0 = NowNs();
  if (c_.output == PinOutput::kPages) {
    PageRef* out = pages_.data();
    size_t left = c_.pages;
    for (Folio* f : folios_) {
      const auto n = static_cast<uint32_t>(std::min(f->nr_pages(), left));
      for (uint32_t j = 0; j < n; ++j) *out++ = {f, j, kind};
      left -= n;
    }
    DoNotOptimize(pages_[c_.pages - 1]);
  } else {
    for (Folio* f : touched_) f->counts.fetch_add(1, std::memory_order_acquire);
  }
  const double us = static_cast<double>(NowNs() - t0) / 1e3;
  if (c_.output != PinOutput::kPages) {
    for (Folio* f : touched_) f->counts.fetch_sub(1, std::memory_order_relaxed);
  }
  return us;
}

}  // namespace hugemm::perf::pin_internal
