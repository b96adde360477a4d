// `hugemm bench pin`: the kernel's gup_test pin benchmark on hugemm's runtime, with the
// kernel's own pin of the same buffer and the physical floor of the output in the same
// run. Defaults reproduce the seed's experiment:
//   gup_test -m 16384 -r 10 -n 512 -a -w -S   (16 GiB of 2M pages, PIN, write, shared)
//
// Timed per repeat, as gup_test does: "get" pins the whole buffer in calls of -n pages,
// "put" unpins it all. The floor is the least work the output needs: writing the page
// array (one entry per 4K page), or one atomic add per folio for folio spans and DMA
// segments. The kernel beside us: io_uring fixed-buffer registration of the same buffer,
// which pins every page with pin_user_pages(FOLL_LONGTERM); register and unregister are
// timed separately.
// The pin benchmark (bench_pin.h): the runs, the floor and the kernel beside them.
#include "perf/bench_pin.h"

#include <liburing.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/runtime.h"
#include "perf/bench_util.h"
#include "perf/pin_target.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::perf {
namespace {

using Output = PinOutput;

const char* KindName(PinCall call) {
  switch (call) {
    case PinCall::kPin:
      return "PIN_FAST_BENCHMARK";
    case PinCall::kGet:
      return "GUP_FAST_BENCHMARK";
    case PinCall::kPinLongterm:
      return "PIN_LONGTERM_BENCHMARK";
  }
  return "?";
}

// --- the runs -----------------------------------------------------------------------

// What the passes below need of a config, with the size fitted to the pool.
struct Config {
  size_t size_mib;
  long pages_per_call;
  GupFlags flags;
  Output output;
  int threads;
};

// One thread's buffers for the output and a pin/unpin pass over the whole buffer.
class Pass {
 public:
  Pass(Pinner& pinner, const Buffer& buf, const Config& c) : pinner_(pinner), buf_(buf), c_(c) {
    const size_t pages = (c.size_mib << 20) / kPageSize4K;
    switch (c.output) {
      case Output::kPages:
        page_out_.resize(pages);
        break;
      case Output::kFolios:
        span_out_.resize(pages);
        break;
      case Output::kSegments:
        seg_out_.resize(pages);
        break;
    }
  }

  // Pins the buffer in calls of -n pages; returns false (with the error printed) on
  // failure, having unpinned what it took.
  absl::Status Pin() {
    const size_t total = (c_.size_mib << 20) / kPageSize4K;
    const size_t per_call = c_.pages_per_call < 0 ? total : static_cast<size_t>(c_.pages_per_call);
    count_ = 0;
    for (size_t done = 0; done < total;) {
      const size_t n = std::min(per_call, total - done);
      std::byte* va = buf_.data() + done * kPageSize4K;
      absl::StatusOr<size_t> got;
      switch (c_.output) {
        case Output::kPages:
          got = pinner_.PinPages(va, n, c_.flags, absl::MakeSpan(page_out_.data() + done, n));
          break;
        case Output::kFolios:
          got = pinner_.PinFolios(
              va, n * kPageSize4K, c_.flags,
              absl::MakeSpan(span_out_.data() + count_, span_out_.size() - count_));
          break;
        case Output::kSegments:
          got = pinner_.PinSegments(
              va, n * kPageSize4K, c_.flags, 0,
              absl::MakeSpan(seg_out_.data() + count_, seg_out_.size() - count_));
          break;
      }
      if (!got.ok()) {
        pinned_pages_ = done;
        Unpin();
        return got.status();
      }
      count_ += *got;
      done += n;
    }
    pinned_pages_ = total;
    return absl::OkStatus();
  }

