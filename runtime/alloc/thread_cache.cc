#include "runtime/alloc/thread_cache.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <unordered_set>

#include "runtime/alloc/pool.h"

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

struct ThreadCache {
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

}  // namespace

ThreadCacheSet::ThreadCacheSet() : id_(g_next_id.fetch_add(1, std::memory_order_relaxed)) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  Live().insert(id_);
}

ThreadCacheSet::~ThreadCacheSet() {
  {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    Live().erase(id_);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& cache : caches_) Drain(cache.get());
  caches_.clear();
}

int ThreadCacheSet::Capacity(int order) {
  const size_t bytes = kPageSize4K << order;
  return static_cast<int>(std::min<size_t>(kMagazineSlots, kMagazineBytes / bytes));
}

ThreadCache* ThreadCacheSet::Mine() {
  if (t_tls.last.id == id_) return t_tls.last.cache;
  return MineSlow();
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

absl::StatusOr<Folio*> ThreadCacheSet::Take(Pool* pool, int order) {
  const int cap = Capacity(order);
  ThreadCache* cache = cap > 0 ? Mine() : nullptr;
  if (cache == nullptr) {
    Folio* f = nullptr;
    absl::StatusOr<int> n = pool->AllocateBatch(order, &f, 1);
    if (!n.ok()) return n.status();
    return f;
  }
  Magazine& m = cache->For(pool, order);
  if (m.n == 0) {
    absl::StatusOr<int> n = pool->AllocateBatch(order, m.items.data(), std::max(1, cap / 2));
    if (!n.ok() && n.status().code() == absl::StatusCode::kResourceExhausted &&
        DrainPool(cache, pool)) {
      // This thread's own magazines of other orders held what the pool lacked.
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
  Magazine& m = cache->For(pool, folio->order);
  if (m.n == cap) {
    const int half = std::max(1, cap / 2);
    pool->FreeBatch(m.items.data() + (m.n - half), half);
    m.n -= half;
  }
  m.items[m.n++] = folio;
  return true;
}

void ThreadCacheSet::Drain(ThreadCache* cache) {
  for (auto& pm : cache->pools) {
    if (!pm) continue;
    for (Magazine& m : pm->by_order) {
      if (m.n > 0) pm->pool->FreeBatch(m.items.data(), m.n);
      m.n = 0;
    }
  }
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
  if (ThreadCache* cache = Mine()) Drain(cache);
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
