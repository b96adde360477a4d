// Constructors of the four backing kinds; Backing::Create dispatches here.
#ifndef HUGEMM_RUNTIME_BACKING_KINDS_H_
#define HUGEMM_RUNTIME_BACKING_KINDS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "hugemm/backing.h"

namespace hugemm::backing_internal {

// Each gets the Os the options name (Os::Default() when they name none).
absl::StatusOr<std::shared_ptr<Backing>> CreateHugetlb(const BackingOptions& options, Os& os);
absl::StatusOr<std::shared_ptr<Backing>> CreateHugetlbfs(const BackingOptions& options, Os& os);
absl::StatusOr<std::shared_ptr<Backing>> CreateDevDax(const BackingOptions& options, Os& os);
absl::StatusOr<std::shared_ptr<Backing>> CreateAnon(const BackingOptions& options, Os& os);

// OK if the kernel has a huge page pool of this size.
absl::Status CheckHugePageSize(Os& os, size_t page_size);

}  // namespace hugemm::backing_internal

#endif  // HUGEMM_RUNTIME_BACKING_KINDS_H_
