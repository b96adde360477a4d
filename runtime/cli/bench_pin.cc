// `hugemm bench pin`: gup_test's flags (-m -r -n -a -u -L -w -W -S -P -H -f -j) and
// hugemm's own, the run (perf/bench_pin.h), and its results as gup_test's lines and a
// summary, or as JSON (keys in doc/benchmarks.md).
#include "perf/bench_pin.h"

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "hugemm/runtime.h"
#include "perf/bench_util.h"
#include "runtime/cli/command.h"
#include "runtime/cli/remove_on_signal.h"
#include "runtime/util/format.h"

namespace hugemm::cli {
namespace {

using perf::PinBenchConfig;
using perf::PinBenchResult;
using perf::PinTimes;
using perf::Summarize;
using perf::Summary;

struct PinFlags {
  PinBenchConfig config;
  bool get = false, longterm = false;  // -u, -L (-a is the default)
  bool read_only = false;              // -W
  bool private_mapping = false;        // -P
  std::vector<std::string> compare;
  bool json = false;
};

Json SummaryJson(const std::vector<double>& us) {
  const Summary s = Summarize(us);
  return {{"min", s.min}, {"median", s.median}};
}

// The pin that the whole-range baselines (the floor, the call floor, the kernel's pin)
// are set against: one thread over the whole range. With -j N each thread's own sample
// covers its part (--disjoint) or contends with the others, so there it is the one-thread
// run timed in the same repeats.
const PinTimes& WholeRange(const PinBenchResult& r) {
  return r.one_thread ? *r.one_thread : r.ours;
}

void PrintJsonResult(const PinBenchConfig& c, const PinBenchResult& r) {
  const Summary pin = Summarize(WholeRange(r).pin_us), unpin = Summarize(WholeRange(r).unpin_us);
  const double floor = Summarize(r.floor_us).median;
  Json out = {{"command", CommandLine()},
              {"size_mib", r.size_mib},
              {"page_size", PageSizeName(r.folio_size)},
              {"backing", BackingKindName(r.backing)},
              {"refcount", c.refcount == RefGranularity::kFolio ? "folio" : "page"},
              {"output", perf::PinOutputName(c.output)},
              {"flags", r.flags},
              {"pages_per_call", c.pages_per_call},
              {"threads", c.threads},
              {"disjoint", c.disjoint},
              {"repeats", c.repeats},
              {"pin_us", SummaryJson(r.ours.pin_us)},
              {"unpin_us", SummaryJson(r.ours.unpin_us)},
              {"floor_us", floor},
              {"floor", r.floor},
              {"pin_over_floor", pin.median / floor}};
  if (!r.call_floor_us.empty()) {
    const double call_floor = Summarize(r.call_floor_us).median;
    out["call_floor_us"] = call_floor;
    out["call_floor_over_floor"] = call_floor / floor;
    out["pin_over_call_floor"] = pin.median / call_floor;
  }
  if (r.per_page) {
    out["per_page_pin_us"] = SummaryJson(r.per_page->pin_us);
    out["per_page_unpin_us"] = SummaryJson(r.per_page->unpin_us);
    out["per_page_over_per_folio"] =
        Summarize(r.per_page->pin_us).median / Summarize(r.ours.pin_us).median;
  }
  if (r.kernel) {
    out["kernel"] = "io_uring fixed-buffer registration (pin_user_pages, FOLL_LONGTERM)";
    out["kernel_pin_us"] = SummaryJson(r.kernel->pin_us);
    out["kernel_unpin_us"] = SummaryJson(r.kernel->unpin_us);
    out["kernel_pin_over_pin"] = Summarize(r.kernel->pin_us).median / pin.median;
    out["kernel_unpin_over_unpin"] = Summarize(r.kernel->unpin_us).median / unpin.median;
  }
  if (r.one_thread) {
    const perf::PinScaling s = perf::ThreadScaling(c, r);
    out["wall_pin_us"] = SummaryJson(r.ours.wall_pin_us);
    out["wall_unpin_us"] = SummaryJson(r.ours.wall_unpin_us);
    out["one_thread_pin_us"] = SummaryJson(r.one_thread->pin_us);
    out["one_thread_unpin_us"] = SummaryJson(r.one_thread->unpin_us);
    out["threads_over_one_pin"] = s.pin;
    out["threads_over_one_unpin"] = s.unpin;
    out["threads_over_one_pin_best"] = s.best_pin;
    out["threads_over_one_unpin_best"] = s.best_unpin;
    out["cpu_scaling"] = r.cpu_scaling.value_or(0);
    out["write_scaling"] = r.write_scaling.value_or(0);
    out["atomic_scaling"] = r.atomic_scaling.value_or(0);
  }
  PrintJson(out);
}

// Microseconds as text: whole ones, or two decimals below ten (a 1G folio pins in less
// than one).
std::string Us(double us) { return us < 10 ? Format("%.2f", us) : Format("%.0f", us); }

void PrintTextResult(const PinBenchConfig& c, const PinBenchResult& r) {
  std::printf(
      "%s\n%s of %s pages (%s), %s, %s, %ld pages per call, %d repeat(s), %d thread(s), "
      "refcount per %s, output %s\n",
      CommandLine().c_str(), HumanBytes(r.size_mib << 20).c_str(),
      PageSizeName(r.folio_size).c_str(), std::string(BackingKindName(r.backing)).c_str(),
      r.flags.c_str(), c.shared ? "shared" : "private", c.pages_per_call, c.repeats, c.threads,
      c.refcount == RefGranularity::kFolio ? "folio" : "4K page", perf::PinOutputName(c.output));
  // gup_test's line per repeat and thread, in the order they ran.
  const size_t per_repeat = static_cast<size_t>(c.threads);
  for (size_t rep = 0; rep < static_cast<size_t>(c.repeats); ++rep) {
    for (const auto& [times, label] :
         {std::pair{&r.ours, ""},
          std::pair{r.per_page ? &*r.per_page : nullptr, " (refcount per 4K page)"}}) {
      if (times == nullptr) continue;
      for (size_t i = rep * per_repeat; i < (rep + 1) * per_repeat; ++i) {
        std::printf("%s: Time: get:%.0f put:%.0f us%s\n", r.kind_name.c_str(), times->pin_us[i],
                    times->unpin_us[i], label);
      }
    }
  }
  const Summary pin = Summarize(r.ours.pin_us), unpin = Summarize(r.ours.unpin_us);
  const double whole_pin = Summarize(WholeRange(r).pin_us).median;
  const double whole_unpin = Summarize(WholeRange(r).unpin_us).median;
  const char* whole = r.one_thread ? " (one thread's pin of the whole range)" : "";
  const double floor = Summarize(r.floor_us).median;
  // One sample per thread per repeat: the median is of all of them.
  const std::string samples = c.threads > 1 ? Format("%d (%d repeats x %d threads)",
                                                     c.repeats * c.threads, c.repeats, c.threads)
                                            : Format("%d", c.repeats);
  std::printf("\nmedian of %s: pin %s us, unpin %s us (min %s / %s)\n", samples.c_str(),
              Us(pin.median).c_str(), Us(unpin.median).c_str(), Us(pin.min).c_str(),
              Us(unpin.min).c_str());
  std::printf("floor (%s): %s us; pin / floor = %.2fx%s\n", r.floor.c_str(), Us(floor).c_str(),
              whole_pin / floor, whole);
  if (!r.call_floor_us.empty()) {
    const double call_floor = Summarize(r.call_floor_us).median;
    const std::string calls = c.pages_per_call < 0
                                  ? std::string("one out-of-line call for the whole range")
                                  : Format("one out-of-line call per %d pages", c.pages_per_call);
    std::printf(
        "call floor (the same atomic adds, %s, writing the spans and returning a StatusOr): "
        "%s us, %.2fx the floor; pin / call floor = %.2fx%s\n",
        calls.c_str(), Us(call_floor).c_str(), call_floor / floor, whole_pin / call_floor, whole);
  }
  if (r.per_page) {
    const double pp = Summarize(r.per_page->pin_us).median;
    std::printf("refcount per 4K page: pin %s us, unpin %s us; per page / per folio = %.1fx\n",
                Us(pp).c_str(), Us(Summarize(r.per_page->unpin_us).median).c_str(),
                pp / pin.median);
  }
  if (r.kernel) {
    const double kp = Summarize(r.kernel->pin_us).median;
    const double ku = Summarize(r.kernel->unpin_us).median;
    std::printf(
        "kernel, io_uring fixed-buffer registration (FOLL_LONGTERM) of the same buffer: "
        "register %s us, unregister %s us; kernel / hugemm = %.1fx pin, %.1fx unpin%s\n",
        Us(kp).c_str(), Us(ku).c_str(), kp / whole_pin, ku / whole_unpin, whole);
  }
  if (r.one_thread) {
    const perf::PinScaling s = perf::ThreadScaling(c, r);
    std::printf(
        "%d threads, %s: wall pin %s us, unpin %s us; one thread over the whole range: "
        "pin %s us, unpin %s us; throughput %d threads / one = %.2fx pin, %.2fx unpin "
        "(fastest repeats: %.2fx, %.2fx)\n",
        c.threads, c.disjoint ? "each its own folios" : "all on the same folios",
        Us(Summarize(r.ours.wall_pin_us).median).c_str(),
        Us(Summarize(r.ours.wall_unpin_us).median).c_str(),
        Us(Summarize(r.one_thread->pin_us).median).c_str(),
        Us(Summarize(r.one_thread->unpin_us).median).c_str(), c.threads, s.pin, s.unpin, s.best_pin,
        s.best_unpin);
    std::printf("control: a compute loop on %d threads runs %.2fx one thread's throughput here\n",
                c.threads, r.cpu_scaling.value_or(0));
    std::printf(
        "control: %d threads writing a page array's worth of entries run %.2fx one thread\n",
        c.threads, r.write_scaling.value_or(0));
    std::printf(
        "control: %d threads making one atomic add per folio, each on its own folios, run "
        "%.2fx one thread\n",
        c.threads, r.atomic_scaling.value_or(0));
  }
}

int RunBenchPin(PinFlags& f) {
  PinBenchConfig& c = f.config;
  if (f.get) c.call = perf::PinCall::kGet;
  if (f.longterm) c.call = perf::PinCall::kPinLongterm;
  c.write = !f.read_only;
  c.shared = !f.private_mapping;
  for (const std::string& w : f.compare) {
    (w == "kernel" ? c.compare_kernel : c.compare_page) = true;
  }
  if (absl::Status st = perf::CheckPinBenchConfig(c); !st.ok()) return Usage("bench pin", st);
  perf::PinBenchHooks hooks;
  hooks.note = [](const std::string& note) {
    std::fprintf(stderr, "hugemm bench pin: %s\n", note.c_str());
  };
  // One line rewritten in place on a terminal; into a log, a line per tenth of the run
  // (a carriage return per repeat made one line of -r's length there).
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  hooks.progress = [tty](int done, int repeats) {
    if (tty) {
      std::fprintf(stderr, "\r  hugemm bench pin: repeat %d/%d", done, repeats);
      if (done == repeats) std::fprintf(stderr, "\n");
    } else if (done == repeats || done * 10 / repeats != (done - 1) * 10 / repeats) {
      std::fprintf(stderr, "  hugemm bench pin: repeat %d/%d\n", done, repeats);
    }
  };
  absl::StatusOr<PinBenchResult> r;
  {
    // -f naming a file that is not there yet: the run creates it in a hugetlbfs mount.
    const RemoveOnSignal created(c.file);
    r = perf::RunPinBench(c, hooks);
  }
  if (!r.ok()) return Fail("bench pin", r.status());
  if (f.json) {
    PrintJsonResult(c, *r);
  } else {
    PrintTextResult(c, *r);
  }
  return kExitOk;
}

}  // namespace

void AddBenchPinCommand(CommandTable& table, CLI::App* bench) {
  auto f = std::make_shared<PinFlags>();
  PinBenchConfig& c = f->config;
  CLI::App* pin = table.Add(bench, "pin",
                            "gup_test's pin benchmark on hugemm, beside the kernel's pin and "
                            "the floor (defaults: gup_test -m 16384 -r 10 -n 512 -a -w -S)",
                            [f] { return RunBenchPin(*f); });
  constexpr int64_t kMax = int64_t{1} << 40;
  pin->add_option("-m", c.size_mib,
                  "Buffer size in MiB (with fewer huge pages free: the size they hold, and a "
                  "note)")
      ->transform(IntegerIn(1, kMax))
      ->type_name("MIB")
      ->capture_default_str();
  pin->add_option("-r", c.repeats, "Repeats")
      ->transform(IntegerIn(1, 1 << 20))
      ->type_name("N")
      ->capture_default_str();
  pin->add_option("-n", c.pages_per_call, "4K pages per call, -1 for the whole range")
      ->transform(IntegerIn(-1, kMax))
      ->type_name("N")
      ->capture_default_str();
  CLI::Option* a =
      pin->add_flag("-a")->description("PIN_FAST: pin references (FOLL_PIN), the default");
  CLI::Option* u = pin->add_flag("-u", f->get, "GUP_FAST: plain references (FOLL_GET)");
  CLI::Option* l = pin->add_flag("-L", f->longterm, "PIN_LONGTERM: long-term pins");
  a->excludes(u)->excludes(l);
  u->excludes(l);
  CLI::Option* w = pin->add_flag("-w")->description("The device writes (FOLL_WRITE), the default");
  w->excludes(pin->add_flag("-W", f->read_only, "Read-only pins"));
  CLI::Option* s = pin->add_flag("-S")->description("A shared mapping, the default");
  s->excludes(pin->add_flag("-P", f->private_mapping, "A private mapping"));
  CLI::Option* file =
      pin->add_option("-f", c.file,
                      "A /dev/dax device, or a file in a hugetlbfs mount's top directory (one the "
                      "run creates is removed; "
                      "one that exists is grown to -m if shorter, and keeps its pages)");
  file->check(NonEmpty())->type_name("FILE");
  pin->add_option("-j", c.threads, "Threads, each pinning the whole range (or see --disjoint)")
      ->transform(IntegerIn(1, 64))
      ->type_name("N")
      ->capture_default_str();
  pin->add_flag("--disjoint", c.disjoint,
                "With -j: each thread pins its own part of the range, whole folios");
  CLI::Option* backing =
      pin->add_option_function<std::string>(
             "--backing", [&c](const std::string& v) { c.backing = *ParseBackingKind(v); },
             "Memory source (default hugetlb)")
          ->check(CLI::IsMember({"hugetlb", "hugetlbfs", "devdax", "anon"}));
  CLI::Option* hugetlb = pin->add_flag_callback(
      "-H", [&c] { c.backing = BackingKind::kHugetlb; }, "hugetlb (the default backing)");
  hugetlb->excludes(backing)->excludes(file);
  pin->add_option_function<std::string>(
         "--page-size", [&c](const std::string& v) { c.page_size = *ParsePageSize(v); },
         "Page size: 4K, 2M, 1G (default: 2M, or the mount's or the device's)")
      ->check(PageSizeValue())
      ->type_name("SIZE");
  pin->add_option_function<std::string>(
         "--refcount",
         [&c](const std::string& v) {
           c.refcount = v == "page" ? RefGranularity::kPage : RefGranularity::kFolio;
         },
         "One reference operation per folio (default) or per 4K page")
      ->check(CLI::IsMember({"folio", "page"}));
  pin->add_option_function<std::string>(
         "--output",
         [&c](const std::string& v) {
           c.output = v == "folios"     ? perf::PinOutput::kFolios
                      : v == "segments" ? perf::PinOutput::kSegments
                                        : perf::PinOutput::kPages;
         },
         "What a pin fills: a page array (default), folio spans or DMA segments")
      ->check(CLI::IsMember({"pages", "folios", "segments"}));
  AddListOption(pin, "--compare", &f->compare,
                "Also time the kernel's pin of the same buffer and/or one reference per 4K "
                "page",
                {CLI::IsMember({"kernel", "page"})})
      ->type_name("kernel|page,...");
  table.AddJsonFlag(pin, f->json, "One JSON object (keys: see doc/benchmarks.md)");
}

}  // namespace hugemm::cli
