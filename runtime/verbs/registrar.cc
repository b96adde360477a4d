// The default registrar: libibverbs' ibv_reg_mr and ibv_dereg_mr.
#include <cerrno>
#include <cstring>

#include "hugemm/verbs.h"
#include "runtime/util/format.h"

namespace hugemm {
namespace {

absl::StatusCode CodeOf(int err) {
  switch (err) {
    case EINVAL:
      return absl::StatusCode::kInvalidArgument;
    case ENOMEM:
      return absl::StatusCode::kResourceExhausted;
    case EFAULT:
      return absl::StatusCode::kFailedPrecondition;
    case EACCES:
    case EPERM:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

const char* DeviceName(ibv_pd* pd) {
  const char* name = pd->context != nullptr && pd->context->device != nullptr
                         ? ibv_get_device_name(pd->context->device)
                         : nullptr;
  return name != nullptr ? name : "?";
}

class VerbsRegistrar final : public MrRegistrar {
 public:
  absl::StatusOr<ibv_mr*> Register(ibv_pd* pd, void* addr, size_t length, int access) override {
    ibv_mr* mr = ibv_reg_mr(pd, addr, length, access);
    if (mr == nullptr) {
      const int err = errno != 0 ? errno : EIO;
      return absl::Status(
          CodeOf(err), hugemm::Format("ibv_reg_mr on %s: %s", DeviceName(pd), std::strerror(err)));
    }
    return mr;
  }
  absl::Status Deregister(ibv_mr* mr) override {
    const char* device = DeviceName(mr->pd);
    if (int err = ibv_dereg_mr(mr); err != 0) {
      return absl::Status(CodeOf(err),
                          hugemm::Format("ibv_dereg_mr on %s: %s", device, std::strerror(err)));
    }
    return absl::OkStatus();
  }
};

}  // namespace

MrRegistrar& MrRegistrar::Verbs() {
  static auto* registrar = new VerbsRegistrar();  // never destroyed: handles may outlive main
  return *registrar;
}

}  // namespace hugemm