  void Unpin() {
    const bool dirty = HasAny(c_.flags, kGupWrite);
    const RefKind kind = HasAny(c_.flags, kGupGet) ? RefKind::kGet : RefKind::kPin;
    switch (c_.output) {
      case Output::kPages:
        pinner_.UnpinPages(absl::MakeConstSpan(page_out_.data(), pinned_pages_), dirty);
        break;
      case Output::kFolios:
        pinner_.UnpinFolios(absl::MakeConstSpan(span_out_.data(), count_), kind, dirty);
        break;
      case Output::kSegments:
        if (pinned_pages_ > 0) {
          (void)pinner_.UnpinRange(buf_.data(), pinned_pages_ * kPageSize4K, kind, dirty);
        }
        break;
    }
    pinned_pages_ = 0;
    count_ = 0;
  }

 private:
  Pinner& pinner_;
  const Buffer& buf_;
  const Config& c_;
  std::vector<PageRef> page_out_;
  std::vector<FolioSpan> span_out_;
  std::vector<DmaSegment> seg_out_;
  size_t count_ = 0;
  size_t pinned_pages_ = 0;
};

// Pin + unpin passes on `threads` threads, each over the whole range (as gup_test -j).
class PassRunner {
 public:
  PassRunner(Pinner& pinner, const Buffer& buf, const Config& c) : c_(c) {
    for (int i = 0; i < c.threads; ++i) passes_.push_back(std::make_unique<Pass>(pinner, buf, c));
  }

  // One repeat: appends each thread's times to `t`.
  absl::Status RunOnce(PinTimes* t) {
    const int n = c_.threads;
    std::vector<double> pin_us(n), unpin_us(n);
    std::vector<absl::Status> status(n);
    std::atomic<int> ready{0};
    auto body = [&](int i) {
      ready.fetch_add(1);
      while (ready.load() < n) {
      }
      const uint64_t t0 = NowNs();
      status[i] = passes_[i]->Pin();
      const uint64_t t1 = NowNs();
      if (status[i].ok()) passes_[i]->Unpin();
      const uint64_t t2 = NowNs();
      pin_us[i] = static_cast<double>(t1 - t0) / 1e3;
      unpin_us[i] = static_cast<double>(t2 - t1) / 1e3;
    };
    std::vector<std::thread> workers;
    for (int i = 1; i < n; ++i) workers.emplace_back(body, i);
    body(0);
    for (std::thread& w : workers) w.join();
    for (int i = 0; i < n; ++i) {
      if (!status[i].ok()) return status[i];
      t->pin_us.push_back(pin_us[i]);
      t->unpin_us.push_back(unpin_us[i]);
    }
    return absl::OkStatus();
  }

 private:
  const Config& c_;
  std::vector<std::unique_ptr<Pass>> passes_;
};

// The floor of the output: the least work that produces it. `folios` are those the
// pinned range covers, from its start (a folio boundary).
class Floor {
 public:
  Floor(const std::vector<Folio*>& folios, const Config& c)
      : folios_(folios),
        c_(c),
        kind_(HasAny(c.flags, kGupGet) ? RefKind::kGet : RefKind::kPin),
        total_((c.size_mib << 20) / kPageSize4K),
        pages_(c.output == Output::kPages ? total_ : 0) {}

  double RunOnce() {
    const uint64_t t0 = NowNs();
    if (c_.output == Output::kPages) {
      // Writing the page array, as record_subpages does.
      PageRef* out = pages_.data();
      size_t left = total_;
      for (Folio* f : folios_) {
        const uint32_t n = static_cast<uint32_t>(std::min(f->nr_pages(), left));
        for (uint32_t j = 0; j < n; ++j) *out++ = {f, j, kind_};
        left -= n;
      }
      DoNotOptimize(pages_[total_ - 1]);
    } else {
      // One atomic add per folio.
      for (Folio* f : folios_) f->refcount.fetch_add(1, std::memory_order_acquire);
    }
    const double us = static_cast<double>(NowNs() - t0) / 1e3;
    if (c_.output != Output::kPages) {
      for (Folio* f : folios_) f->refcount.fetch_sub(1, std::memory_order_relaxed);
    }
    return us;
  }

