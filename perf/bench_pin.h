// The pin benchmark: the kernel's gup_test pin benchmark on hugemm's runtime, with the
// kernel's own pin of the same buffer and the physical floor of the output timed in the
// same run. The defaults reproduce the seed's experiment:
//   gup_test -m 16384 -r 10 -n 512 -a -w -S   (16 GiB of 2M pages, PIN, write, shared)
//
// Timed per repeat, as gup_test does: "get" pins the whole buffer in calls of
// `pages_per_call` pages, "put" unpins it all. The floor is the least work the output
// needs: writing the page array (one entry per 4K page, into the pin's own array), or one
// atomic add per folio each call reaches for folio spans and DMA segments. The kernel
// beside it: io_uring fixed-buffer registration of the same buffer, which pins every page
// with pin_user_pages(FOLL_LONGTERM). With several threads, one thread over the whole range is
// timed in the same run, so that the threads' aggregate throughput has a baseline.
//
// This is a library: it runs from a config and returns the times as data; `hugemm bench
// pin` parses the flags and renders the results.
#ifndef HUGEMM_PERF_BENCH_PIN_H_
#define HUGEMM_PERF_BENCH_PIN_H_

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/backing.h"
#include "hugemm/gup.h"

namespace hugemm::perf {

// gup_test's benchmark kinds: -a (PIN_FAST), -u (GUP_FAST, plain references), -L
// (PIN_LONGTERM).
enum class PinCall { kPin, kGet, kPinLongterm };
// What a pin fills: a page array, folio spans or DMA segments.
enum class PinOutput { kPages, kFolios, kSegments };

struct PinBenchConfig {
  size_t size_mib = 16384;  // the range pinned, from the buffer's start
  int repeats = 10;
  long pages_per_call = 512;  // -1: the whole range in one call
  PinCall call = PinCall::kPin;
  bool write = true;
  bool shared = true;
  int threads = 1;        // each pins the whole range, as gup_test -j ...
  bool disjoint = false;  // ... or its own part of it, cut at folio boundaries
  BackingKind backing = BackingKind::kHugetlb;
  size_t page_size = 0;  // 0: 2M (4K for anon, a device's own alignment, a mount's size)
  // A /dev/dax device or a file in a hugetlbfs mount (gup_test -f). A file the benchmark
  // creates is removed when it ends.
  std::string file;
  RefGranularity refcount = RefGranularity::kFolio;
  PinOutput output = PinOutput::kPages;
  bool compare_kernel = false;  // time io_uring's registration of the same buffer
  bool compare_page = false;    // time one reference per 4K page too
};

// One candidate's times, one sample per thread per repeat in the order they ran, and for
// runs on threads the wall time of each repeat, from the first thread's start to the
// last thread's end.
struct PinTimes {
  std::vector<double> pin_us;
  std::vector<double> unpin_us;
  std::vector<double> wall_pin_us;
  std::vector<double> wall_unpin_us;
};

struct PinBenchResult {
  size_t size_mib = 0;    // what ran: less than asked when the pool was short
  size_t folio_size = 0;  // the buffer's folio size
  BackingKind backing = BackingKind::kHugetlb;
  std::string flags;      // the GUP flags by name, "PIN|WRITE"
  std::string kind_name;  // gup_test's name for the run, "PIN_FAST_BENCHMARK"
  PinTimes ours;
  std::vector<double> floor_us;        // one per repeat
  std::string floor;                   // what the floor does
  std::vector<double> call_floor_us;   // folio spans: the call floor, one per repeat
  std::optional<PinTimes> per_page;    // compare_page
  std::optional<PinTimes> kernel;      // compare_kernel: register / unregister
  std::optional<PinTimes> one_thread;  // threads > 1: one thread over the whole range
  // threads > 1: the same number of threads running a compute loop that touches no
  // memory, against one thread running it alone, in the same run: the scaling the
  // machine gives threads at all (below the thread count when other work holds cores).
  std::optional<double> cpu_scaling;
  // threads > 1: the same threads each writing its part of an array as large as the page
  // array at once, against one thread writing it all: the scaling the memory gives the
  // page array's own writes.
  std::optional<double> write_scaling;
  // threads > 1: the same threads each making one atomic add per folio on its own folios
  // at once (the floor of folio spans), against one thread on all of them: the scaling
  // the machine gives the pins' locked instructions.
  std::optional<double> atomic_scaling;
};

// Aggregate throughput of the threads against one thread, in one run: pages pinned per
// second by all of them (their wall time) over one thread's pages per second.
struct PinScaling {
  double pin = 0;  // medians
  double unpin = 0;
  // The fastest repeat of each: what the threads reach when the machine gives them their
  // cores at once for a whole repeat.
  double best_pin = 0;
  double best_unpin = 0;
};
PinScaling ThreadScaling(const PinBenchConfig& config, const PinBenchResult& result);

// What a run tells while it runs (either may be empty).
struct PinBenchHooks {
  std::function<void(const std::string& note)> note;  // e.g. a size cut to the free pool
  std::function<void(int done, int repeats)> progress;
};

const char* PinOutputName(PinOutput output);
// The MiB a run of `size_mib` gets from a pool with `free_pages` free pages of
// `page_size`: `size_mib` when they hold the whole pages it needs (a partial last page
// takes a whole one) or none is free (the mapping then says why it failed), else what
// they hold.
size_t PinSizeThatFits(size_t size_mib, size_t page_size, int64_t free_pages);
// The GUP flags a config pins with.
GupFlags PinFlags(const PinBenchConfig& config);

// InvalidArgument, naming the flag (gup_test's letter) and the value, when the config
// cannot run: a count out of range, or a file that is neither a device nor in a
// hugetlbfs mount, or whose mount's page size is not the one asked for, or a backing
// other than the one the file is (devdax without a file), or a page size the backing
// never has (4K of hugetlb, huge pages of anon).
absl::Status CheckPinBenchConfig(const PinBenchConfig& config);

// Runs the benchmark: CheckPinBenchConfig's errors, or what mapping or pinning the
// buffer returned.
absl::StatusOr<PinBenchResult> RunPinBench(const PinBenchConfig& config,
                                           const PinBenchHooks& hooks = {});

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_PIN_H_
