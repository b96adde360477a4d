#include "runtime/alloc/zero.h"

#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace hugemm::alloc_internal {

void ZeroCached(void* p, size_t n) { std::memset(p, 0, n); }

void ZeroNonTemporal(void* p, size_t n) {
#if defined(__x86_64__)
  auto* v = static_cast<__m128i*>(p);
  const __m128i z = _mm_setzero_si128();
  for (size_t i = 0; i < n / sizeof(__m128i); i += 4) {
    _mm_stream_si128(v + i, z);
    _mm_stream_si128(v + i + 1, z);
    _mm_stream_si128(v + i + 2, z);
    _mm_stream_si128(v + i + 3, z);
  }
  // Non-temporal stores are weakly ordered: fence before anyone else may read.
  _mm_sfence();
#else
  std::memset(p, 0, n);
#endif
}

void ZeroFolioMemory(void* p, size_t n) {
  // Small folios are likely read soon by the caller: keep them in cache.
  if (n < kNonTemporalFrom) {
    ZeroCached(p, n);
  } else {
    ZeroNonTemporal(p, n);
  }
}

}  // namespace hugemm::alloc_internal
