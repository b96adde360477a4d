// `hugemm stress`: the soak (soak/stress.h) and its report as text or JSON. Exit 1 when a
// promise broke; the report lists each.
#include "soak/stress.h"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

struct StressFlags {
  soak::StressConfig config;
  bool no_kernel_pins = false;
  bool json = false;
};

void PrintText(const soak::StressReport& r) {
  std::printf("stress: %.1f s, %d threads: %llu operations, %.0f per second\n", r.seconds,
              r.threads, static_cast<unsigned long long>(r.operations), r.operations_per_second);
  for (const auto& [kind, n] : r.by_kind) {
    std::printf("  %-10s %12llu\n", kind.c_str(), static_cast<unsigned long long>(n));
  }
  std::printf("checked: %llu canaries of pinned pages, %llu audits of refcounts\n",
              static_cast<unsigned long long>(r.canaries_checked),
              static_cast<unsigned long long>(r.audits));
  for (const auto& [kind, n] : r.refusals) {
    std::printf("  refused as documented: %s  %llu\n", kind.c_str(),
                static_cast<unsigned long long>(n));
  }
  if (r.ok()) {
    std::printf("all held; pools, mappings, descriptors and VmPin back at baseline\n");
  }
  for (const std::string& v : r.violations) std::printf("VIOLATION: %s\n", v.c_str());
}

void PrintJsonReport(const soak::StressReport& r, bool kernel_pins) {
  Json out = {{"seconds", r.seconds},
              {"threads", r.threads},
              {"operations", r.operations},
              {"operations_per_second", r.operations_per_second},
              {"by_kind", r.by_kind},
              {"refusals", r.refusals},
              {"canaries_checked", r.canaries_checked},
              {"audits", r.audits},
              {"violations", r.violations},
              {"kernel_pins", kernel_pins},
              {"ok", r.ok()},
              {"command", CommandLine()}};
  PrintJson(out);
}

int RunStressCommand(const StressFlags& f) {
  soak::StressConfig config = f.config;
  config.kernel_pins = !f.no_kernel_pins;
  absl::StatusOr<soak::StressReport> r = soak::RunStress(config);
  if (!r.ok()) return Fail("stress", r.status());
  if (f.json) {
    PrintJsonReport(*r, config.kernel_pins);
  } else {
    PrintText(*r);
  }
  return r->ok() ? kExitOk : kExitFailed;
}

}  // namespace

void AddStressCommand(CommandTable& table, CLI::App* app) {
  auto f = std::make_shared<StressFlags>();
  CLI::App* cmd = table.Add(app, "stress",
                            "Soak: threads doing a random mix of allocate, map, free, pin, "
                            "unpin, split, protect, subscribe, register and trim on shared memory, "
                            "checked as they go; everything back at baseline at the end",
                            [f] { return RunStressCommand(*f); });
  cmd->add_option("--seconds", f->config.seconds, "How long the threads run")
      ->check(FiniteNumber())
      ->check(CLI::Range(0.001, 1e7))
      ->type_name("S")
      ->capture_default_str();
  cmd->add_option("--threads", f->config.threads, "Threads")
      ->transform(IntegerIn(1, 64))
      ->type_name("N")
      ->capture_default_str();
  // Parsed here, decimal: CLI11 would wrap "-5" and saturate past 2^64 without a word.
  cmd->add_option_function<std::string>(
         "--seed", [f](const std::string& v) { (void)absl::SimpleAtoi(v, &f->config.seed); },
         "Seed of the threads' choices (default 1)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            uint64_t seed = 0;
            return absl::SimpleAtoi(v, &seed)
                       ? ""
                       : absl::StrCat("\"", v, "\" is not a whole number from 0 to 2^64-1");
          },
          ""))
      ->type_name("N");
  // A bool, so that --no-kernel-pins=false means what it says.
  cmd->add_flag("--no-kernel-pins", f->no_kernel_pins,
                "Map buffers without the kernel's long-term pin");
  table.AddJsonFlag(cmd, f->json, "One JSON object");
}

}  // namespace hugemm::cli
