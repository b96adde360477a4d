// The storage benchmark's fourth candidate: fio on the same job, with its own fixed
// buffers (ioengine=io_uring, direct=1, fixedbufs, iomem=mmaphuge on a hugetlbfs file),
// its JSON read back into an IoRun.
#ifndef HUGEMM_PERF_FIO_JOB_H_
#define HUGEMM_PERF_FIO_JOB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "perf/bench_io.h"

namespace hugemm::perf::io_internal {

struct FioJob {
  std::string fio = "fio";
  std::string target;
  uint64_t size = 0;
  IoPattern pattern = IoPattern::kRandRead;
  uint32_t block_size = 4096;
  unsigned depth = 1;
  double seconds = 1;           // timed, after a ramp of a tenth of it
  std::string hugetlbfs_mount;  // for iomem=mmaphuge
};

// fio's command line for the job; the mmaphuge file is `huge_file`.
std::vector<std::string> FioCommand(const FioJob& job, const std::string& huge_file);

// fio's JSON output read as a run of `job`. InvalidArgument when it is not what fio 3
// writes (no jobs, no numbers).
absl::StatusOr<IoRun> ParseFioJson(const std::string& json, const FioJob& job);

// Runs fio on the job: the run, or a run with `skipped` set when fio cannot run here
// (not installed, no hugetlbfs mount); an error when it ran and failed.
absl::StatusOr<IoRun> RunFio(const FioJob& job);

// "fio-3.33", or "" when fio cannot run.
std::string FioVersion(const std::string& fio);

}  // namespace hugemm::perf::io_internal

#endif  // HUGEMM_PERF_FIO_JOB_H_
