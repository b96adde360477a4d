// `hugemm bench io`: the storage benchmark's flags, the run (perf/bench_io.h) with a
// progress line, and its results as a table per job with the target ratios, or as JSON
// (keys in doc/benchmarks.md).
#include "perf/bench_io.h"

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hugemm/page_size.h"
#include "runtime/cli/command.h"
#include "runtime/cli/remove_on_signal.h"

namespace hugemm::cli {
namespace {

using perf::IoBenchConfig;
using perf::IoBenchResult;
using perf::IoCandidate;
using perf::IoPattern;
using perf::IoRun;

struct IoFlags {
  IoBenchConfig config;
  std::vector<std::string> rw = {"randread", "randwrite"};
  std::vector<std::string> bs = {"4K", "128K"};
  std::vector<std::string> candidates = {"plain", "fixed", "fixed+pins", "fio"};
  std::vector<std::string> qd = {"1", "32"};
  std::string size = "1G";
  bool json = false;
};

// "1G", "256M", "4096", "64K": bytes, a multiple of 4K.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < t.size() && std::isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  uint64_t v = 0;
  if (digits == 0 || !absl::SimpleAtoi(t.substr(0, digits), &v)) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" is not a size"));
  }
  std::string unit = absl::AsciiStrToUpper(t.substr(digits));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  const int shift = unit.empty() ? 0 : unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : -1;
  if (shift < 0 || v > (~uint64_t{0} >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" is not a size"));
  }
  v <<= shift;
  if (v % kPageSize4K != 0) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" is not a multiple of 4K"));
  }
  return v;
}

CLI::Validator BytesValue() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        absl::StatusOr<uint64_t> v = ParseBytes(value);
        return v.ok() ? "" : std::string(v.status().message());
      },
      "");
}

const IoRun* Find(const IoBenchResult& r, size_t job_start, size_t n, IoCandidate c) {
  for (size_t i = job_start; i < job_start + n; ++i) {
    if (r.runs[i].candidate == c && r.runs[i].ran) return &r.runs[i];
  }
  return nullptr;
}

// The targets' ratios for one job, where both sides ran.
std::vector<std::pair<std::string, double>> Ratios(const IoBenchResult& r, size_t start, size_t n) {
  const IoRun* plain = Find(r, start, n, IoCandidate::kPlain);
  const IoRun* fixed = Find(r, start, n, IoCandidate::kFixed);
  const IoRun* pins = Find(r, start, n, IoCandidate::kFixedPinned);
  const IoRun* fio = Find(r, start, n, IoCandidate::kFio);
  std::vector<std::pair<std::string, double>> out;
  if (fixed && plain && plain->cpu_us_per_io > 0) {
    out.emplace_back("fixed_cpu_over_plain", fixed->cpu_us_per_io / plain->cpu_us_per_io);
  }
  if (pins && fixed && fixed->cpu_us_per_io > 0 && fixed->iops > 0) {
    out.emplace_back("pins_cpu_over_fixed", pins->cpu_us_per_io / fixed->cpu_us_per_io);
    out.emplace_back("pins_iops_over_fixed", pins->iops / fixed->iops);
  }
  if (pins && fio && fio->iops > 0) out.emplace_back("pins_iops_over_fio", pins->iops / fio->iops);
  return out;
}

Json RunJson(const IoRun& run) {
  if (!run.ran) return {{"skipped", run.skipped}};
  return {{"iops", run.iops},     {"p50_us", run.p50_us},
          {"p99_us", run.p99_us}, {"cpu_us_per_io", run.cpu_us_per_io},
          {"ios", run.ios},       {"seconds", run.seconds}};
}

