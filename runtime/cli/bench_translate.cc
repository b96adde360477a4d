// `hugemm bench translate`: the run (perf/bench_translate.h) and its results as a table
// or as JSON (keys in doc/benchmarks.md).
#include "perf/bench_translate.h"

#include <cstdio>
#include <memory>

#include "hugemm/page_size.h"
#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

int RunBenchTranslate(bool json) {
  absl::StatusOr<perf::TranslateBenchResult> r = perf::RunTranslateBench();
  if (!r.ok()) return Fail("bench translate", r.status());
  const double vs_pagemap = r->pagemap_ns / r->translate_real_ns;
  const double vs_flat = r->translate_ns / r->flat_array_ns;
  const double vs_flat_pfn = r->translate_ns / r->flat_pfn_array_ns;
  if (json) {
    PrintJson({{"geometry", r->geometry},
               {"translate_ns", r->translate_ns},
               {"translate_full_ns", r->translate_full_ns},
               {"translate_single_ns", r->translate_single_ns},
               {"batch", r->batch},
               {"translate_real_ns", r->translate_real_ns},
               {"pagemap_ns", r->pagemap_ns},
               {"flat_array_ns", r->flat_array_ns},
               {"flat_pfn_array_ns", r->flat_pfn_array_ns},
               {"pagemap_over_translate", vs_pagemap},
               {"translate_over_flat_array", vs_flat},
               {"translate_over_flat_pfn_array", vs_flat_pfn},
               {"lookups", r->lookups},
               {"address_pool", r->address_pool},
               {"pagemap_buffer", PageSizeName(r->pagemap_buffer_page_size)}});
    return kExitOk;
  }
  std::printf("shadow table, VA->PFN, batches of %zu  %8.2f ns\n", r->batch, r->translate_ns);
  std::printf("shadow table, full result, batched    %8.2f ns\n", r->translate_full_ns);
  std::printf("shadow table, one call each           %8.2f ns\n", r->translate_single_ns);
  std::printf("shadow table, VA->PFN, pagemap's buffer %6.2f ns\n", r->translate_real_ns);
  std::printf("flat folio array, VA->PFN, batched    %8.2f ns   table / flat = %.2fx\n",
              r->flat_array_ns, vs_flat);
  std::printf("flat PFN array, VA->PFN, batched      %8.2f ns   table / flat = %.2fx\n",
              r->flat_pfn_array_ns, vs_flat_pfn);
  std::printf("pagemap read, real buffer             %8.2f ns   pagemap / table = %.0fx\n",
              r->pagemap_ns, vs_pagemap);
  return kExitOk;
}

}  // namespace

void AddBenchTranslateCommand(CommandTable& table, CLI::App* bench) {
  auto json = std::make_shared<bool>(false);
  CLI::App* translate = table.Add(
      bench, "translate", "VA -> PFN through the shadow table, beside pagemap and a flat array",
      [json] { return RunBenchTranslate(*json); });
  table.AddJsonFlag(translate, *json, "One JSON object (keys: see doc/benchmarks.md)");
}

}  // namespace hugemm::cli
