// The GUP flags: their names and the combinations that make sense.
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
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
    parts.push_back(absl::StrCat("0x", absl::Hex(static_cast<uint32_t>(rest))));
  }
  return parts.empty() ? "0" : absl::StrJoin(parts, "|");
}

absl::Status CheckGupFlags(GupFlags flags) {
  if (HasAny(flags, ~kAllGupFlags)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GUP flags ", GupFlagsName(flags), ": unknown bits 0x",
                     absl::Hex(static_cast<uint32_t>(flags & ~kAllGupFlags))));
  }
  if (HasAny(flags, kGupPin) == HasAny(flags, kGupGet)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GUP flags ", GupFlagsName(flags), ": need exactly one of PIN and GET"));
  }
  if (HasAny(flags, kGupLongterm) && !HasAny(flags, kGupPin)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GUP flags ", GupFlagsName(flags), ": LONGTERM is only for PIN"));
  }
  return absl::OkStatus();
}

}  // namespace hugemm
