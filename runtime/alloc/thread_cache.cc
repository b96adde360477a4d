#include "runtime/alloc/thread_cache.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "runtime/alloc/pool.h"
#include "runtime/util/sanitizers.h"

namespace hugemm::alloc_internal {

namespace {
constexpr int kMagazineSlots = 32;
constexpr size_t kMagazineBytes = size_t{32} << 20;
}  // namespace

struct Magazine {
  int n = 0;
  std::array<Folio*, kMagazineSlots> items;
};

struct PoolMagazines {
  Pool* pool = nullptr;
  std::array<Magazine, kOrders> by_order;
};

// Who may touch a cache's magazines. Its thread, inside an owner section (OwnerSection),
// and a drainer on another thread (ThreadCacheSet::DrainIdle), under the set's mutex, when
// the thread is in none. The two agree as Dekker's pair does: the owner stores `busy`,
// then reads `claimed`; the drainer stores `claimed`, then reads `busy`. Each side's store
// is ordered before its load by a full barrier, so at least one of them sees the other's
// store: either the drainer sees the owner busy and leaves the cache alone, or the owner
// sees the claim and waits for the drainer. The owner's barrier costs nothing on its own:
// it is a compiler barrier, and the drainer's membarrier(PRIVATE_EXPEDITED) makes every
// running thread of the process execute a full barrier (a thread not running passes
// through the scheduler's, which is one). ThreadSanitizer, which models neither, builds
// take sequentially consistent operations on both sides instead.
struct ThreadCache {
  std::atomic<uint32_t> busy{0};     // the owner's nesting depth of sections; owner-written
  std::atomic<bool> claimed{false};  // a drainer is at work on the cache
  std::vector<std::unique_ptr<PoolMagazines>> pools;  // by pool index

