// The storage benchmark's own candidates (plain, fixed, fixed+pins): one thread keeps
// `depth` O_DIRECT I/Os of one size in flight at random aligned offsets, resubmitting
// each slot as its completion is reaped, for a warm-up and then the timed seconds.
#ifndef HUGEMM_PERF_IO_LOOP_H_
#define HUGEMM_PERF_IO_LOOP_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/runtime.h"
#include "perf/bench_io.h"

namespace hugemm::perf::io_internal {

struct LoopJob {
  int fd = -1;
  uint64_t size = 0;  // offsets are drawn from [0, size - block_size], block-aligned
  IoPattern pattern = IoPattern::kRandRead;
  uint32_t block_size = 4096;
  unsigned depth = 1;
  double seconds = 1;
  uint64_t seed = 1;
};

// Runs `candidate` (not kFio) on a ring of its own with `buffers` (depth of them, each
// block_size bytes of the runtime's memory). `fixed_mode` receives how the ring got
// hugemm's table ("clone" or "iovec") for the fixed candidates. Errors: a ring or
// attach that fails, or an I/O that does (its errno), named.
absl::StatusOr<IoRun> RunLoop(Runtime& rt, const std::vector<std::byte*>& buffers,
                              IoCandidate candidate, const LoopJob& job, std::string* fixed_mode);

// The p-th percentile (0..100) of `samples` (reordered), 0 when empty.
double Percentile(std::vector<uint64_t>& samples, double p);

}  // namespace hugemm::perf::io_internal

#endif  // HUGEMM_PERF_IO_LOOP_H_
