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
#include <liburing.h>
#include <sys/uio.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "hugemm/runtime.h"
#include "perf/bench_util.h"
#include "runtime/cli/command.h"
#include "runtime/sys/hugepages.h"
#include "runtime/util/json.h"

namespace hugemm::perf {
namespace {

enum class Output { kPages, kFolios, kSegments };

const char* OutputName(Output o) {
  switch (o) {
    case Output::kPages:
      return "pages";
    case Output::kFolios:
      return "folios";
    case Output::kSegments:
      return "segments";
  }
  return "?";
}

struct Config {
  size_t size_mib = 16384;
  int repeats = 10;
  long pages_per_call = 512;  // -1: the whole buffer in one call
  GupFlags flags = kGupPin | kGupWrite;
  bool shared = true;
  int threads = 1;
  BufferOptions buffer;
  std::string file;
  RefGranularity refcount = RefGranularity::kFolio;
  Output output = Output::kPages;
  bool compare_kernel = false;
  bool compare_page = false;
  bool json = false;
  std::string command;
};

const char* BenchName(GupFlags flags) {
  if (HasAny(flags, kGupGet)) return "GUP_FAST_BENCHMARK";
  if (HasAny(flags, kGupLongterm)) return "PIN_LONGTERM_BENCHMARK";
  return "PIN_FAST_BENCHMARK";
}

// --- parsing ----------------------------------------------------------------------

int Usage(const std::string& why) {
  std::fprintf(stderr,
               "hugemm bench pin: %s\n"
               "usage: hugemm bench pin [gup_test flags] [hugemm flags]\n"
               "  -m MiB         buffer size (16384)\n"
               "  -r N           repeats (10)\n"
               "  -n N           pages per call, -1 = all (512)\n"
               "  -a | -u | -L   PIN (default) | GET | PIN LONGTERM\n"
               "  -w | -W        write (default) | read-only\n"
               "  -S             shared mapping (default); -P private\n"
               "  -H             hugetlb (default)\n"
               "  -f FILE        a /dev/dax device or a file in a hugetlbfs mount\n"
               "  -j N           threads, each pinning the whole buffer (1)\n"
               "  --backing=hugetlb|hugetlbfs|devdax|anon   --page-size=4K|2M|1G\n"
               "  --refcount=folio|page   --output=pages|folios|segments\n"
               "  --compare=kernel[,page]   --json\n",
               why.c_str());
  return 2;
}

bool ParseInt(const std::string& s, long* out) { return absl::SimpleAtoi(s, out); }

// Returns 0 and fills `c`, or the exit code of a usage error.
int Parse(const cli::Args& args, Config* c) {
  c->command = "hugemm bench pin";
  for (const std::string& a : args) absl::StrAppend(&c->command, " ", a);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = args[++i];
      return true;
    };
    std::string v;
    long n = 0;
    if (a == "-m" || a == "-r" || a == "-n" || a == "-j") {
      if (!value(&v) || !ParseInt(v, &n)) return Usage(a + " needs a number");
      if (a == "-m") {
        if (n <= 0) return Usage("-m must be positive");
        c->size_mib = static_cast<size_t>(n);
      } else if (a == "-r") {
        if (n <= 0) return Usage("-r must be positive");
        c->repeats = static_cast<int>(n);
      } else if (a == "-n") {
        if (n == 0 || n < -1) return Usage("-n must be positive or -1");
        c->pages_per_call = n;
      } else {
        if (n <= 0 || n > 64) return Usage("-j must be 1..64");
        c->threads = static_cast<int>(n);
      }
    } else if (a == "-a") {
      c->flags = (c->flags & ~(kGupGet | kGupLongterm)) | kGupPin;
    } else if (a == "-u") {
      c->flags = (c->flags & ~(kGupPin | kGupLongterm)) | kGupGet;
    } else if (a == "-L") {
      c->flags = (c->flags & ~kGupGet) | kGupPin | kGupLongterm;
    } else if (a == "-w") {
      c->flags |= kGupWrite;
    } else if (a == "-W") {
      c->flags &= ~kGupWrite;
    } else if (a == "-S") {
      c->shared = true;
    } else if (a == "-P") {
      c->shared = false;
    } else if (a == "-H") {
      c->buffer.backing = BackingKind::kHugetlb;
    } else if (a == "-f") {
      if (!value(&c->file)) return Usage("-f needs a file");
    } else if (a == "--json") {
      c->json = true;
    } else if (a.rfind("--backing=", 0) == 0) {
      absl::StatusOr<BackingKind> k = ParseBackingKind(a.substr(10));
      if (!k.ok()) return Usage(std::string(k.status().message()));
      c->buffer.backing = *k;
    } else if (a.rfind("--page-size=", 0) == 0) {
      absl::StatusOr<size_t> ps = ParsePageSize(a.substr(12));
      if (!ps.ok()) return Usage(std::string(ps.status().message()));
      c->buffer.page_size = *ps;
    } else if (a == "--refcount=folio") {
      c->refcount = RefGranularity::kFolio;
    } else if (a == "--refcount=page") {
      c->refcount = RefGranularity::kPage;
    } else if (a.rfind("--output=", 0) == 0) {
      const std::string o = a.substr(9);
      if (o == "pages") {
        c->output = Output::kPages;
      } else if (o == "folios") {
        c->output = Output::kFolios;
      } else if (o == "segments") {
        c->output = Output::kSegments;
      } else {
        return Usage("--output must be pages, folios or segments");
      }
    } else if (a.rfind("--compare=", 0) == 0) {
      for (absl::string_view w : absl::StrSplit(a.substr(10), ',')) {
        if (w == "kernel") {
          c->compare_kernel = true;
        } else if (w == "page") {
          c->compare_page = true;
        } else {
          return Usage("--compare takes kernel and/or page");
        }
      }
    } else {
      return Usage("unknown argument \"" + a + "\"");
    }
  }
  if (!c->file.empty()) {
    if (c->file.rfind("/dev/dax", 0) == 0) {
      c->buffer.backing = BackingKind::kDevDax;
      c->buffer.devdax_path = c->file;
    } else {
      const size_t slash = c->file.rfind('/');
      if (slash == std::string::npos) return Usage("-f needs a path in a hugetlbfs mount");
      c->buffer.backing = BackingKind::kHugetlbfs;
      c->buffer.hugetlbfs_mount = c->file.substr(0, slash);
      c->buffer.file_name = c->file.substr(slash + 1);
    }
  }
  if (c->buffer.backing == BackingKind::kAnon) c->buffer.page_size = kPageSize4K;
  if (c->buffer.backing != BackingKind::kDevDax && c->buffer.page_size == 0) {
    c->buffer.page_size = c->buffer.backing == BackingKind::kAnon ? kPageSize4K : kPageSize2M;
  }
  c->buffer.shared = c->shared;
  return 0;
}

