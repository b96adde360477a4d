// The pin benchmark's buffer: what its config asks for, and -f resolved. A character
// device is a device-DAX device; any other path must be a file (there or not) directly
// in a hugetlbfs mount, whose page size it takes. A path elsewhere is refused: it would
// otherwise become a file of that name in whichever mount the backing finds.
#ifndef HUGEMM_PERF_PIN_TARGET_H_
#define HUGEMM_PERF_PIN_TARGET_H_

#include <string>

#include "absl/status/statusor.h"
#include "hugemm/runtime.h"
#include "perf/bench_pin.h"

namespace hugemm::perf {

struct PinTarget {
  BufferOptions buffer;
  std::string created;  // the file the run creates (and so must remove), or ""
};

// InvalidArgument naming "-f" and the path when the file is neither a device nor in a
// hugetlbfs mount, or its mount's page size is not the one asked for.
absl::StatusOr<PinTarget> ResolvePinTarget(const PinBenchConfig& config);

// Removes the file a run created, however the run ends.
class RemoveCreated {
 public:
  explicit RemoveCreated(std::string path) : path_(std::move(path)) {}
  ~RemoveCreated();
  RemoveCreated(const RemoveCreated&) = delete;
  RemoveCreated& operator=(const RemoveCreated&) = delete;

 private:
  std::string path_;
};

}  // namespace hugemm::perf

#endif  // HUGEMM_PERF_PIN_TARGET_H_
