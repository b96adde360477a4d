// `hugemm bench alloc`: the run (perf/bench_alloc.h) and its results as a table or as
// JSON (keys in doc/benchmarks.md).
#include "perf/bench_alloc.h"

#include <cstdio>
#include <memory>
#include <string>

#include "hugemm/page_size.h"
#include "runtime/cli/command.h"
#include "runtime/util/format.h"

namespace hugemm::cli {
namespace {

struct AllocFlags {
  perf::AllocBenchConfig config;
  bool json = false;
};

void PrintJsonResult(const perf::AllocBenchResult& r) {
  const double speedup = r.mmap_fault_munmap_ns.median / r.alloc_free_ns.median;
  Json out = {{"alloc_free_ns", r.alloc_free_ns.median},
              {"mmap_fault_munmap_ns", r.mmap_fault_munmap_ns.median},
              {"speedup", speedup},
              {"metadata_bytes_per_folio", r.metadata_bytes_per_folio},
              {"descriptor_bytes", r.descriptor_bytes},
              {"alloc_free_zeroed_ns", r.alloc_free_zeroed_ns.median},
              {"zero_2m_memset_ns", r.zero_2m_memset_ns},
              {"zero_2m_nontemporal_ns", r.zero_2m_nontemporal_ns},
              {"zero_2m_cold_memset_ns", r.zero_2m_cold_memset_ns},
              {"zero_2m_cold_nontemporal_ns", r.zero_2m_cold_nontemporal_ns}};
  if (r.zero_1g_memset_ns) {
    out["zero_1g_memset_ns"] = *r.zero_1g_memset_ns;
    out["zero_1g_nontemporal_ns"] = *r.zero_1g_nontemporal_ns;
  }
  Json per_gib = Json::object();
  for (const perf::MetadataPerGiB& m : r.metadata_per_gib) {
    Json row = {{"model", m.model}};
    if (m.measured) row["measured"] = *m.measured;
    row["kernel"] = m.kernel;
    row["kernel_hvo"] = m.kernel_hvo;
    per_gib[m.folios] = std::move(row);
  }
  out["metadata_bytes_per_gib"] = std::move(per_gib);
  out["iterations"] = r.iterations;
  PrintJson(out);
}

void PrintTextResult(const perf::AllocBenchResult& r) {
  const perf::Summary& fast = r.alloc_free_ns;
  const perf::Summary& slow = r.mmap_fault_munmap_ns;
  std::printf("allocate+free, cached 2M folio, no zeroing   %10.1f ns  (min %.1f, max %.1f)\n",
              fast.median, fast.min, fast.max);
  std::printf("mmap(MAP_HUGETLB)+touch+munmap of 2M         %10.1f ns  (min %.1f, max %.1f)\n",
              slow.median, slow.min, slow.max);
  std::printf("speedup                                      %10.1f x\n", slow.median / fast.median);
  std::printf("allocate+free, 2M, zeroed                    %10.1f ns\n",
              r.alloc_free_zeroed_ns.median);
  std::printf("zero 2M hot:  memset %.1f us, non-temporal %.1f us\n", r.zero_2m_memset_ns / 1e3,
              r.zero_2m_nontemporal_ns / 1e3);
  std::printf("zero 2M cold: memset %.1f us, non-temporal %.1f us\n",
              r.zero_2m_cold_memset_ns / 1e3, r.zero_2m_cold_nontemporal_ns / 1e3);
  if (r.zero_1g_memset_ns) {
    std::printf("zero 1G: memset %.1f ms, non-temporal %.1f ms\n", *r.zero_1g_memset_ns / 1e6,
                *r.zero_1g_nontemporal_ns / 1e6);
  }
  std::printf("metadata per 2M folio, all-in                %10.2f B (descriptor %zu B)\n",
              r.metadata_bytes_per_folio, r.descriptor_bytes);
  std::printf("metadata per GiB of folios (system memory; kernel = 64 B per 4K page)\n");
  for (const perf::MetadataPerGiB& m : r.metadata_per_gib) {
    std::printf("%s", Format("  %-3s folios  %12s  (measured %12s)   kernel %10s  (HVO %s)\n",
                             m.folios, HumanBytes(m.model),
                             m.measured ? HumanBytes(static_cast<uint64_t>(*m.measured)) : "n/a",
                             HumanBytes(m.kernel), HumanBytes(m.kernel_hvo))
                          .c_str());
  }
}

int RunBenchAlloc(const AllocFlags& f) {
  absl::StatusOr<perf::AllocBenchResult> r = perf::RunAllocBench(f.config);
  if (!r.ok()) return Fail("bench alloc", r.status());
  if (f.json) {
    PrintJsonResult(*r);
  } else {
    PrintTextResult(*r);
  }
  return kExitOk;
}

}  // namespace

void AddBenchAllocCommand(CommandTable& table, CLI::App* bench) {
  auto f = std::make_shared<AllocFlags>();
  CLI::App* alloc = table.Add(bench, "alloc",
                              "Allocate+free of a cached 2M folio vs mmap+fault+munmap; "
                              "metadata bytes per folio; zeroing",
                              [f] { return RunBenchAlloc(*f); });
  alloc->add_option("--iterations", f->config.iterations, "Allocate+free pairs timed")
      ->transform(IntegerIn(perf::kAllocBenchSamples, (int64_t{1} << 31) - 1))
      ->type_name("N")
      ->capture_default_str();
  table.AddJsonFlag(alloc, f->json, "One JSON object (keys: see doc/benchmarks.md)");
}

}  // namespace hugemm::cli
