// How much a program can map: the user half of the address space, as mmap hands it out
// without an address hint.
#ifndef HUGEMM_RUNTIME_SYS_ADDRESS_SPACE_H_
#define HUGEMM_RUNTIME_SYS_ADDRESS_SPACE_H_

#include <cstddef>

namespace hugemm::sys {

// log2 of the user address space. On x86-64 mmap places mappings below 2^47, also with
// 5-level paging (it goes above only for a hint above them); arm64's is 48 bits.
#if defined(__x86_64__)
inline constexpr int kUserAddressBits = 47;
#else
inline constexpr int kUserAddressBits = 48;
#endif

// The most a single mapping can span: the user address space less its first page, which
// the kernel never maps.
inline constexpr size_t kMaxMappingBytes = (size_t{1} << kUserAddressBits) - 4096;

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_ADDRESS_SPACE_H_
