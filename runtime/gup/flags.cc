// The GUP flags: their names and the combinations that make sense.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "hugemm/gup.h"
#include "runtime/gup/pin_steps.h"

namespace hugemm {

using gup_internal::kAllGupFlags;

std::string GupFlagsName(GupFlags flags) {
  static constexpr std::pair<GupFlags, const char*> kNames[] = {
      {kGupPin, "PIN"},
      {kGupGet, "GET"},
      {kGupWrite, "WRITE"},
      {kGupLongterm, "LONGTERM"},
      {kGupFastOnly, "FAST_ONLY"},
      {kGupPartial, "PARTIAL"},
  };
  std::vector<std::string> parts;
  for (const auto& [bit, name] : kNames) {
    if (HasAny(flags, bit)) parts.emplace_back(name);
  }
  if (const GupFlags rest = flags & ~kAllGupFlags; rest != kGupNone) {
    parts.push_back(absl::StrFormat("0x%x", static_cast<uint32_t>(rest)));
  }
  return parts.empty() ? "0" : absl::StrJoin(parts, "|");
}

absl::Status CheckGupFlags(GupFlags flags) {
  if (HasAny(flags, ~kAllGupFlags)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GUP flags %s: unknown bits 0x%x", GupFlagsName(flags),
                        static_cast<uint32_t>(flags & ~kAllGupFlags)));
  }
  if (HasAny(flags, kGupPin) == HasAny(flags, kGupGet)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GUP flags %s: need exactly one of PIN and GET", GupFlagsName(flags)));
  }
  if (HasAny(flags, kGupLongterm) && !HasAny(flags, kGupPin)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GUP flags %s: LONGTERM is only for PIN", GupFlagsName(flags)));
  }
  return absl::OkStatus();
}

}  // namespace hugemm
