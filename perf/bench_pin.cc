// The pin benchmark (bench_pin.h): the run of its candidates in turn, the kernel's pin of
// the same buffer (io_uring fixed-buffer registration, which pins every page with
// pin_user_pages(FOLL_LONGTERM); register and unregister timed separately), and the
// buffer fitted to the free huge pages. The timed passes and the floor are pin_passes.h.
#include "perf/bench_pin.h"

#include <liburing.h>
#include <sys/resource.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/runtime.h"
#include "perf/bench_util.h"
#include "perf/pin_passes.h"
#include "perf/pin_target.h"
#include "runtime/sys/files.h"
#include "runtime/sys/hugepages.h"
#include "runtime/util/format.h"

namespace hugemm::perf {
namespace {

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

// The kernel pinning the same range: io_uring fixed-buffer registration.
class KernelPin {
 public:
  static absl::StatusOr<std::unique_ptr<KernelPin>> Create(const Buffer& buf, size_t size_mib) {
    auto k = std::unique_ptr<KernelPin>(new KernelPin());
    if (int rc = io_uring_queue_init(1, &k->ring_, 0); rc < 0) {
      return absl::UnavailableError(absl::StrCat("io_uring_queue_init: ", std::strerror(-rc)));
    }
    k->ready_ = true;
    k->bytes_ = size_mib << 20;
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
                                                 HumanBytes(bytes_), ": ", std::strerror(-rc),
                                                 rc == -ENOMEM ? MemlockHint() : ""));
    }
    io_uring_unregister_buffers(&ring_);
    const uint64_t t2 = NowNs();
    t->pin_us.push_back(static_cast<double>(t1 - t0) / 1e3);
    t->unpin_us.push_back(static_cast<double>(t2 - t1) / 1e3);
    return absl::OkStatus();
  }

 private:
  KernelPin() = default;
  // Without CAP_IPC_LOCK the kernel counts the registered bytes against RLIMIT_MEMLOCK.
  std::string MemlockHint() const {
    rlimit lim{};
    if (::getrlimit(RLIMIT_MEMLOCK, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return "";
    return absl::StrCat("; RLIMIT_MEMLOCK (", HumanBytes(lim.rlim_cur), ") is too low to pin ",
                        HumanBytes(bytes_),
                        ": raise it (ulimit -l) or grant CAP_IPC_LOCK, or compare a smaller "
                        "buffer (-m)");
  }
  io_uring ring_;
  bool ready_ = false;
  size_t bytes_ = 0;
  std::vector<iovec> iov_;
};

// MemAvailable in /proc/meminfo, in MiB; 0 when it cannot be read.
size_t AvailableMib() {
  absl::StatusOr<uint64_t> bytes =
      sys::ReadKibField(Os::Default(), "/proc/meminfo", "MemAvailable");
  return bytes.ok() ? *bytes >> 20 : 0;
}

// Fewer free huge pages than the run needs: the largest size that fits, and a note. 4K
// anonymous memory is the system's own: at most half of what is available, so that the
// run (gup_test's default is 16 GiB) does not end in the OOM killer.
size_t FitToPool(const PinBenchConfig& c, const BufferOptions& buffer, const PinBenchHooks& hooks) {
  if (buffer.backing == BackingKind::kAnon) {
    const size_t half = AvailableMib() / 2;
    if (half == 0 || c.size_mib <= half) return c.size_mib;
    if (hooks.note) {
      hooks.note(absl::StrCat("only ", half * 2, " MiB of memory available: running with ", half,
                              " MiB of 4K pages instead of ", c.size_mib, " MiB"));
    }
    return half;
  }
  if (buffer.backing != BackingKind::kHugetlb && buffer.backing != BackingKind::kHugetlbfs) {
    return c.size_mib;
  }
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(Os::Default(), buffer.page_size);
  if (!pool.ok()) return c.size_mib;
  const int64_t free_pages = pool->free - pool->resv;
  const size_t mib = PinSizeThatFits(c.size_mib, buffer.page_size, free_pages);
  if (mib == c.size_mib) return mib;
  if (hooks.note) {
    hooks.note(absl::StrCat("only ", free_pages, " free ", PageSizeName(buffer.page_size),
                            " pages: running with ", mib, " MiB instead of ", c.size_mib, " MiB"));
  }
  return mib;
}

}  // namespace

