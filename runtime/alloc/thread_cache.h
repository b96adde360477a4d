// Per-thread magazines: for each (pool, order) a small stack of free folios that its
// thread uses, so allocate and free of a cached folio take no lock and no atomic
// read-modify-write beyond the folio's refcount. A magazine refills half-full from its
// pool and drains half when full, under the pool's mutex; it drains wholly at thread
// exit, on FlushThisThread and when the allocator goes away. Another thread drains the
// magazines of threads that are not inside a cache operation (DrainIdle): when a pool
// has nothing left for an allocation, and on the allocator's Shrink. How the two sides
// agree without a lock on the owner's path is in thread_cache.cc (ThreadCache).
//
// Ownership: the set (one per allocator) owns every thread's cache; a thread_local list
// names the caches of this thread by allocator id. Ids are never reused, and a registry
// of live ids (one mutex, taken only at thread exit, allocator teardown and when a thread
// makes a cache) lets an exiting thread drain exactly the caches whose allocator still
// lives, and a thread forget those of allocators gone, so a thread that outlives many
// allocators names only the live ones.
#ifndef HUGEMM_RUNTIME_ALLOC_THREAD_CACHE_H_
#define HUGEMM_RUNTIME_ALLOC_THREAD_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "hugemm/folio.h"

namespace hugemm::alloc_internal {

class Pool;
struct ThreadCache;

class ThreadCacheSet {
 public:
  ThreadCacheSet();
  // Frees what Close left: call Close first. No thread may be inside the set.
  ~ThreadCacheSet();
  ThreadCacheSet(const ThreadCacheSet&) = delete;
  ThreadCacheSet& operator=(const ThreadCacheSet&) = delete;

  // Magazine capacity for folios of this order: 0 = never cached (64M and up: a
  // thread must not sit on memory that size).
  static int Capacity(int order);

  // A free folio of `order` from this thread's magazine, refilled from the pool when
  // empty. Its refcount is 0.
  absl::StatusOr<Folio*> Take(Pool* pool, int order);
  // Caches a folio whose refcount just reached 0. false: not cached (the caller frees
  // it to the pool).
  bool Push(Pool* pool, Folio* folio);
  // Returns this thread's magazines to their pools.
  void FlushThisThread();
  // Returns to their pools the magazines (of `pool` only, or of every pool when null) of
  // every thread not inside a cache operation at the moment, this one included when it
  // is not. True if any held a folio. Takes one membarrier(2); false, taking nothing,
  // where the kernel refuses it. Not from inside a pool's mutex.
  bool DrainIdle(Pool* pool);

  // The allocator is going away: drains every thread's magazines into their pools and
  // refuses every later Push (the caller frees the folio to its pool), so that a folio's
  // last reference may drop on another thread meanwhile and after. A Push already inside
  // a cache when Close starts is waited for and drained with it. No Take, FlushThisThread
  // or DrainIdle may run concurrently or after.
  void Close();

  // Thread exit: drain and forget `cache`.
  void Retire(ThreadCache* cache);

  // Tests: how many allocators' caches the calling thread still names (those of
  // allocators gone are forgotten when the thread next makes a cache).
  static size_t NamedByThisThread();

 private:
  ThreadCache* Mine();
  ThreadCache* MineSlow();
  // This thread's cache if it has one; never makes one.
  ThreadCache* Existing();
  // Returns all of a cache's magazines; true if any held a folio.
  static bool Drain(ThreadCache* cache);
  // Returns this thread's magazines of one pool; true if any held a folio.
  static bool DrainPool(ThreadCache* cache, Pool* pool);

  const uint64_t id_;
  // Set by Close, under mu_ and before it releases its claims: a Push that enters its
  // owner section after that sees it (see ThreadCache).
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  std::vector<std::unique_ptr<ThreadCache>> caches_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_THREAD_CACHE_H_