void Print(const IoFlags& f, const IoBenchResult& r) {
  const size_t n = f.config.candidates.size();
  Json jobs = Json::array();
  for (size_t start = 0; start < r.runs.size(); start += n) {
    const IoRun& first = r.runs[start];
    const std::string name = absl::StrCat(perf::IoPatternName(first.pattern), " ",
                                          PageSizeName(first.block_size), " qd", first.depth);
    const auto ratios = Ratios(r, start, n);
    if (f.json) {
      Json job = {{"rw", perf::IoPatternName(first.pattern)},
                  {"bs", first.block_size},
                  {"qd", first.depth}};
      Json cands = Json::object();
      for (size_t i = start; i < start + n; ++i) {
        cands[perf::IoCandidateName(r.runs[i].candidate)] = RunJson(r.runs[i]);
      }
      job["candidates"] = std::move(cands);
      Json rj = Json::object();
      for (const auto& [k, v] : ratios) rj[k] = v;
      job["ratios"] = std::move(rj);
      jobs.push_back(std::move(job));
      continue;
    }
    std::printf("\n%s\n  %-11s %10s %10s %10s %12s\n", name.c_str(), "candidate", "IOPS", "p50 us",
                "p99 us", "CPU us/IO");
    for (size_t i = start; i < start + n; ++i) {
      const IoRun& run = r.runs[i];
      if (!run.ran) {
        std::printf("  %-11s skipped: %s\n", perf::IoCandidateName(run.candidate),
                    run.skipped.c_str());
        continue;
      }
      std::printf("  %-11s %10.0f %10.1f %10.1f %12.2f\n", perf::IoCandidateName(run.candidate),
                  run.iops, run.p50_us, run.p99_us, run.cpu_us_per_io);
    }
    static const std::map<std::string, std::string> kTarget = {{"fixed_cpu_over_plain", "< 1"},
                                                               {"pins_cpu_over_fixed", "<= 1.02"},
                                                               {"pins_iops_over_fixed", ">= 0.98"},
                                                               {"pins_iops_over_fio", ">= 0.95"}};
    for (const auto& [k, v] : ratios) {
      std::printf("  %-22s %6.3f  (target %s)\n", k.c_str(), v, kTarget.at(k).c_str());
    }
  }
  if (f.json) {
    PrintJson({{"command", CommandLine()},
               {"target", r.target},
               {"created", r.created},
               {"size", r.size},
               {"seconds", f.config.seconds},
               {"fixed_mode", r.fixed_mode},
               {"fio_version", r.fio_version},
               {"jobs", std::move(jobs)}});
  }
}

int RunBenchIo(IoFlags& f) {
  IoBenchConfig& c = f.config;
  c.patterns.clear();
  for (const std::string& p : f.rw) {
    c.patterns.push_back(p == "randread" ? IoPattern::kRandRead : IoPattern::kRandWrite);
  }
  c.block_sizes.clear();
  for (const std::string& b : f.bs) {
    const uint64_t bytes = *ParseBytes(b);
    // Refused here while whole: past 32 bits it would wrap to a block size that passes.
    if (bytes > kPageSize2M) {
      return Usage("bench io",
                   absl::InvalidArgumentError(absl::StrCat(
                       "--bs ", b, ": a multiple of 4K up to 2M (one folio per buffer)")));
    }
    c.block_sizes.push_back(static_cast<uint32_t>(bytes));
  }
  c.depths.clear();
  for (const std::string& d : f.qd) {
    unsigned depth = 0;
    (void)absl::SimpleAtoi(d, &depth);  // IntegerIn read it already
    c.depths.push_back(depth);
  }
  c.candidates.clear();
  for (const std::string& name : f.candidates) {
    c.candidates.push_back(name == "plain"   ? IoCandidate::kPlain
                           : name == "fixed" ? IoCandidate::kFixed
                           : name == "fio"   ? IoCandidate::kFio
                                             : IoCandidate::kFixedPinned);
  }
  c.size = *ParseBytes(f.size);
  if (absl::Status st = perf::CheckIoBenchConfig(c); !st.ok()) return Usage("bench io", st);
  perf::IoBenchHooks hooks;
  hooks.note = [](const std::string& note) {
    std::fprintf(stderr, "hugemm bench io: %s\n", note.c_str());
  };
  // One line rewritten in place on a terminal; a line per step into a log.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  hooks.progress = [tty](const std::string& what) {
    std::fprintf(stderr, tty ? "\r\033[K  hugemm bench io: %s" : "  hugemm bench io: %s\n",
                 what.c_str());
  };
  absl::StatusOr<IoBenchResult> r;
  {
    // Without --file the run creates its target in --dir under this name.
    const RemoveOnSignal created(
        c.file.empty() ? absl::StrCat(c.dir, "/hugemm-bench-io.", ::getpid()) : "");
    r = perf::RunIoBench(c, hooks);
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  if (!r.ok()) return Fail("bench io", r.status());
  if (!f.json) {
    // The seconds as given ("0.05", not "0.1"); the fixed mode only where a fixed
    // candidate ran.
    std::printf(
        "%s\n%s (%s%s), O_DIRECT, one thread, %g s per candidate%s%s\n", CommandLine().c_str(),
        r->target.c_str(), HumanBytes(r->size).c_str(), r->created ? ", created and removed" : "",
        c.seconds,
        r->fixed_mode.empty() ? "" : absl::StrCat("; fixed buffers by ", r->fixed_mode).c_str(),
        r->fio_version.empty() ? "" : absl::StrCat("; ", r->fio_version).c_str());
  }
  Print(f, *r);
  return kExitOk;
}

}  // namespace

