// Constructors of the four backing kinds; Backing::Create dispatches here.
#ifndef HUGEMM_RUNTIME_BACKING_KINDS_H_
#define HUGEMM_RUNTIME_BACKING_KINDS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "hugemm/backing.h"

namespace hugemm::backing_internal {

absl::StatusOr<std::shared_ptr<Backing>> CreateHugetlb(const BackingOptions& options);
absl::StatusOr<std::shared_ptr<Backing>> CreateHugetlbfs(const BackingOptions& options);
absl::StatusOr<std::shared_ptr<Backing>> CreateDevDax(const BackingOptions& options);
absl::StatusOr<std::shared_ptr<Backing>> CreateAnon(const BackingOptions& options);

// OK if the kernel has a huge page pool of this size.
absl::Status CheckHugePageSize(size_t page_size);

}  // namespace hugemm::backing_internal

#endif  // HUGEMM_RUNTIME_BACKING_KINDS_H_