  Magazine& For(Pool* pool, int order) {
    const size_t i = static_cast<size_t>(pool->index());
    if (i >= pools.size()) pools.resize(i + 1);
    if (!pools[i]) {
      pools[i] = std::make_unique<PoolMagazines>();
      pools[i]->pool = pool;
    }
    return pools[i]->by_order[order];
  }
};

namespace {

// membarrier(2), registered once per process: false when the kernel (or a seccomp filter)
// refuses it, and then no drainer touches another thread's cache.
bool AsymmetricFenceAvailable() {
#ifdef HUGEMM_TSAN
  return true;
#else
  static const bool ok =
      ::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  return ok;
#endif
}

// The drainer's half of the barrier pair: a full barrier on every thread of the process.
bool HeavyFence() {
#ifdef HUGEMM_TSAN
  return true;  // both sides' operations are sequentially consistent there
#else
  return ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0;
#endif
}

#ifdef HUGEMM_TSAN
constexpr std::memory_order kDekkerStore = std::memory_order_seq_cst;
constexpr std::memory_order kDekkerLoad = std::memory_order_seq_cst;
#else
constexpr std::memory_order kDekkerStore = std::memory_order_relaxed;
constexpr std::memory_order kDekkerLoad = std::memory_order_acquire;
#endif

// The owner's barrier between its store and its load. Where membarrier(2) works, the
// drainer's HeavyFence supplies the owner's half and this is a compiler barrier; where it
// does not, only Close drains another thread's cache, and the owner pays a real barrier.
inline void OwnerFence() {
#ifdef HUGEMM_TSAN
  std::atomic_signal_fence(std::memory_order_seq_cst);
#else
  if (AsymmetricFenceAvailable()) [[likely]] {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
#endif
}

std::mutex g_registry_mu;
std::unordered_set<uint64_t>& Live() ABSL_EXCLUSIVE_LOCKS_REQUIRED(g_registry_mu) {
  static auto* live = new std::unordered_set<uint64_t>();
  return *live;
}
std::atomic<uint64_t> g_next_id{1};

struct TlsEntry {
  uint64_t id = 0;
  ThreadCacheSet* set = nullptr;
  ThreadCache* cache = nullptr;
};

struct Tls {
  TlsEntry last;
  std::vector<TlsEntry> all;
  bool dead = false;

  ~Tls() {
    // Folios released from here on (by other thread_local destructors) go straight to
    // their pools.
    dead = true;
    last = TlsEntry{};
    std::lock_guard<std::mutex> lock(g_registry_mu);
    for (const TlsEntry& e : all) {
      if (Live().count(e.id)) e.set->Retire(e.cache);
    }
    all.clear();
  }
};

thread_local Tls t_tls;

// The owner's side of the pair (see ThreadCache): while one lives, no drainer touches the
// cache. Nested sections (a free inside an allocation's growth) only count: the outer one
// already keeps drainers away.
class OwnerSection {
 public:
  OwnerSection(ThreadCache* cache, std::mutex& drainers) : cache_(cache) {
    depth_ = cache->busy.load(std::memory_order_relaxed);
    if (depth_ > 0) {
      cache->busy.store(depth_ + 1, std::memory_order_relaxed);
      return;
    }
    for (;;) {
      cache->busy.store(1, kDekkerStore);
      OwnerFence();
      if (!cache->claimed.load(kDekkerLoad)) [[likely]]
        return;
      // A drainer has claimed the cache: step back, and wait until it lets go (it holds
      // the set's mutex from its claim to its release).
      cache->busy.store(0, std::memory_order_release);
      std::lock_guard<std::mutex> wait(drainers);
    }
  }
  ~OwnerSection() { cache_->busy.store(depth_, std::memory_order_release); }
  OwnerSection(const OwnerSection&) = delete;
  OwnerSection& operator=(const OwnerSection&) = delete;

 private:
  ThreadCache* const cache_;
  uint32_t depth_;
};

}  // namespace

ThreadCacheSet::ThreadCacheSet() : id_(g_next_id.fetch_add(1, std::memory_order_relaxed)) {
  (void)AsymmetricFenceAvailable();  // registers before any thread caches a folio
  std::lock_guard<std::mutex> lock(g_registry_mu);
  Live().insert(id_);
}

ThreadCacheSet::~ThreadCacheSet() {
  if (!closed_.load(std::memory_order_relaxed)) Close();
  std::lock_guard<std::mutex> lock(mu_);
  caches_.clear();
}

void ThreadCacheSet::Close() {
  {
    // No exiting thread retires a cache into the set from here on (a retirement runs
    // under this mutex, so one under way has finished).
    std::lock_guard<std::mutex> lock(g_registry_mu);
    Live().erase(id_);
  }
  std::lock_guard<std::mutex> lock(mu_);
  // Before the claims are let go: an owner that enters a section after that sees it.
  closed_.store(true, std::memory_order_relaxed);
  for (const auto& cache : caches_) cache->claimed.store(true, kDekkerStore);
  // The drainer's half of the pair; without membarrier the owners pay theirs (OwnerFence).
  if (!AsymmetricFenceAvailable() || !HeavyFence()) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
  for (const auto& cache : caches_) {
    // Its thread is in a Push that began before the claim: it finishes, or it saw the
    // claim and steps back to wait for mu_, held here. Either way, briefly.
    while (cache->busy.load(kDekkerLoad) != 0) std::this_thread::yield();
  }
  for (const auto& cache : caches_) {
    Drain(cache.get());
    cache->pools.clear();  // no Push touches it again: each finds the set closed
  }
  for (const auto& cache : caches_) cache->claimed.store(false, std::memory_order_release);
}

int ThreadCacheSet::Capacity(int order) {
  const size_t bytes = kPageSize4K << order;
  return static_cast<int>(std::min<size_t>(kMagazineSlots, kMagazineBytes / bytes));
}

ThreadCache* ThreadCacheSet::Mine() {
  if (t_tls.last.id == id_) return t_tls.last.cache;
  return MineSlow();
}

ThreadCache* ThreadCacheSet::Existing() {
  if (t_tls.last.id == id_) return t_tls.last.cache;
  if (t_tls.dead) return nullptr;
  for (const TlsEntry& e : t_tls.all) {
    if (e.id == id_) return e.cache;
  }
  return nullptr;
}

ThreadCache* ThreadCacheSet::MineSlow() {
  if (t_tls.dead) return nullptr;
  for (const TlsEntry& e : t_tls.all) {
    if (e.id == id_) {
      t_tls.last = e;
      return e.cache;
    }
  }
  ThreadCache* cache;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_.load(std::memory_order_relaxed)) return nullptr;  // a release after Close
    caches_.push_back(std::make_unique<ThreadCache>());
    cache = caches_.back().get();
  }
  {
    // The caches of allocators gone went with them: forget their entries, or a thread
    // that sees allocators come and go (runtimes opened and closed) names them forever.
    std::lock_guard<std::mutex> lock(g_registry_mu);
    std::erase_if(t_tls.all, [](const TlsEntry& e) { return Live().count(e.id) == 0; });
  }
  t_tls.all.push_back({id_, this, cache});
  t_tls.last = t_tls.all.back();
  return cache;
}

namespace {
// The pool had nothing for the request: what magazines hold may serve it.
bool Exhausted(const absl::StatusOr<int>& n) {
  return !n.ok() && n.status().code() == absl::StatusCode::kResourceExhausted;
}
}  // namespace

