// Status plumbing shared by the layers above sys.
#ifndef HUGEMM_RUNTIME_SYS_STATUS_H_
#define HUGEMM_RUNTIME_SYS_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace hugemm::sys {

// "context: message", same code, payloads (the errno of ErrnoStatus) kept.
[[nodiscard]] absl::Status Annotate(const absl::Status& status, absl::string_view context);
// "message<suffix>", same code, payloads kept.
[[nodiscard]] absl::Status AppendToMessage(const absl::Status& status, absl::string_view suffix);
// The same status carrying `err` for ErrnoOf, as if ErrnoStatus had made it: for a
// refusal the library decides itself whose C errno is still the kernel's (EBUSY, ...).
[[nodiscard]] absl::Status WithErrno(const absl::Status& status, int err);

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_STATUS_H_
