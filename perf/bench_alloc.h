// The allocation benchmark: allocate + free of a cached 2M folio (no zeroing) against
// mmap(MAP_HUGETLB) + first touch + munmap of 2M, timed in the same run; the metadata
// bytes per folio, modelled and measured; and the two ways of zeroing, which decide
// ZeroFolioMemory.
#ifndef HUGEMM_PERF_BENCH_ALLOC_H_
#define HUGEMM_PERF_BENCH_ALLOC_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "perf/bench_util.h"

namespace hugemm::perf {

struct AllocBenchConfig {
  int iterations = 200000;  // allocate+free pairs timed, at least kAllocBenchSamples
};
inline constexpr int kAllocBenchSamples = 31;

// Metadata per GiB of folios of one size, in system memory: model (FolioMetadataCost)
// and measured (PoolStats::metadata_bytes of a pool filled with them, scaled).
struct MetadataPerGiB {
  std::string folios;  // "4K", "2M", "1G"
  uint64_t model = 0;
  std::optional<double> measured;  // when the pages to measure it were free
  uint64_t kernel = 0;             // struct pages
  uint64_t kernel_hvo = 0;         // struct pages with HugeTLB Vmemmap Optimization
};

struct AllocBenchResult {
  Summary alloc_free_ns;         // cached 2M folio, no zeroing
  Summary mmap_fault_munmap_ns;  // mmap(MAP_HUGETLB) + touch + munmap of 2M
  Summary alloc_free_zeroed_ns;
  // Everything the allocator holds per 2M folio in a 1 GiB pool grown from empty (the
  // "2M" row's measured figure / 512; its model when the pages were not free).
  double metadata_bytes_per_folio = 0;
  size_t descriptor_bytes = 0;
  double zero_2m_memset_ns = 0;
  double zero_2m_nontemporal_ns = 0;
  double zero_2m_cold_memset_ns = 0;
  double zero_2m_cold_nontemporal_ns = 0;
  std::optional<double> zero_1g_memset_ns;  // when a 1G page was free
  std::optional<double> zero_1g_nontemporal_ns;
  std::vector<MetadataPerGiB> metadata_per_gib;
  int iterations = 0;
};

// Runs it: InvalidArgument for fewer iterations than samples, or what allocating returned.
absl::StatusOr<AllocBenchResult> RunAllocBench(const AllocBenchConfig& config);

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_ALLOC_H_
