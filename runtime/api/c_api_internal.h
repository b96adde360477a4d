// What the C APIs of every layer share: the runtime behind a hugemm_runtime handle, and
// this thread's last error, so that hugemm_last_error() answers for hugemm_io_* calls too.
#ifndef HUGEMM_RUNTIME_API_C_API_INTERNAL_H_
#define HUGEMM_RUNTIME_API_C_API_INTERNAL_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "hugemm/runtime.h"

struct hugemm_runtime {
  std::unique_ptr<hugemm::Runtime> rt;
};

namespace hugemm::c_api_internal {

// The negative errno a status stands for in the C API.
int NegativeErrnoOf(absl::StatusCode code);
// Records the message for hugemm_last_error() and returns the negative errno.
int Fail(const absl::Status& status);
int Fail(int err, std::string message);
// Clears the message; returns 0.
int Ok();
const char* LastError();

}  // namespace hugemm::c_api_internal

#endif  // HUGEMM_RUNTIME_API_C_API_INTERNAL_H_
