// The four kinds of memory source behind a Backing. Backing::Map runs the one mapping
// procedure every kind shares; a kind only says what to map (Prepare), what to give
// back (Release) and, where pagemap is silent, where the memory sits.
#ifndef HUGEMM_RUNTIME_BACKING_KIND_H_
#define HUGEMM_RUNTIME_BACKING_KIND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hugemm/backing.h"
#include "hugemm/os.h"

namespace hugemm::backing_internal {

// What Map needs from a kind: a file and offset to map (fd -1 for anonymous memory),
// checked against the kind's rules.
struct Source {
  int fd = -1;
  bool owns_fd = false;  // Map closes it once mapped, or on failure
  uint64_t offset = 0;
  int flags = 0;             // MAP_SHARED or MAP_PRIVATE (| MAP_ANONYMOUS)
  int fixed_node = -1;       // memory whose node is given, not chosen (devdax)
  std::string created_path;  // a file Prepare created: removed again if Map fails
};

// Thread-safe, as Backing: Prepare and Release may run on several threads at once.
class Kind {
 public:
  Kind(BackingKind kind, size_t page_size, Os& os) : kind_(kind), page_size_(page_size), os_(os) {}
  virtual ~Kind() = default;
  Kind(const Kind&) = delete;
  Kind& operator=(const Kind&) = delete;

  BackingKind kind() const { return kind_; }
  size_t page_size() const { return page_size_; }
  Os& os() const { return os_; }

  virtual std::string Describe() const = 0;
  // Where a named file lives (Backing::FilePath); "" for kinds without files.
  virtual std::string FilePath(absl::string_view /*name*/) const { return ""; }
  // The source for one mapping; an error (InvalidArgument for what the kind refuses)
  // leaves nothing behind.
  virtual absl::StatusOr<Source> Prepare(const MapRequest& request) = 0;
  // Gives back what Prepare took (a devdax offset range) after unmap or failure.
  virtual void Release(uint64_t /*offset*/, size_t /*length*/) {}
  // The PFN of source byte `offset` when pagemap does not show it; kUnknownPfn if the
  // kind has no other way to know.
  virtual uint64_t PfnWithoutPagemap(uint64_t /*offset*/) const { return kUnknownPfn; }
  // For an error of a mapping the kernel refused for want of memory: a limit of the
  // kind's own that may be what ran out ("" when none).
  virtual std::string LimitHint() const { return ""; }

 private:
  const BackingKind kind_;
  const size_t page_size_;
  Os& os_;
};

absl::StatusOr<std::unique_ptr<Kind>> NewHugetlb(const BackingOptions& options, Os& os);
absl::StatusOr<std::unique_ptr<Kind>> NewHugetlbfs(const BackingOptions& options, Os& os);
absl::StatusOr<std::unique_ptr<Kind>> NewDevDax(const BackingOptions& options, Os& os);
absl::StatusOr<std::unique_ptr<Kind>> NewAnon(const BackingOptions& options, Os& os);

// OK if the kernel has a huge page pool of this size; InvalidArgument naming the sizes
// it has otherwise.
absl::Status CheckHugePageSize(Os& os, size_t page_size);

}  // namespace hugemm::backing_internal

#endif  // HUGEMM_RUNTIME_BACKING_KIND_H_
