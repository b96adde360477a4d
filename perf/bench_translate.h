// The translate benchmark: VA -> folio / PFN through the shadow table, beside a read of
// /proc/self/pagemap and a lookup in a flat array indexed by 2M page number, all in one
// run over the same kind of addresses.
//
// The table and the flat arrays describe 1 GiB of 2M folios at a synthetic address (the
// table never touches the data, so no huge pages are spent on it); the pagemap reads go
// to a real buffer of 2M pages (hugetlb, else 4K anon), which the table also maps, and
// the table is timed there too so the ratio holds for the same addresses.
//
// Two flat arrays, both indexed by 2M page number: one of folio pointers (a page's
// descriptor, from which folio and PFN follow, as from the table) and one of PFNs alone
// (the least any VA -> PFN lookup can do).
//
// Addresses come from a pool of 64K random ones (512 KiB, which stays in cache, as a DMA
// request's list of pages does), cycled: with a pool the size of the run, streaming the
// pool from memory would be what every candidate measures.
#ifndef HUGEMM_PERF_BENCH_TRANSLATE_H_
#define HUGEMM_PERF_BENCH_TRANSLATE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace hugemm::perf {

// Medians over the rounds, in ns per address.
struct TranslateBenchResult {
  std::string geometry;
  double translate_ns = 0;         // VA -> PFN, batches of `batch`
  double translate_full_ns = 0;    // the full translation, batched
  double translate_single_ns = 0;  // one call per address
  double translate_real_ns = 0;    // VA -> PFN over pagemap's buffer
  double pagemap_ns = 0;           // one pagemap read per address, real buffer
  double flat_array_ns = 0;        // flat folio array
  double flat_pfn_array_ns = 0;    // flat PFN array
  size_t batch = 0;
  size_t lookups = 0;
  size_t address_pool = 0;
  size_t pagemap_buffer_page_size = 0;
};

// Runs it; an error when no buffer for pagemap can be mapped or the table refuses a map.
absl::StatusOr<TranslateBenchResult> RunTranslateBench();

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_TRANSLATE_H_