// --- the runs -----------------------------------------------------------------------

struct Times {
  std::vector<double> pin_us, unpin_us;
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
  PassRunner(Pinner& pinner, const Buffer& buf, const Config& c, const char* label)
      : c_(c), label_(label) {
    for (int i = 0; i < c.threads; ++i) passes_.push_back(std::make_unique<Pass>(pinner, buf, c));
  }

  // One repeat: appends each thread's times to `t`.
  absl::Status RunOnce(Times* t, bool print) {
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
      if (print) {
        std::printf("%s: Time: get:%.0f put:%.0f us%s\n", BenchName(c_.flags), pin_us[i],
                    unpin_us[i], label_);
      }
    }
    return absl::OkStatus();
  }

 private:
  const Config& c_;
  const char* label_;
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

  absl::Status RunOnce(Times* t) {
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

Json SummaryJson(const std::vector<double>& us) {
  const Summary s = Summarize(us);
  Json j = Json::MakeObject();
  j.Set("min", s.min);
  j.Set("median", s.median);
  return j;
}

// Fewer free huge pages than the run needs: use the largest size that fits, and say so.
void FitToPool(Config* c) {
  if (c->buffer.backing != BackingKind::kHugetlb && c->buffer.backing != BackingKind::kHugetlbfs) {
    return;
  }
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(c->buffer.page_size);
  if (!pool.ok()) return;
  const int64_t free_pages = pool->free - pool->resv;
  const size_t want = (c->size_mib << 20) / c->buffer.page_size;
  if (free_pages >= static_cast<int64_t>(want) || free_pages <= 0) return;
  const size_t mib = static_cast<size_t>(free_pages) * (c->buffer.page_size >> 20);
  std::fprintf(stderr,
               "hugemm bench pin: only %lld free %s pages: running with %zu MiB instead of "
               "%zu MiB\n",
               static_cast<long long>(free_pages), PageSizeName(c->buffer.page_size).c_str(), mib,
               c->size_mib);
  c->size_mib = mib;
}

int RunPin(const cli::Args& args) {
  Config c;
  if (int rc = Parse(args, &c)) return rc;
  FitToPool(&c);
  // The buffer is whole pages; the pinned range is -m MiB from its start (so -m 1 pins
  // half of one 2M folio, as gup_test would).
  const size_t page_size = c.buffer.page_size ? c.buffer.page_size : kPageSize2M;
  const size_t length = ((c.size_mib << 20) + page_size - 1) / page_size * page_size;

  // The benchmark's buffer goes to no device: no kernel pin on it (the kernel's own pin
  // is what --compare=kernel times).
  absl::StatusOr<std::unique_ptr<Runtime>> rt =
      Runtime::Open({.refcount = c.refcount, .kernel_pins = false});
  if (!rt.ok()) {
    std::fprintf(stderr, "hugemm bench pin: %s\n", std::string(rt.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(length, c.buffer);
  if (!buf.ok()) {
    std::fprintf(stderr, "hugemm bench pin: %s\n", std::string(buf.status().message()).c_str());
    return 1;
  }
  std::vector<Folio*> folios;
  for (size_t off = 0; off < (c.size_mib << 20); off += buf->folio_size()) {
    folios.push_back((*rt)->Translate(buf->data() + off)->folio);
  }
  const std::string page = PageSizeName(buf->folio_size());
  if (!c.json) {
    std::printf(
        "%s\n%s of %s pages (%s), %s, %s, %ld pages per call, %d repeat(s), %d thread(s), "
        "refcount per %s, output %s\n",
        c.command.c_str(), HumanBytes(c.size_mib << 20).c_str(), page.c_str(),
        std::string(BackingKindName(c.buffer.backing)).c_str(), GupFlagsName(c.flags).c_str(),
        c.shared ? "shared" : "private", c.pages_per_call, c.repeats, c.threads,
        c.refcount == RefGranularity::kFolio ? "folio" : "4K page", OutputName(c.output));
  }

  // Every repeat runs each candidate in turn, so that a noisy neighbour slows them
  // alike; each runs once untimed first, so none pays for the cache the one before it
  // took (back-to-back repeats, as gup_test times them, are warm too).
  auto fail = [](absl::string_view what, const absl::Status& st) {
    std::fprintf(stderr, "hugemm bench pin: %s%s\n", std::string(what).c_str(),
                 std::string(st.message()).c_str());
    return 1;
  };
  PassRunner ours_runner((*rt)->pinner(), *buf, c, "");
  Floor floor_runner(folios, c);
  Pinner page_pinner((*rt)->table(), {.granularity = RefGranularity::kPage});
  std::unique_ptr<PassRunner> page_runner;
  if (c.compare_page) {
    page_runner = std::make_unique<PassRunner>(page_pinner, *buf, c, " (refcount per 4K page)");
  }
  std::unique_ptr<KernelPin> kernel_runner;
  if (c.compare_kernel) {
    absl::StatusOr<std::unique_ptr<KernelPin>> k = KernelPin::Create(*buf, c);
    if (!k.ok()) return fail("kernel comparison: ", k.status());
    kernel_runner = std::move(*k);
  }
  Times ours_t, page_t, kernel_t;
  std::vector<double> floor_us;
  const uint64_t start = NowNs();
  Times warmup;
  for (int r = 0; r < c.repeats; ++r) {
    for (Times* t : {&warmup, &ours_t}) {
      if (absl::Status st = ours_runner.RunOnce(t, !c.json && t == &ours_t); !st.ok()) {
        return fail("", st);
      }
    }
    floor_runner.RunOnce();
    floor_us.push_back(floor_runner.RunOnce());
    if (page_runner) {
      for (Times* t : {&warmup, &page_t}) {
        if (absl::Status st = page_runner->RunOnce(t, !c.json && t == &page_t); !st.ok()) {
          return fail("", st);
        }
      }
    }
    if (kernel_runner) {
      for (Times* t : {&warmup, &kernel_t}) {
        if (absl::Status st = kernel_runner->RunOnce(t); !st.ok()) {
          return fail("kernel comparison: ", st);
        }
      }
    }
    if (NowNs() - start > 1000000000ull) {
      std::fprintf(stderr, "\r  hugemm bench pin: repeat %d/%d", r + 1, c.repeats);
      if (r + 1 == c.repeats) std::fprintf(stderr, "\n");
    }
  }
  const Times* ours = &ours_t;
  const Times* per_page = c.compare_page ? &page_t : nullptr;
  const Times* kernel = c.compare_kernel ? &kernel_t : nullptr;

  const Summary pin = Summarize(ours->pin_us), unpin = Summarize(ours->unpin_us);
  const Summary floor = Summarize(floor_us);
  if (c.json) {
    Json out = Json::MakeObject();
    out.Set("command", c.command);
    out.Set("size_mib", c.size_mib);
    out.Set("page_size", page);
    out.Set("backing", BackingKindName(c.buffer.backing));
    out.Set("refcount", c.refcount == RefGranularity::kFolio ? "folio" : "page");
    out.Set("output", OutputName(c.output));
    out.Set("flags", GupFlagsName(c.flags));
    out.Set("pages_per_call", c.pages_per_call);
    out.Set("threads", c.threads);
    out.Set("repeats", c.repeats);
    out.Set("pin_us", SummaryJson(ours->pin_us));
    out.Set("unpin_us", SummaryJson(ours->unpin_us));
    out.Set("floor_us", floor.median);
    out.Set("floor",
            c.output == Output::kPages ? "write the page array" : "one atomic add per folio");
    out.Set("pin_over_floor", pin.median / floor.median);
    if (per_page != nullptr) {
      out.Set("per_page_pin_us", SummaryJson(per_page->pin_us));
      out.Set("per_page_unpin_us", SummaryJson(per_page->unpin_us));
      out.Set("per_page_over_per_folio", Summarize(per_page->pin_us).median / pin.median);
    }
    if (kernel != nullptr) {
      out.Set("kernel", "io_uring fixed-buffer registration (pin_user_pages, FOLL_LONGTERM)");
      out.Set("kernel_pin_us", SummaryJson(kernel->pin_us));
      out.Set("kernel_unpin_us", SummaryJson(kernel->unpin_us));
      out.Set("kernel_pin_over_pin", Summarize(kernel->pin_us).median / pin.median);
      out.Set("kernel_unpin_over_unpin", Summarize(kernel->unpin_us).median / unpin.median);
    }
    std::printf("%s\n", out.Dump().c_str());
    return 0;
  }
  std::printf("\nmedian of %d: pin %.0f us, unpin %.0f us (min %.0f / %.0f)\n", c.repeats,
              pin.median, unpin.median, pin.min, unpin.min);
  std::printf("floor (%s): %.0f us; pin / floor = %.2fx\n",
              c.output == Output::kPages ? "write the page array" : "one atomic add per folio",
              floor.median, pin.median / floor.median);
  if (per_page != nullptr) {
    const double pp = Summarize(per_page->pin_us).median;
    std::printf("refcount per 4K page: pin %.0f us, unpin %.0f us; per page / per folio = %.1fx\n",
                pp, Summarize(per_page->unpin_us).median, pp / pin.median);
  }
  if (kernel != nullptr) {
    const double kp = Summarize(kernel->pin_us).median, ku = Summarize(kernel->unpin_us).median;
    std::printf(
        "kernel, io_uring fixed-buffer registration (FOLL_LONGTERM) of the same buffer: "
        "register %.0f us, unregister %.0f us; kernel / hugemm = %.1fx pin, %.1fx unpin\n",
        kp, ku, kp / pin.median, ku / unpin.median);
  }
  return 0;
}

}  // namespace

HUGEMM_REGISTER_BENCH("pin",
                      "gup_test's pin benchmark on hugemm, beside the kernel's pin and the floor",
                      RunPin);

}  // namespace hugemm::perf
