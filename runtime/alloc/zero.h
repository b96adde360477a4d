// Zeroing a folio for its next owner. Two honest ways, measured by `hugemm bench alloc`:
// plain memset (glibc's rep stosb / vector stores through the cache) and explicit
// non-temporal stores that bypass it. Measured on the 2-core Xeon VM this was written
// on (4 MiB L2 per core): on cold memory non-temporal stores ran about 2x faster at
// every size from 64K to 1G (~20 GB/s against ~10 GB/s for up to 32 MiB, ~12.8 against
// ~4.8 GB/s for 1G); on a 2M folio still hot in L2, memset ran about 2x faster. A
// large folio handed to a new owner is usually cold and usually a DMA buffer the CPU
// need not cache, so folios from 1M up are zeroed non-temporally and smaller ones,
// likely touched by the caller at once, with memset.
#ifndef HUGEMM_RUNTIME_ALLOC_ZERO_H_
#define HUGEMM_RUNTIME_ALLOC_ZERO_H_

#include <cstddef>

namespace hugemm::alloc_internal {

// Folios of at least this many bytes are zeroed with non-temporal stores.
inline constexpr size_t kNonTemporalFrom = size_t{1} << 20;

// memset(p, 0, n).
void ZeroCached(void* p, size_t n);
// Non-temporal 16-byte stores then a fence; p and n multiples of 64.
void ZeroNonTemporal(void* p, size_t n);
// What the allocator uses: the faster of the two for a folio of n bytes.
void ZeroFolioMemory(void* p, size_t n);

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_ZERO_H_
