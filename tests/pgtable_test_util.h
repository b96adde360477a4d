// Synthetic folios for shadow-table tests: descriptors over fake addresses and PFNs (the
// table never touches the data), owned by the test with one reference.
#ifndef HUGEMM_TESTS_PGTABLE_TEST_UTIL_H_
#define HUGEMM_TESTS_PGTABLE_TEST_UTIL_H_

#include <memory>
#include <vector>

#include "hugemm/folio.h"
#include "hugemm/geometry.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"

namespace hugemm::testing {

// Synthetic addresses and PFNs aligned to every leaf and folio size of every geometry.
inline constexpr uintptr_t kBase = uintptr_t{1} << 40;
inline constexpr uint64_t kBasePfn = uint64_t{1} << 28;

inline std::unique_ptr<Folio> FakeFolio(size_t bytes, uintptr_t va, uint64_t head_pfn) {
  auto f = std::make_unique<Folio>();
  f->order = static_cast<uint8_t>(PageOrder(bytes));
  f->data = reinterpret_cast<std::byte*>(va);
  f->head_pfn = head_pfn;
  f->counts.store(Folio::CountsWord(1, 0));
  return f;
}

inline constexpr Prot kRW = kProtRead | kProtWrite;

inline const void* Ptr(uintptr_t va) { return reinterpret_cast<const void*>(va); }

inline std::vector<Geometry> AllGeometries() {
  std::vector<Geometry> out = {X86_64Geometry(false), X86_64Geometry(true)};
  for (size_t granule : {size_t{4} << 10, size_t{16} << 10, size_t{64} << 10}) {
    out.push_back(*Arm64Geometry(granule));
  }
  return out;
}

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_PGTABLE_TEST_UTIL_H_