void AddBenchIoCommand(CommandTable& table, CLI::App* bench) {
  auto f = std::make_shared<IoFlags>();
  IoBenchConfig& c = f->config;
  CLI::App* io = table.Add(bench, "io",
                           "O_DIRECT random reads and writes through io_uring: plain, hugemm's "
                           "fixed buffers, fixed buffers with per-I/O pins, and fio",
                           [f] { return RunBenchIo(*f); });
  io->add_option("--file", c.file,
                 "A file or block device to use as it is (default: create a file in --dir)")
      ->check(NonEmpty())
      ->type_name("PATH");
  io->add_option("--dir", c.dir, "Where the created file goes (not tmpfs)")
      ->check(NonEmpty())
      ->type_name("DIR")
      ->capture_default_str();
  io->add_option("--size", f->size,
                 "Bytes the I/Os land in: the created file's size, or at most this much of "
                 "--file (0: all of it)")
      ->check(BytesValue())
      ->type_name("SIZE")
      ->capture_default_str();
  AddListOption(io, "--rw", &f->rw, "Patterns", {CLI::IsMember({"randread", "randwrite"})})
      ->type_name("randread|randwrite,...");
  AddListOption(io, "--bs", &f->bs, "Block sizes, multiples of 4K up to 2M", {BytesValue()})
      ->type_name("SIZE,...");
  AddListOption(io, "--qd", &f->qd, "Queue depths, each in [1 - 4096]", {IntegerIn(1, 4096)})
      ->type_name("N,...");
  AddListOption(io, "--candidates", &f->candidates, "Which to run, in this order",
                {CLI::IsMember({"plain", "fixed", "fixed+pins", "fio"})})
      ->type_name("plain|fixed|fixed+pins|fio,...");
  io->add_option("--seconds", c.seconds,
                 "Timed seconds per candidate and job (after a tenth "
                 "of it as warm-up)")
      ->check(FiniteNumber())
      ->check(CLI::Range(0.01, 3600.0))
      ->type_name("S")
      ->capture_default_str();
  io->add_flag("--write-existing", c.write_existing,
               "Allow random writes to --file (they destroy what it holds)");
  io->add_option("--fio", c.fio, "The fio command")
      ->check(NonEmpty())
      ->type_name("CMD")
      ->capture_default_str();
  table.AddJsonFlag(io, f->json, "One JSON object (keys: see doc/benchmarks.md)");
}

}  // namespace hugemm::cli
