// The MR cache benchmark: for 4K, 2M and 1G buffers, in the same run, a cache hit (Get +
// release of a cached registration), a cache miss (a Get that registers), and the plain
// ibv_reg_mr + ibv_dereg_mr of the same buffer that a program without a cache pays per
// work request. Needs an RDMA device (soft-RoCE in the VM).
#ifndef HUGEMM_PERF_BENCH_MR_H_
#define HUGEMM_PERF_BENCH_MR_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "perf/bench_util.h"

namespace hugemm::perf {

struct MrBenchConfig {
  std::string device;      // "" = the first RDMA device
  int hits = 200000;       // hits timed per size, in kMrBenchSamples rounds
  int registrations = 30;  // misses and reg+dereg pairs timed per size (1G: at most 5)
};
inline constexpr int kMrBenchSamples = 31;

struct MrBenchRow {
  size_t size = 0;
  std::string memory;    // what the buffer is
  std::string skipped;   // why this size did not run ("" = it ran)
  Summary hit_ns;        // Get + Release of a cached registration
  Summary miss_ns;       // a Get that registers (the registration included)
  Summary reg_dereg_ns;  // ibv_reg_mr + ibv_dereg_mr
  int registrations = 0;
};

struct MrBenchResult {
  std::string device;
  std::vector<MrBenchRow> rows;
};

// FailedPrecondition naming what is missing when there is no RDMA device (or not the one
// asked for); InvalidArgument for too few hits or registrations; what mapping the 4K
// and 2M buffers returned. A 1G buffer that cannot be mapped skips its row, with why.
absl::StatusOr<MrBenchResult> RunMrBench(const MrBenchConfig& config);

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_MR_H_
