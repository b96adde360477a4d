// The storage benchmark: O_DIRECT random reads and writes through io_uring, one thread,
// each candidate in turn on the same job in the same run:
//   plain        READ / WRITE with the buffer as a plain address: the kernel pins the
//                pages under every I/O and unpins them at its completion;
//   fixed        READ_FIXED / WRITE_FIXED through hugemm's table (FixedBuffers): nothing
//                pinned per I/O;
//   fixed+pins   fixed, plus hugemm's per-I/O pin at submission and unpin at completion
//                (IoRing): what a program that may free buffers in flight runs;
//   fio          fio on the same job (ioengine=io_uring, direct=1, fixedbufs,
//                iomem=mmaphuge on a hugetlbfs file), when fio is installed.
// Each reports IOPS, latency percentiles (submission to completion) and CPU time per I/O
// (user + system of the whole process, io_uring's workers included), because a disk that
// is the bottleneck hides CPU differences behind device time.
//
// The target is a file it creates (and removes) in a directory on a disk-backed file
// system, filled with data first (a fresh file's unwritten extents would read as zeroes
// without I/O), or a given file or block device. tmpfs is refused: it takes O_DIRECT but
// does buffered I/O.
//
// This is a library: it runs from a config and returns the results as data; `hugemm bench
// io` parses the flags and renders them.
#ifndef HUGEMM_PERF_BENCH_IO_H_
#define HUGEMM_PERF_BENCH_IO_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hugemm::perf {

enum class IoCandidate { kPlain, kFixed, kFixedPinned, kFio };
enum class IoPattern { kRandRead, kRandWrite };

const char* IoCandidateName(IoCandidate c);  // "plain", "fixed", "fixed+pins", "fio"
const char* IoPatternName(IoPattern p);      // "randread", "randwrite"

struct IoBenchConfig {
  // A file or block device to use as it is; "" = create a file in `dir`.
  std::string file;
  std::string dir = "/var/tmp";
  // Bytes of the target the I/Os land in: the created file's size; for a given target
  // at most its size (0 = all of it).
  uint64_t size = uint64_t{1} << 30;
  std::vector<IoPattern> patterns = {IoPattern::kRandRead, IoPattern::kRandWrite};
  std::vector<uint32_t> block_sizes = {4096, 128 << 10};
  std::vector<unsigned> depths = {1, 32};
  std::vector<IoCandidate> candidates = {IoCandidate::kPlain, IoCandidate::kFixed,
                                         IoCandidate::kFixedPinned, IoCandidate::kFio};
  double seconds = 3.0;  // timed, per candidate and job, after a warm-up of a tenth of it
  // Writes to a given file or device destroy what it holds: only with this set.
  bool write_existing = false;
  std::string fio = "fio";  // the command; a candidate skipped when it cannot run
  uint64_t seed = 1;
};

// One candidate on one job.
struct IoRun {
  IoCandidate candidate = IoCandidate::kPlain;
  IoPattern pattern = IoPattern::kRandRead;
  uint32_t block_size = 0;
  unsigned depth = 0;
  bool ran = false;
  std::string skipped;  // why it did not run
  uint64_t ios = 0;
  double seconds = 0;
  double iops = 0;
  double p50_us = 0;
  double p99_us = 0;
  double cpu_us_per_io = 0;
};

struct IoBenchResult {
  std::string target;
  bool created = false;  // a file the run made and removed
  uint64_t size = 0;
  std::string fixed_mode;  // "clone" or "iovec": how the ring got hugemm's table
  std::string fio_version;
  std::vector<IoRun> runs;  // job by job, each candidate in the order asked
};

struct IoBenchHooks {
  std::function<void(const std::string& note)> note;
  // Before each candidate of each job: "randread 4K qd32: fixed (2/4), job 1/8".
  std::function<void(const std::string& what)> progress;
};

// InvalidArgument naming the flag and value when the config cannot run: an empty list,
// a candidate given twice, a block size not a multiple of 4K or above 2M, a depth outside
// 1..4096, seconds not positive, a size smaller than the largest block; a dir that is not
// a directory, a file that is neither a regular file nor a block device; tmpfs; writes to
// an existing target without write_existing.
absl::Status CheckIoBenchConfig(const IoBenchConfig& config);

absl::StatusOr<IoBenchResult> RunIoBench(const IoBenchConfig& config,
                                         const IoBenchHooks& hooks = {});

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_BENCH_IO_H_