size_t PinSizeThatFits(size_t size_mib, size_t page_size, int64_t free_pages) {
  const size_t want = ((size_mib << 20) + page_size - 1) / page_size;
  if (free_pages <= 0 || static_cast<uint64_t>(free_pages) >= want) return size_mib;
  return static_cast<size_t>(free_pages) * (page_size >> 20);
}

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

namespace {

// --disjoint gives each thread whole folios of its own: a thread with none would time
// nothing, and its zero would go into the medians as if it had pinned. `page_size` 0: not
// known yet (a device's alignment), nothing to check.
absl::Status CheckDisjoint(const PinBenchConfig& c, size_t page_size, size_t size_mib) {
  if (!c.disjoint || c.threads <= 1 || page_size == 0) return absl::OkStatus();
  const size_t folios = ((size_mib << 20) + page_size - 1) / page_size;
  if (folios >= static_cast<size_t>(c.threads)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      Format("-j %d --disjoint: %d MiB is %d folio(s) of %s, fewer than the threads; each thread "
             "pins whole folios of its own (-m %d at least)",
             c.threads, size_mib, folios, PageSizeName(page_size),
             std::max<size_t>(1, page_size >> 20) * c.threads));
}

}  // namespace

absl::Status CheckPinBenchConfig(const PinBenchConfig& c) {
  if (c.size_mib == 0) return absl::InvalidArgumentError("-m must be positive");
  if (c.repeats <= 0) return absl::InvalidArgumentError("-r must be positive");
  if (c.pages_per_call == 0 || c.pages_per_call < -1) {
    return absl::InvalidArgumentError("-n must be positive or -1");
  }
  if (c.threads <= 0 || c.threads > 64) return absl::InvalidArgumentError("-j must be 1..64");
  absl::StatusOr<PinTarget> target = ResolvePinTarget(c);
  if (!target.ok()) return target.status();
  if (absl::Status st = CheckDisjoint(c, target->buffer.page_size, c.size_mib); !st.ok()) {
    return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<PinBenchResult> RunPinBench(const PinBenchConfig& config,
                                           const PinBenchHooks& hooks) {
  using pin_internal::Floor;
  using pin_internal::PassConfig;
  using pin_internal::PassRunner;
  if (absl::Status st = CheckPinBenchConfig(config); !st.ok()) return st;
  absl::StatusOr<PinTarget> target = ResolvePinTarget(config);
  if (!target.ok()) return target.status();
  // Declared before the runtime, so the file goes after the mapping of it.
  RemoveCreated remove_created(target->created);
  BufferOptions buffer = target->buffer;
  buffer.shared = config.shared;
  const size_t size_mib = FitToPool(config, buffer, hooks);
  // The buffer is whole pages; the pinned range is size_mib from its start (so -m 1
  // pins half of one 2M folio, as gup_test would).
  const size_t page_size = buffer.page_size ? buffer.page_size : kPageSize2M;
  const size_t length = ((size_mib << 20) + page_size - 1) / page_size * page_size;

  // The benchmark's buffer goes to no device: no kernel pin on it (the kernel's own pin
  // is what compare_kernel times).
  absl::StatusOr<std::unique_ptr<Runtime>> rt =
      Runtime::Open({.refcount = config.refcount, .kernel_pins = false});
  if (!rt.ok()) return rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(length, buffer);
  if (!buf.ok()) return buf.status();
  std::vector<Folio*> folios;
  for (size_t off = 0; off < (size_mib << 20); off += buf->folio_size()) {
    folios.push_back((*rt)->Translate(buf->data() + off)->folio);
  }
  // Again with the size that runs (fewer huge pages free than -m asks for: a failure to
  // run, not a usage error) and the device's alignment.
  if (absl::Status st = CheckDisjoint(config, buf->folio_size(), size_mib); !st.ok()) {
    return absl::FailedPreconditionError(st.message());
  }
  const PassConfig c{.base = buf->data(),
                     .pages = (size_mib << 20) / kPageSize4K,
                     .folio_pages = buf->folio_size() / kPageSize4K,
                     .pages_per_call = config.pages_per_call,
                     .flags = PinFlags(config),
                     .output = config.output};

  PinBenchResult result;
  result.size_mib = size_mib;
  result.folio_size = buf->folio_size();
  result.backing = buffer.backing;
  result.flags = GupFlagsName(c.flags);
  result.kind_name = KindName(config.call);
  result.floor = c.output == PinOutput::kPages ? "write the page array"
                                               : "one atomic add per folio each call reaches";

  // Every repeat runs each candidate in turn, so that a noisy neighbour slows them
  // alike; each runs once untimed first, so none pays for the cache the one before it
  // took (back-to-back repeats, as gup_test times them, are warm too).
  auto failed = [](absl::string_view what, const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat(what, st.message()));
  };
  PassRunner ours_runner((*rt)->pinner(), c, config.threads, config.disjoint);
  std::unique_ptr<PassRunner> one_runner;
  if (config.threads > 1) {
    one_runner = std::make_unique<PassRunner>((*rt)->pinner(), c, 1, false);
    result.one_thread.emplace();
  }
  // The floor writes the arrays of the pass over the whole range (one thread's).
  Floor floor_runner(folios, c, one_runner ? one_runner->pass(0) : ours_runner.pass(0));
  Pinner page_pinner((*rt)->table(), {.granularity = RefGranularity::kPage});
  std::unique_ptr<PassRunner> page_runner;
  if (config.compare_page) {
    page_runner = std::make_unique<PassRunner>(page_pinner, c, config.threads, config.disjoint);
    result.per_page.emplace();
  }
  std::unique_ptr<KernelPin> kernel_runner;
  if (config.compare_kernel) {
    absl::StatusOr<std::unique_ptr<KernelPin>> k = KernelPin::Create(*buf, size_mib);
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
    if (one_runner) {
      for (PinTimes* t : {&warmup, &*result.one_thread}) {
        if (absl::Status st = one_runner->RunOnce(t); !st.ok()) return st;
      }
    }
    floor_runner.RunOnce();
    result.floor_us.push_back(floor_runner.RunOnce());
    if (c.output == PinOutput::kFolios) {
      floor_runner.RunCallsOnce();
      result.call_floor_us.push_back(floor_runner.RunCallsOnce());
    }
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
  if (config.threads > 1) {
    absl::StatusOr<double> cpu = pin_internal::CpuScaling(config.threads);
    if (!cpu.ok()) return cpu.status();
    absl::StatusOr<double> write = pin_internal::WriteScaling(config.threads, c.pages);
    if (!write.ok()) return write.status();
    absl::StatusOr<double> atomic = pin_internal::AtomicScaling(config.threads, folios);
    if (!atomic.ok()) return atomic.status();
    result.cpu_scaling = *cpu;
    result.write_scaling = *write;
    result.atomic_scaling = *atomic;
  }
  return result;
}

PinScaling ThreadScaling(const PinBenchConfig& config, const PinBenchResult& r) {
  PinScaling s;
  if (!r.one_thread || r.ours.wall_pin_us.empty()) return s;
  // Work per repeat: the whole range once (disjoint parts) or once per thread.
  const double work = config.disjoint ? 1.0 : static_cast<double>(config.threads);
  s.pin = work * Summarize(r.one_thread->pin_us).median / Summarize(r.ours.wall_pin_us).median;
  s.unpin =
      work * Summarize(r.one_thread->unpin_us).median / Summarize(r.ours.wall_unpin_us).median;
  s.best_pin = work * Summarize(r.one_thread->pin_us).min / Summarize(r.ours.wall_pin_us).min;
  s.best_unpin = work * Summarize(r.one_thread->unpin_us).min / Summarize(r.ours.wall_unpin_us).min;
  return s;
}

}  // namespace hugemm::perf
