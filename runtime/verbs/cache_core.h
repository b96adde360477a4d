// The MR cache's machinery behind hugemm::MrCache: the hit path over the index, the miss
// path that subscribes, pins and registers, and the retirement of registrations (by an
// invalidation, a last release, an eviction or a flush) with their reaping.
//
// Lifetime of an entry. Its state word counts one reference for the cache (while the
// entry is listed) plus one per handle, and release tokens (kToken): a releaser turns
// its handle reference into a token in one atomic, decides, then drops the token. An
// entry is retired by one CAS that succeeds only while no handle holds it; the retirer
// deregisters it. Retired entries are reaped (unlisted, unsubscribed, deleted) under the
// cache's lock once no token is left, so a releaser never touches freed memory.
//
// Why no invalidation is lost. A hit trusts the sequence word alone. Retirement also
// needs to know, and both parties write the one state word: the notifier callback (after
// the word was bumped) sets kInvalid with a read-modify-write, a releaser drops its
// reference with another. Whichever comes second sees both the flag and the handle count,
// so an entry that is both invalid and unused is always retired, at once, by exactly one.
//
// Lock order: the cache's mu_, then the notifier registry's lock (unsubscribing), then a
// shard lock of the index. Callbacks run under the registry's lock and take only
// retired_mu_ (a leaf).
#ifndef HUGEMM_RUNTIME_VERBS_CACHE_CORE_H_
#define HUGEMM_RUNTIME_VERBS_CACHE_CORE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/runtime.h"
#include "hugemm/verbs.h"
#include "runtime/sys/fork_watch.h"
#include "runtime/verbs/mr_entry.h"
#include "runtime/verbs/mr_index.h"

namespace hugemm::verbs_internal {

// What a miss registers: a buffer, an extent, or (external memory) the request itself.
struct Unit {
  uintptr_t start = 0;
  size_t length = 0;
  uint64_t buffer_id = 0;  // 0: external memory
};

class CacheCore {
 public:
  CacheCore(Runtime& runtime, const MrCacheOptions& options);
  ~CacheCore();
  CacheCore(const CacheCore&) = delete;
  CacheCore& operator=(const CacheCore&) = delete;

  absl::StatusOr<MrHandle> Get(ibv_pd* pd, const void* addr, size_t length, int access);
  size_t Flush();
  MrCacheStats Stats();
  const MrCacheOptions& options() const { return options_; }

  // A handle's release: gives its reference back (entry may be orphaned) and unpins. Needs
  // neither the cache nor the runtime.
  static void Release(MrHandle& handle);

  // Tests: a cache that never checks validity (and so never drops a registration when
  // its memory changes), to show that the check is what keeps it exact.
  void set_check_validity(bool on) { check_validity_.store(on, std::memory_order_relaxed); }

  // This process is a child of fork() of the one that made the cache: the registrations
  // (and the device context they belong to) are that process's as well.
  bool InForkedChild() const { return fork_.InChild(); }

 private:
  enum class Why { kInvalidated, kEvicted, kFlushed };

  bool Valid(const MrEntry* e) const {
    return !check_validity_.load(std::memory_order_relaxed) ||
           e->sub->sequence().load(std::memory_order_acquire) == e->seq;
  }
  static void DropReference(MrEntry* e);
  void OnInvalidate(MrEntry* e);
  // Deregisters a retired entry and queues it for reaping.
  void Retire(MrEntry* e, Why why);
  void Reap() ABSL_LOCKS_EXCLUDED(mu_);
  void ReapLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Room for one more registration of `bytes`, evicting least recently used ones.
  absl::Status Reserve(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unreserve(size_t bytes);

  absl::StatusOr<Unit> UnitOf(uintptr_t addr, size_t length);
  bool SameUnit(const Unit& unit, uintptr_t addr);
  // Pins the handle's bytes into its spans.
  absl::Status Pin(MrHandle& handle, GupFlags flags);
  // Registers the unit holding the request. *raced when it lost a race with a change of
  // the memory: then the caller looks again.
  absl::StatusOr<MrHandle> Miss(ibv_pd* pd, uintptr_t addr, size_t length, int access,
                                GupFlags flags, bool* raced);

  Runtime& runtime_;
  // The process that made the cache (not the runtime's table, whose type libhugemm-verbs
  // does not see).
  const ForkWatch fork_;
  const MrCacheOptions options_;
  MrRegistrar& registrar_;
  MrIndex index_;
  std::atomic<bool> check_validity_{true};

  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer (the system abseil is not)
  // A standard set: its insert either inserts or, the heap failing, leaves it as it was
  // (abseil's tables are left broken by an allocation that throws).
  std::unordered_set<MrEntry*> all_ ABSL_GUARDED_BY(mu_);
  // Registrations alive or reserved: changed under mu_ upwards, anywhere downwards.
  std::atomic<size_t> live_entries_{0};
  std::atomic<uint64_t> live_bytes_{0};

  std::mutex retired_mu_;
  MrEntry* retired_ ABSL_GUARDED_BY(retired_mu_) = nullptr;  // through next_retired

  // Ticks once per last release of a registration: the order LRU evicts in.
  std::atomic<uint64_t> use_clock_{0};

  std::atomic<uint64_t> misses_{0};
  std::atomic<uint64_t> registrations_{0};
  std::atomic<uint64_t> deregistrations_{0};
  std::atomic<uint64_t> invalidations_{0};
  std::atomic<uint64_t> evictions_{0};
};

}  // namespace hugemm::verbs_internal

#endif  // HUGEMM_RUNTIME_VERBS_CACHE_CORE_H_
