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

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_STATUS_H_
