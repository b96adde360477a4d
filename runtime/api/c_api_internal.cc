#include "runtime/api/c_api_internal.h"

#include <cerrno>
#include <utility>

namespace hugemm::c_api_internal {
namespace {

thread_local std::string g_last_error;

}  // namespace

int NegativeErrnoOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return -EINVAL;
    case absl::StatusCode::kNotFound:
      return -ENOENT;
    case absl::StatusCode::kAlreadyExists:
      return -EEXIST;
    case absl::StatusCode::kPermissionDenied:
      return -EPERM;
    case absl::StatusCode::kResourceExhausted:
      return -ENOMEM;
    case absl::StatusCode::kFailedPrecondition:
      return -EFAULT;
    case absl::StatusCode::kUnavailable:
      return -EAGAIN;
    case absl::StatusCode::kUnimplemented:
      return -EOPNOTSUPP;
    default:
      return -EIO;
  }
}

int Fail(const absl::Status& status) {
  g_last_error = std::string(status.message());
  return NegativeErrnoOf(status.code());
}

int Fail(int err, std::string message) {
  g_last_error = std::move(message);
  return -err;
}

int Ok() {
  g_last_error.clear();
  return 0;
}

const char* LastError() { return g_last_error.c_str(); }

}  // namespace hugemm::c_api_internal
