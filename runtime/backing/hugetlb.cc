// hugetlb: an anonymous memfd of huge pages. The default source: it needs no mount and
// its pages come from the kernel's pool of the requested size.
#include <linux/memfd.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>

#include "absl/strings/str_cat.h"
#include "runtime/backing/kind.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::backing_internal {
namespace {

class HugetlbBacking final : public Kind {
 public:
  HugetlbBacking(size_t page_size, Os& os) : Kind(BackingKind::kHugetlb, page_size, os) {}

  std::string Describe() const override {
    return absl::StrCat("hugetlb ", PageSizeName(page_size()));
  }

  absl::StatusOr<Source> Prepare(const MapRequest& request) override {
    if (!request.name.empty() || request.offset.has_value()) {
      return absl::InvalidArgumentError(
          "hugetlb memory is anonymous: no file name or offset (use hugetlbfs)");
    }
    // MFD_HUGE_* encodes log2(page size) in the flag bits above MFD_HUGE_SHIFT.
    unsigned int flags =
        MFD_CLOEXEC | MFD_HUGETLB |
        (static_cast<unsigned int>(std::countr_zero(page_size())) << MFD_HUGE_SHIFT);
    absl::StatusOr<int> fd =
        os().MemfdCreate(absl::StrCat("hugemm-", PageSizeName(page_size())), flags);
    if (!fd.ok()) return fd.status();
    if (absl::Status st = os().Ftruncate(*fd, static_cast<off_t>(request.length)); !st.ok()) {
      (void)os().Close(*fd);
      return st;
    }
    Source s;
    s.fd = *fd;
    s.owns_fd = true;
    s.flags = request.shared ? MAP_SHARED : MAP_PRIVATE;
    return s;
  }
};

}  // namespace

absl::Status CheckHugePageSize(Os& os, size_t page_size) {
  absl::StatusOr<std::vector<size_t>> sizes = sys::HugePageSizes(os, "/sys");
  if (!sizes.ok()) return sizes.status();
  if (std::find(sizes->begin(), sizes->end(), page_size) == sizes->end()) {
    std::string have;
    for (size_t s : *sizes) absl::StrAppend(&have, have.empty() ? "" : ", ", PageSizeName(s));
    return absl::InvalidArgumentError(
        absl::StrCat("huge page size ", PageSizeName(page_size),
                     " not supported by this kernel (it has: ", have.empty() ? "none" : have, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Kind>> NewHugetlb(const BackingOptions& options, Os& os) {
  const size_t page_size = options.page_size ? options.page_size : kPageSize2M;
  if (absl::Status st = CheckHugePageSize(os, page_size); !st.ok()) return st;
  return std::make_unique<HugetlbBacking>(page_size, os);
}

}  // namespace hugemm::backing_internal
