// Page sizes by name: the kernel's base page and the x86-64 huge page sizes. Plain
// functions of their arguments: safe from any thread.
#ifndef HUGEMM_PAGE_SIZE_H_
#define HUGEMM_PAGE_SIZE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hugemm {

inline constexpr size_t kPageSize4K = size_t{4} << 10;
inline constexpr size_t kPageSize2M = size_t{2} << 20;
inline constexpr size_t kPageSize1G = size_t{1} << 30;
inline constexpr int kPageShift = 12;

// "4K", "2M", "1G", "64K", ... (exact binary units, up to T); ParsePageSize reads it back.
[[nodiscard]] std::string PageSizeName(size_t page_size);
// Accepts "4K", "4k", "4KB", "2M", "2MB", "1G", "1T", "2048kB", "1048576kB" or a plain
// number of bytes: digits, then the unit, with whitespace before and after ignored.
// InvalidArgument, quoting the text, for anything else, for a size that overflows and for
// one that is not a power of two of at least 4K.
[[nodiscard]] absl::StatusOr<size_t> ParsePageSize(absl::string_view text);
// log2(page_size / 4K): 0 for 4K, 9 for 2M, 18 for 1G. page_size must be a power of
// two of at least 4K.
[[nodiscard]] int PageOrder(size_t page_size);
// Bytes for people: "512 B", "4 KiB", "2 MiB", "1.5 GiB"; a fraction in the largest unit
// the value reaches, never "1024.0" of one (2^20 - 1 bytes is "1.0 MiB").
[[nodiscard]] std::string HumanBytes(uint64_t bytes);

}  // namespace hugemm

#endif  // HUGEMM_PAGE_SIZE_H_
