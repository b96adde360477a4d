// What the C APIs of the layers above (hugemm_verbs.h, ...) share with hugemm.h's: the
// runtime handle's layout and this thread's last error, so that their functions follow
// hugemm.h's conventions (a negative errno, and the message hugemm_last_error() returns).
// The functions are exported from libhugemm for those layers' own shared libraries.
#ifndef HUGEMM_RUNTIME_API_C_BRIDGE_H_
#define HUGEMM_RUNTIME_API_C_BRIDGE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "hugemm/hugemm.h"
#include "hugemm/runtime.h"

struct hugemm_runtime {
  std::unique_ptr<hugemm::Runtime> rt;
};

namespace hugemm {

// Sets this thread's message to the status's and returns its negative errno:
// InvalidArgument and OutOfRange -EINVAL, NotFound -ENOENT, AlreadyExists -EEXIST,
// PermissionDenied -EPERM, ResourceExhausted -ENOMEM, FailedPrecondition -EFAULT,
// Unavailable -EAGAIN, Unimplemented -EOPNOTSUPP, anything else -EIO.
int CApiFail(const absl::Status& status);
// Sets this thread's message and returns -err.
int CApiFail(int err, std::string message);
// Clears this thread's message and returns 0.
int CApiOk();

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_API_C_BRIDGE_H_
