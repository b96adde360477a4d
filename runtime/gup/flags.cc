// The GUP flags: their names and the combinations that make sense.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "hugemm/gup.h"
#include "runtime/gup/pin_steps.h"

namespace hugemm {
namespace {

constexpr uint32_t kAllGupFlags =
    kGupPin | kGupGet | kGupWrite | kGupLongterm | kGupFastOnly | kGupPartial;

}  // namespace

std::string GupFlagsName(uint32_t flags) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {kGupPin, "PIN"},
      {kGupGet, "GET"},
      {kGupWrite, "WRITE"},
      {kGupLongterm, "LONGTERM"},
      {kGupFastOnly, "FAST_ONLY"},
      {kGupPartial, "PARTIAL"},
  };
  std::vector<std::string> parts;
  for (const auto& [bit, name] : kNames) {
    if (flags & bit) parts.emplace_back(name);
  }
  if (uint32_t rest = flags & ~kAllGupFlags) parts.push_back(absl::StrFormat("0x%x", rest));
  return parts.empty() ? "0" : absl::StrJoin(parts, "|");
}

namespace gup_internal {

absl::Status CheckFlags(uint32_t flags) {
  if ((flags & ~kAllGupFlags) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown GUP flags 0x%x", flags));
  }
  if (((flags & kGupPin) != 0) == ((flags & kGupGet) != 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GUP flags %s: need exactly one of PIN and GET", GupFlagsName(flags)));
  }
  if ((flags & kGupLongterm) && !(flags & kGupPin)) {
    return absl::InvalidArgumentError("GUP flags: LONGTERM is only for PIN");
  }
  return absl::OkStatus();
}

}  // namespace gup_internal
}  // namespace hugemm