absl::StatusOr<Folio*> ThreadCacheSet::Take(Pool* pool, int order) {
  const int cap = Capacity(order);
  ThreadCache* cache = cap > 0 ? Mine() : nullptr;
  if (cache == nullptr) {
    // Not cached (a folio of 64M or more): the magazines of smaller orders, this thread's
    // and the idle threads', may hold the pieces it would merge from.
    Folio* f = nullptr;
    absl::StatusOr<int> n = pool->AllocateBatch(order, &f, 1);
    if (Exhausted(n)) {
      bool drained = false;
      if (ThreadCache* mine = Existing()) {
        OwnerSection section(mine, mu_);
        drained = DrainPool(mine, pool);
      }
      if (DrainIdle(pool) || drained) n = pool->AllocateBatch(order, &f, 1);
    }
    if (!n.ok()) return n.status();
    return f;
  }
  OwnerSection section(cache, mu_);
  Magazine& m = cache->For(pool, order);
  if (m.n == 0) {
    absl::StatusOr<int> n = pool->AllocateBatch(order, m.items.data(), std::max(1, cap / 2));
    if (Exhausted(n) && DrainPool(cache, pool)) {
      // This thread's own magazines of other orders held what the pool lacked.
      n = pool->AllocateBatch(order, m.items.data(), std::max(1, cap / 2));
    }
    if (Exhausted(n) && DrainIdle(pool)) {
      // Other threads' magazines held it: freed there, and idle since.
      n = pool->AllocateBatch(order, m.items.data(), std::max(1, cap / 2));
    }
    if (!n.ok()) return n.status();
    m.n = *n;
  }
  return m.items[--m.n];
}

bool ThreadCacheSet::Push(Pool* pool, Folio* folio) {
  const int cap = Capacity(folio->order);
  if (cap == 0) return false;
  ThreadCache* cache = Mine();
  if (cache == nullptr) return false;
  OwnerSection section(cache, mu_);
  // Inside the section: either Close waits for this push and drains it, or this sees
  // the set closed (the claim's release, or mu_, brings the flag with it).
  if (closed_.load(std::memory_order_acquire)) [[unlikely]]
    return false;
  Magazine& m = cache->For(pool, folio->order);
  if (m.n == cap) {
    const int half = std::max(1, cap / 2);
    pool->FreeBatch(m.items.data() + (m.n - half), half);
    m.n -= half;
  }
  m.items[m.n++] = folio;
  return true;
}

bool ThreadCacheSet::Drain(ThreadCache* cache) {
  bool any = false;
  for (auto& pm : cache->pools) {
    if (!pm) continue;
    for (Magazine& m : pm->by_order) {
      if (m.n == 0) continue;
      pm->pool->FreeBatch(m.items.data(), m.n);
      m.n = 0;
      any = true;
    }
  }
  return any;
}

bool ThreadCacheSet::DrainPool(ThreadCache* cache, Pool* pool) {
  const size_t i = static_cast<size_t>(pool->index());
  if (i >= cache->pools.size() || !cache->pools[i]) return false;
  bool any = false;
  for (Magazine& m : cache->pools[i]->by_order) {
    if (m.n == 0) continue;
    pool->FreeBatch(m.items.data(), m.n);
    m.n = 0;
    any = true;
  }
  return any;
}

void ThreadCacheSet::FlushThisThread() {
  if (ThreadCache* cache = Mine()) {
    OwnerSection section(cache, mu_);
    Drain(cache);
  }
}

bool ThreadCacheSet::DrainIdle(Pool* pool) {
  if (!AsymmetricFenceAvailable()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& cache : caches_) cache->claimed.store(true, kDekkerStore);
  bool any = false;
  if (HeavyFence()) {
    for (const auto& cache : caches_) {
      if (cache->busy.load(kDekkerLoad) != 0) continue;  // its thread is at work in it
      any |= pool != nullptr ? DrainPool(cache.get(), pool) : Drain(cache.get());
    }
  }
  for (const auto& cache : caches_) cache->claimed.store(false, std::memory_order_release);
  return any;
}

size_t ThreadCacheSet::NamedByThisThread() { return t_tls.all.size(); }

void ThreadCacheSet::Retire(ThreadCache* cache) {
  std::lock_guard<std::mutex> lock(mu_);
  Drain(cache);
  caches_.erase(std::remove_if(caches_.begin(), caches_.end(),
                               [cache](const auto& c) { return c.get() == cache; }),
                caches_.end());
}

}  // namespace hugemm::alloc_internal
