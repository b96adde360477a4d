// Copyright hugemm authors. SPDX-License-Identifier: Apache-2.0
//
// Bit operators for the enum-class bitmasks of the API (GupFlags, Prot, FolioFlag).
//
// A bitmask is an `enum class` so that it mixes with nothing else: `Pin(p, n, kProtWrite)`
// does not compile. An enum opts in to |, &, ~, |=, &= and the tests below by one line
// beside its definition:
//
//   template <> inline constexpr bool kIsBitmask<GupFlags> = true;
//
// The operators live in namespace hugemm and are found by argument-dependent lookup, so
// they apply to hugemm's own enums only.
#ifndef HUGEMM_BITMASK_H_
#define HUGEMM_BITMASK_H_

#include <type_traits>

namespace hugemm {

template <typename E>
inline constexpr bool kIsBitmask = false;

template <typename E>
concept Bitmask = std::is_enum_v<E> && kIsBitmask<E>;

template <Bitmask E>
constexpr E operator|(E a, E b) {
  using U = std::underlying_type_t<E>;
  return static_cast<E>(static_cast<U>(a) | static_cast<U>(b));
}
template <Bitmask E>
constexpr E operator&(E a, E b) {
  using U = std::underlying_type_t<E>;
  return static_cast<E>(static_cast<U>(a) & static_cast<U>(b));
}
template <Bitmask E>
constexpr E operator~(E a) {
  using U = std::underlying_type_t<E>;
  return static_cast<E>(static_cast<U>(~static_cast<U>(a)));
}
template <Bitmask E>
constexpr E& operator|=(E& a, E b) {
  return a = a | b;
}
template <Bitmask E>
constexpr E& operator&=(E& a, E b) {
  return a = a & b;
}
// True when any bit is set.
template <Bitmask E>
constexpr bool Any(E bits) {
  return bits != E{};
}
// True when `set` holds any bit of `bits`.
template <Bitmask E>
constexpr bool HasAny(E set, E bits) {
  return Any(set & bits);
}

}  // namespace hugemm

#endif  // HUGEMM_BITMASK_H_
