// One cached registration and the state word that decides who may use it and who
// deregisters it.
#ifndef HUGEMM_RUNTIME_VERBS_MR_ENTRY_H_
#define HUGEMM_RUNTIME_VERBS_MR_ENTRY_H_

#include <infiniband/verbs.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "hugemm/gup.h"
#include "hugemm/notify.h"
#include "hugemm/verbs.h"

namespace hugemm::verbs_internal {

class CacheCore;

// The state word (see cache_core.h): references in the low 32 bits (one for the cache
// while the entry is listed, one per handle), whether its memory changed (kInvalid), whether
// it is retired (never handed out again; its retirer deregisters it), and release tokens
// from bit 40 up.
inline constexpr uint64_t kRefMask = 0xffffffffu;
inline constexpr uint64_t kRetired = uint64_t{1} << 32;
inline constexpr uint64_t kInvalid = uint64_t{1} << 33;
inline constexpr uint64_t kToken = uint64_t{1} << 40;

struct MrEntry {
  // Written before the entry is published in the index, read-only afterwards (the index's
  // locks order the writes before every reader).
  CacheCore* core = nullptr;  // nullptr once the cache is gone: the last release cleans up
  MrRegistrar* registrar = nullptr;
  ibv_pd* pd = nullptr;
  uintptr_t start = 0;  // the range registered
  size_t length = 0;
  int access = 0;
  ibv_mr* mr = nullptr;
  std::unique_ptr<RangeSubscription> sub;
  uint64_t seq = 0;  // the sequence word the registration was made under

  std::atomic<uint64_t> state{0};
  std::atomic<uint64_t> last_use{0};  // the cache's clock at the last release, for LRU
  // The cache's list of retired entries waiting to be reaped (under its retired_mu_),
  // threaded through the entries so that retiring one never needs the heap.
  MrEntry* next_retired = nullptr;

  bool Covers(uintptr_t addr, size_t len) const {
    return addr >= start && addr - start <= length && len <= length - (addr - start);
  }
  // One more handle, unless retired.
  bool TryRef() {
    uint64_t s = state.load(std::memory_order_relaxed);
    while ((s & kRetired) == 0) {
      if (state.compare_exchange_weak(s, s + 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }
  // Retires an entry no handle holds (only the cache's reference left). True for the one
  // caller that did it.
  bool TryRetireUnused() {
    uint64_t s = state.load(std::memory_order_relaxed);
    while ((s & kRefMask) == 1 && (s & kRetired) == 0) {
      if (state.compare_exchange_weak(s, s | kRetired, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
        return true;
      }
    }
    return false;
  }
  bool retired() const { return (state.load(std::memory_order_acquire) & kRetired) != 0; }
};

}  // namespace hugemm::verbs_internal

#endif  // HUGEMM_RUNTIME_VERBS_MR_ENTRY_H_
