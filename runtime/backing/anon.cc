// anon: 4K anonymous pages. For machines without huge pages: everything works, with a
// leaf per 4K page and slower pins.
#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "runtime/backing/kind.h"

namespace hugemm::backing_internal {
namespace {

class AnonBacking final : public Kind {
 public:
  explicit AnonBacking(Os& os) : Kind(BackingKind::kAnon, kPageSize4K, os) {}

  std::string Describe() const override { return "anon 4K"; }

  absl::StatusOr<Source> Prepare(const MapRequest& request) override {
    if (!request.name.empty() || request.offset.has_value()) {
      return absl::InvalidArgumentError("anon memory has no file name or offset");
    }
    Source s;
    s.flags = (request.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS;
    return s;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Kind>> NewAnon(const BackingOptions& options, Os& os) {
  if (options.page_size != 0 && options.page_size != kPageSize4K) {
    return absl::InvalidArgumentError(
        absl::StrCat("anon backing has 4K pages, not ", PageSizeName(options.page_size)));
  }
  return std::make_unique<AnonBacking>(os);
}

}  // namespace hugemm::backing_internal
