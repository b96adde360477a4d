// The soak behind `hugemm stress`: threads doing a random mix of everything a program
// does with one Runtime, on memory they share, checked as they go and at the end.
//
//   absl::StatusOr<hugemm::soak::StressReport> r =
//       hugemm::soak::RunStress({.seconds = 60, .threads = 4});
//   if (r.ok() && !r->ok()) for (const std::string& v : r->violations) puts(v.c_str());
//
// The threads work on a set of slots, each a buffer (MapBuffer, hugetlb or anon, or
// Allocate) or a region the program mapped itself (registered and unregistered as
// external memory), any of them used by any thread at once: allocate, map, free, pin
// with every output (page array, folio spans, DMA segments, PinnedRange), unpin by each
// output's own way, split, protect, subscribe, translate, register and unregister, and
// trim (the allocator's Shrink, which drains the caches of the threads idle then).
//
// Checked all along:
//   - no folio is reused while pinned: each pin writes a canary (its thread's own word)
//     into every page it pinned, which must be intact when it is unpinned, however
//     long after the buffer was freed;
//   - counts: a slot's folios, audited with the slot held still, have a refcount of
//     owner + one per mapping entry + the pins held on them, and that pincount;
//   - refusals are the documented ones (a WRITE pin of memory made read-only, an
//     unregister of pinned memory, an exhausted pool) and carry words.
// At the end every pin is released, every buffer freed and the allocator shrunk: its
// pools must be empty, and the process's descriptors, huge page mappings and pinned
// memory (VmPin) as before the run.
//
// Thread safety: RunStress may be called from one thread at a time.
#ifndef HUGEMM_SOAK_STRESS_H_
#define HUGEMM_SOAK_STRESS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hugemm::soak {

struct StressConfig {
  double seconds = 10;
  int threads = 4;
  uint64_t seed = 1;
  // Huge page memory the slots may hold at once (buffers; the allocator's pools grow
  // beside it up to what the allocations need).
  size_t max_bytes = size_t{64} << 20;
  // Hold a kernel long-term pin on every buffer, as a Runtime does by default.
  bool kernel_pins = true;
};

struct StressReport {
  double seconds = 0;
  int threads = 0;
  uint64_t operations = 0;
  double operations_per_second = 0;
  std::map<std::string, uint64_t> by_kind;   // operations done, per kind
  std::map<std::string, uint64_t> refusals;  // expected errors, per kind
  uint64_t canaries_checked = 0;
  uint64_t audits = 0;
  std::vector<std::string> violations;  // broken promises; empty when all held
  bool ok() const { return violations.empty(); }
};

// Runs the soak. An error only when it could not start (no huge pages for its first
// buffer, a thread the system refuses, a bad config); what it finds is in the report.
[[nodiscard]] absl::StatusOr<StressReport> RunStress(const StressConfig& config);

}  // namespace hugemm::soak

#endif  // HUGEMM_SOAK_STRESS_H_
