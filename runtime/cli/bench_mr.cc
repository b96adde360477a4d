// `hugemm bench mr`: the run (perf/bench_mr.h) and its results as a table or as JSON
// (keys in doc/benchmarks.md).
#include "perf/bench_mr.h"

#include <cstdio>
#include <memory>

#include "hugemm/page_size.h"
#include "runtime/cli/command.h"
#include "runtime/util/format.h"

namespace hugemm::cli {
namespace {

struct MrFlags {
  perf::MrBenchConfig config;
  bool json = false;
};

Json SummaryJson(const perf::Summary& s) {
  return {{"min", s.min}, {"median", s.median}, {"max", s.max}};
}

int RunBenchMr(const MrFlags& f) {
  absl::StatusOr<perf::MrBenchResult> r = perf::RunMrBench(f.config);
  if (!r.ok()) return Fail("bench mr", r.status());
  if (f.json) {
    Json rows = Json::array();
    for (const perf::MrBenchRow& row : r->rows) {
      Json j = {{"size", PageSizeName(row.size)}, {"memory", row.memory}};
      if (!row.skipped.empty()) {
        j["skipped"] = row.skipped;
      } else {
        j["hit_ns"] = SummaryJson(row.hit_ns);
        j["miss_ns"] = SummaryJson(row.miss_ns);
        j["reg_dereg_ns"] = SummaryJson(row.reg_dereg_ns);
        j["reg_dereg_over_hit"] = row.reg_dereg_ns.median / row.hit_ns.median;
        j["miss_over_reg_dereg"] = row.miss_ns.median / row.reg_dereg_ns.median;
        j["registrations"] = row.registrations;
      }
      rows.push_back(std::move(j));
    }
    PrintJson({{"command", CommandLine()},
               {"device", r->device},
               {"hits", f.config.hits},
               {"sizes", std::move(rows)}});
    return kExitOk;
  }
  std::printf(
      "MR cache on %s: Get+release of a cached registration (hit), a Get that "
      "registers (miss),\nand ibv_reg_mr+ibv_dereg_mr of the same buffer; medians\n",
      r->device.c_str());
  std::printf("%-5s %14s %14s %16s %12s  %s\n", "size", "hit", "miss", "reg+dereg", "reg+dereg/hit",
              "memory");
  for (const perf::MrBenchRow& row : r->rows) {
    if (!row.skipped.empty()) {
      std::printf("%-5s skipped: %s\n", PageSizeName(row.size).c_str(), row.skipped.c_str());
      continue;
    }
    std::printf("%s",
                Format("%-5s %11.0f ns %11.1f us %13.1f us %11.0fx  %s\n", PageSizeName(row.size),
                       row.hit_ns.median, row.miss_ns.median / 1e3, row.reg_dereg_ns.median / 1e3,
                       row.reg_dereg_ns.median / row.hit_ns.median, row.memory)
                    .c_str());
  }
  return kExitOk;
}

}  // namespace

void AddBenchMrCommand(CommandTable& table, CLI::App* bench) {
  auto f = std::make_shared<MrFlags>();
  CLI::App* mr = table.Add(bench, "mr",
                           "MR cache hit and miss beside ibv_reg_mr+ibv_dereg_mr, for 4K, 2M "
                           "and 1G buffers (needs an RDMA device)",
                           [f] { return RunBenchMr(*f); });
  mr->add_option("--device", f->config.device, "RDMA device (default: the first one)")
      ->check(NonEmpty())
      ->type_name("NAME");
  mr->add_option("--hits", f->config.hits, "Cache hits timed per size")
      ->transform(IntegerIn(perf::kMrBenchSamples, (int64_t{1} << 31) - 1))
      ->type_name("N")
      ->capture_default_str();
  mr->add_option("--registrations", f->config.registrations,
                 "Misses and ibv_reg_mr+ibv_dereg_mr pairs timed per size (1G: at most 5)")
      ->transform(IntegerIn(1, 1 << 20))
      ->type_name("N")
      ->capture_default_str();
  table.AddJsonFlag(mr, f->json, "One JSON object (keys: see doc/benchmarks.md)");
}

}  // namespace hugemm::cli