 private:
  const std::vector<Folio*>& folios_;
  const Config& c_;
  RefKind kind_;
  size_t total_;
  std::vector<PageRef> pages_;
};

// The kernel pinning the same range: io_uring fixed-buffer registration.
class KernelPin {
 public:
  static absl::StatusOr<std::unique_ptr<KernelPin>> Create(const Buffer& buf, const Config& c) {
    auto k = std::unique_ptr<KernelPin>(new KernelPin());
    if (int rc = io_uring_queue_init(1, &k->ring_, 0); rc < 0) {
      return absl::UnavailableError(absl::StrCat("io_uring_queue_init: ", std::strerror(-rc)));
    }
    k->ready_ = true;
    k->bytes_ = c.size_mib << 20;
    for (size_t off = 0; off < k->bytes_; off += size_t{1} << 30) {
      k->iov_.push_back({buf.data() + off, std::min(size_t{1} << 30, k->bytes_ - off)});
    }
    return k;
  }
  ~KernelPin() {
    if (ready_) io_uring_queue_exit(&ring_);
  }

  absl::Status RunOnce(PinTimes* t) {
    const uint64_t t0 = NowNs();
    int rc = io_uring_register_buffers(&ring_, iov_.data(), static_cast<unsigned>(iov_.size()));
    const uint64_t t1 = NowNs();
    if (rc < 0) {
      return absl::UnavailableError(absl::StrCat("io_uring_register_buffers of ",
                                                 HumanBytes(bytes_), ": ", std::strerror(-rc)));
    }
    io_uring_unregister_buffers(&ring_);
    const uint64_t t2 = NowNs();
    t->pin_us.push_back(static_cast<double>(t1 - t0) / 1e3);
    t->unpin_us.push_back(static_cast<double>(t2 - t1) / 1e3);
    return absl::OkStatus();
  }

 private:
  KernelPin() = default;
  io_uring ring_;
  bool ready_ = false;
  size_t bytes_ = 0;
  std::vector<iovec> iov_;
};

// Fewer free huge pages than the run needs: the largest size that fits, and a note.
size_t FitToPool(const PinBenchConfig& c, const BufferOptions& buffer, const PinBenchHooks& hooks) {
  if (buffer.backing != BackingKind::kHugetlb && buffer.backing != BackingKind::kHugetlbfs) {
    return c.size_mib;
  }
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(Os::Default(), buffer.page_size);
  if (!pool.ok()) return c.size_mib;
  const int64_t free_pages = pool->free - pool->resv;
  const size_t want = (c.size_mib << 20) / buffer.page_size;
  if (free_pages >= static_cast<int64_t>(want) || free_pages <= 0) return c.size_mib;
  const size_t mib = static_cast<size_t>(free_pages) * (buffer.page_size >> 20);
  if (hooks.note) {
    hooks.note(absl::StrCat("only ", free_pages, " free ", PageSizeName(buffer.page_size),
                            " pages: running with ", mib, " MiB instead of ", c.size_mib, " MiB"));
  }
  return mib;
}

}  // namespace

const char* PinOutputName(PinOutput o) {
  switch (o) {
    case PinOutput::kPages:
      return "pages";
    case PinOutput::kFolios:
      return "folios";
    case PinOutput::kSegments:
      return "segments";
  }
  return "?";
}

GupFlags PinFlags(const PinBenchConfig& c) {
  const GupFlags flags = c.write ? kGupWrite : kGupNone;
  switch (c.call) {
    case PinCall::kPin:
      return flags | kGupPin;
    case PinCall::kGet:
      return flags | kGupGet;
    case PinCall::kPinLongterm:
      return flags | kGupPin | kGupLongterm;
  }
  return flags;
}

absl::Status CheckPinBenchConfig(const PinBenchConfig& c) {
  if (c.size_mib == 0) return absl::InvalidArgumentError("-m must be positive");
  if (c.repeats <= 0) return absl::InvalidArgumentError("-r must be positive");
  if (c.pages_per_call == 0 || c.pages_per_call < -1) {
    return absl::InvalidArgumentError("-n must be positive or -1");
  }
  if (c.threads <= 0 || c.threads > 64) return absl::InvalidArgumentError("-j must be 1..64");
  return ResolvePinTarget(c).status();
}

