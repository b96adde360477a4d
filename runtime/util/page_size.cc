#include "hugemm/page_size.h"

#include <bit>
#include <cctype>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "runtime/util/format.h"

namespace hugemm {

std::string PageSizeName(size_t page_size) {
  static constexpr const char* kUnits[] = {"", "K", "M", "G", "T"};
  int unit = 0;
  size_t v = page_size;
  while (v >= 1024 && v % 1024 == 0 && unit < 4) {
    v /= 1024;
    ++unit;
  }
  return absl::StrCat(v, kUnits[unit]);
}

absl::StatusOr<size_t> ParsePageSize(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  size_t digits = 0;
  while (digits < t.size() && std::isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  size_t value = 0;
  if (digits == 0 || !absl::SimpleAtoi(t.substr(0, digits), &value)) {
    return absl::InvalidArgumentError(absl::StrCat("bad page size \"", text, "\""));
  }
  std::string unit = absl::AsciiStrToUpper(t.substr(digits));
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  int shift = 0;
  if (unit.empty()) {
    shift = 0;
  } else if (unit == "K") {
    shift = 10;
  } else if (unit == "M") {
    shift = 20;
  } else if (unit == "G") {
    shift = 30;
  } else if (unit == "T") {
    shift = 40;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("bad page size unit in \"", text, "\""));
  }
  if (value > (~size_t{0} >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat("page size \"", text, "\" overflows"));
  }
  size_t bytes = value << shift;
  if (bytes < kPageSize4K || !std::has_single_bit(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("page size \"", text, "\" is not a power of two of at least 4K"));
  }
  return bytes;
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  uint64_t scale = 1;
  // The largest unit the value reaches; a fraction that would round to 1024.0 of it
  // ("1024.0 KiB" for one byte short of a MiB) is named in the next unit instead.
  while (unit < 6 && (bytes >= scale * 1024 ||
                      (unit > 0 && bytes % scale != 0 &&
                       static_cast<double>(bytes) / static_cast<double>(scale) >= 1023.95))) {
    scale *= 1024;
    ++unit;
  }
  if (bytes % scale == 0) return absl::StrCat(bytes / scale, " ", kUnits[unit]);
  return hugemm::Format("%.1f %s", static_cast<double>(bytes) / static_cast<double>(scale),
                        kUnits[unit]);
}

int PageOrder(size_t page_size) { return std::countr_zero(page_size) - kPageShift; }

}  // namespace hugemm
