// Virtual address -> region for every region of every allocator in the process: a fixed
// three-level radix over 48-bit addresses at 2M granularity (9 bits per level). A 1G
// region sits in one middle-level slot (tagged), so a 1G folio costs 8 bytes of index.
// Readers are lock-free; writers serialise on one mutex (pool growth and shrink only).
// Interior tables are never freed, so a reader never touches freed index memory.
#ifndef HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_
#define HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_

#include "absl/status/status.h"
#include "runtime/alloc/region.h"

namespace hugemm::alloc_internal {

// The region must be 2M (order 9) or 1G (order 18) and aligned to its size.
absl::Status IndexInsert(Region* region);
void IndexErase(Region* region);
Region* IndexLookup(const void* addr);

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_ADDRESS_INDEX_H_