absl::StatusOr<PinBenchResult> RunPinBench(const PinBenchConfig& config,
                                           const PinBenchHooks& hooks) {
  if (absl::Status st = CheckPinBenchConfig(config); !st.ok()) return st;
  absl::StatusOr<PinTarget> target = ResolvePinTarget(config);
  if (!target.ok()) return target.status();
  // Declared before the runtime, so the file goes after the mapping of it.
  RemoveCreated remove_created(target->created);
  BufferOptions buffer = target->buffer;
  buffer.shared = config.shared;
  const Config c{.size_mib = FitToPool(config, buffer, hooks),
                 .pages_per_call = config.pages_per_call,
                 .flags = PinFlags(config),
                 .output = config.output,
                 .threads = config.threads};
  // The buffer is whole pages; the pinned range is size_mib from its start (so -m 1
  // pins half of one 2M folio, as gup_test would).
  const size_t page_size = buffer.page_size ? buffer.page_size : kPageSize2M;
  const size_t length = ((c.size_mib << 20) + page_size - 1) / page_size * page_size;

  // The benchmark's buffer goes to no device: no kernel pin on it (the kernel's own pin
  // is what compare_kernel times).
  absl::StatusOr<std::unique_ptr<Runtime>> rt =
      Runtime::Open({.refcount = config.refcount, .kernel_pins = false});
  if (!rt.ok()) return rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(length, buffer);
  if (!buf.ok()) return buf.status();
  std::vector<Folio*> folios;
  for (size_t off = 0; off < (c.size_mib << 20); off += buf->folio_size()) {
    folios.push_back((*rt)->Translate(buf->data() + off)->folio);
  }

  PinBenchResult result;
  result.size_mib = c.size_mib;
  result.folio_size = buf->folio_size();
  result.backing = buffer.backing;
  result.flags = GupFlagsName(c.flags);
  result.kind_name = KindName(config.call);
  result.floor = c.output == Output::kPages ? "write the page array" : "one atomic add per folio";

  // Every repeat runs each candidate in turn, so that a noisy neighbour slows them
  // alike; each runs once untimed first, so none pays for the cache the one before it
  // took (back-to-back repeats, as gup_test times them, are warm too).
  auto failed = [](absl::string_view what, const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat(what, st.message()));
  };
  PassRunner ours_runner((*rt)->pinner(), *buf, c);
  Floor floor_runner(folios, c);
  Pinner page_pinner((*rt)->table(), {.granularity = RefGranularity::kPage});
  std::unique_ptr<PassRunner> page_runner;
  if (config.compare_page) {
    page_runner = std::make_unique<PassRunner>(page_pinner, *buf, c);
    result.per_page.emplace();
  }
  std::unique_ptr<KernelPin> kernel_runner;
  if (config.compare_kernel) {
    absl::StatusOr<std::unique_ptr<KernelPin>> k = KernelPin::Create(*buf, c);
    if (!k.ok()) return failed("kernel comparison: ", k.status());
    kernel_runner = std::move(*k);
    result.kernel.emplace();
  }
  const uint64_t start = NowNs();
  PinTimes warmup;
  for (int r = 0; r < config.repeats; ++r) {
    for (PinTimes* t : {&warmup, &result.ours}) {
      if (absl::Status st = ours_runner.RunOnce(t); !st.ok()) return st;
    }
    floor_runner.RunOnce();
    result.floor_us.push_back(floor_runner.RunOnce());
    if (page_runner) {
      for (PinTimes* t : {&warmup, &*result.per_page}) {
        if (absl::Status st = page_runner->RunOnce(t); !st.ok()) return st;
      }
    }
    if (kernel_runner) {
      for (PinTimes* t : {&warmup, &*result.kernel}) {
        if (absl::Status st = kernel_runner->RunOnce(t); !st.ok()) {
          return failed("kernel comparison: ", st);
        }
      }
    }
    if (hooks.progress && NowNs() - start > 1000000000ull) hooks.progress(r + 1, config.repeats);
  }
  return result;
}

}  // namespace hugemm::perf
