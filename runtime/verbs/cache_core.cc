// The MR cache: the hit path, releases, retirement, reaping, eviction and flushing.
#include "runtime/verbs/cache_core.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>
#include <utility>

#include "hugemm/folio.h"
#include "runtime/util/format.h"

namespace hugemm::verbs_internal {
namespace {

constexpr int kKnownAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                             IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC |
                             IBV_ACCESS_MW_BIND | IBV_ACCESS_HUGETLB | IBV_ACCESS_RELAXED_ORDERING;
// Access that lets the device write: the pin under a handle is then a write pin.
constexpr int kWriteAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
// Races with changes of the memory a Get retries before it gives up.
constexpr int kAttempts = 16;

absl::Status CheckRequest(ibv_pd* pd, const void* addr, size_t length, int access) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  if (pd == nullptr) return absl::InvalidArgumentError("MrCache::Get: pd is null");
  if (length == 0) return absl::InvalidArgumentError("MrCache::Get: empty range");
  if (a + length < a) {
    return absl::InvalidArgumentError(
        hugemm::Format("MrCache::Get: [0x%x, +%u) wraps the address space", a, length));
  }
  if (access & IBV_ACCESS_ON_DEMAND) {
    return absl::InvalidArgumentError(
        "MrCache::Get: IBV_ACCESS_ON_DEMAND registrations follow the mapping themselves and "
        "need no cache");
  }
  if (access & IBV_ACCESS_ZERO_BASED) {
    return absl::InvalidArgumentError(
        "MrCache::Get: IBV_ACCESS_ZERO_BASED is not supported: a cached registration starts "
        "at its buffer, not at the bytes asked for");
  }
  if (access & ~kKnownAccess) {
    return absl::InvalidArgumentError(
        hugemm::Format("MrCache::Get: unknown access bits 0x%x", access & ~kKnownAccess));
  }
  return absl::OkStatus();
}

void ReportDeregisterError(const MrEntry& e, const absl::Status& st) {
  std::fprintf(stderr, "hugemm: deregistering the MR of [0x%llx, +%zu): %s\n",
               static_cast<unsigned long long>(e.start), e.length,
               std::string(st.message()).c_str());
}

}  // namespace

CacheCore::CacheCore(Runtime& runtime, const MrCacheOptions& options)
    : runtime_(runtime),
      options_(options),
      registrar_(options.registrar != nullptr ? *options.registrar : MrRegistrar::Verbs()) {}

CacheCore::~CacheCore() {
  if (InForkedChild()) [[unlikely]] {
    // A child of fork(): the registrations are the parent's as well (the device context is
    // one kernel object) and so is the memory under them: nothing is deregistered, and the
    // subscriptions are left to the child's exit as the runtime leaves everything. No lock:
    // a thread that held one at the fork does not exist here. An entry a handle still holds
    // is freed at the handle's last release, which deregisters nothing (no registrar).
    for (MrEntry* e : all_) {
      (void)e->sub.release();
      e->core = nullptr;
      e->registrar = nullptr;
      e->state.fetch_sub(1, std::memory_order_acq_rel);
    }
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  ReapLocked();
  for (MrEntry* e : all_) {
    e->sub.reset();  // no callback runs after this
    if (e->retired()) {
      delete e;  // deregistered when it was retired
    } else if (e->TryRetireUnused()) {
      if (absl::Status st = registrar_.Deregister(e->mr); !st.ok()) ReportDeregisterError(*e, st);
      delete e;
    } else {
      // Held: the last handle's release deregisters and deletes it.
      e->core = nullptr;
      e->state.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
  std::lock_guard<std::mutex> retired_lock(retired_mu_);
  retired_ = nullptr;  // all of them were in all_
}

absl::StatusOr<MrHandle> CacheCore::Get(ibv_pd* pd, const void* addr, size_t length, int access) {
  if (absl::Status st = CheckRequest(pd, addr, length, access); !st.ok()) return st;
  if (InForkedChild()) [[unlikely]] {
    return absl::FailedPreconditionError(hugemm::Format(
        "MrCache::Get of [%p, +%u): this process is a fork() child of the one that made the "
        "cache, whose registrations and memory are that process's; make a runtime and a cache "
        "of its own",
        addr, length));
  }
  const auto a = reinterpret_cast<uintptr_t>(addr);
  const bool write = (access & kWriteAccess) != 0;
  const GupFlags flags = write ? kGupPin | kGupWrite : kGupPin;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    MrEntry* e = index_.Find(a, [&](MrEntry* c) {
      return c->pd == pd && (c->access & access) == access && c->Covers(a, length) && Valid(c) &&
             c->TryRef();
    });
    if (e != nullptr) {
      MrHandle h;
      h.entry_ = e;
      h.addr_ = a;
      h.length_ = length;
      h.dirty_ = write;
      // Valid after the pin: nothing changed since the registration was made, so the
      // folios just pinned are the memory it maps.
      if (Pin(h, flags).ok() && Valid(e)) {
        index_.CountHit(a);
        return h;
      }
      Release(h);  // changed under the hit, or refused: the miss path looks again
    }
    bool raced = false;
    absl::StatusOr<MrHandle> h = Miss(pd, a, length, access, flags, &raced);
    if (!raced) return h;
    std::this_thread::yield();
  }
  return absl::UnavailableError(
      hugemm::Format("MrCache::Get: the memory under [%p, +%u) kept changing while it was "
                     "being registered (%d attempts)",
                     addr, length, kAttempts));
}

void CacheCore::Release(MrHandle& handle) {
  MrEntry* e = std::exchange(handle.entry_, nullptr);
  if (e == nullptr) return;
  // Deregistration (if this was the last handle of a dropped registration) comes first:
  // the memory may go back only once the device can no longer reach it.
  DropReference(e);
  // Through the folios alone, which outlive the runtime while they hold a pin: a handle
  // may be released after the runtime went (hugemm_close).
  for (const FolioSpan& s : handle.spans_) {
    FolioUngrab(s.folio, static_cast<int32_t>(s.pages), RefKind::kPin, handle.dirty_);
  }
  handle.spans_.clear();
}

void CacheCore::DropReference(MrEntry* e) {
  // The reference becomes a token, which keeps the entry from being reaped while this
  // thread still looks at it.
  const uint64_t s = e->state.fetch_add(kToken - 1, std::memory_order_acq_rel) + kToken - 1;
  CacheCore* core = e->core;
  if (core == nullptr) {  // the cache is gone
    if ((s & kRefMask) == 0) {
      // No registrar: the cache went in a child of fork(), which deregisters nothing.
      if (e->registrar != nullptr) {
        if (absl::Status st = e->registrar->Deregister(e->mr); !st.ok()) {
          ReportDeregisterError(*e, st);
        }
      }
      delete e;
      return;
    }
  } else if ((s & kRefMask) == 1) {  // the last handle
    // A tick of the cache's own clock, not the time: reading a clock can be a system call
    // (a guest without a usable TSC), and LRU needs only the order of the releases.
    e->last_use.store(core->use_clock_.fetch_add(1, std::memory_order_relaxed) + 1,
                      std::memory_order_relaxed);
    // A registration invalidated before a fork is still the parent's in the child.
    if ((s & kInvalid) != 0 && !core->InForkedChild() && e->TryRetireUnused()) {
      core->Retire(e, Why::kInvalidated);
    }
  }
  e->state.fetch_sub(kToken, std::memory_order_release);
}

void CacheCore::OnInvalidate(MrEntry* e) {
  if (!check_validity_.load(std::memory_order_relaxed)) return;
  // The subscription bumped the entry's word before calling this, so hits already refuse
  // it; what is left is to deregister it now if no handle holds it, or at the last release.
  const uint64_t s = e->state.fetch_or(kInvalid, std::memory_order_acq_rel);
  if ((s & kRefMask) == 1 && e->TryRetireUnused()) Retire(e, Why::kInvalidated);
}

void CacheCore::Retire(MrEntry* e, Why why) {
  if (absl::Status st = registrar_.Deregister(e->mr); !st.ok()) ReportDeregisterError(*e, st);
  deregistrations_.fetch_add(1, std::memory_order_relaxed);
  live_entries_.fetch_sub(1, std::memory_order_relaxed);
  live_bytes_.fetch_sub(e->length, std::memory_order_relaxed);
  if (why == Why::kInvalidated) invalidations_.fetch_add(1, std::memory_order_relaxed);
  if (why == Why::kEvicted) evictions_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(retired_mu_);
  e->next_retired = std::exchange(retired_, e);
}

void CacheCore::Reap() {
  {
    std::lock_guard<std::mutex> lock(retired_mu_);
    if (retired_ == nullptr) return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  ReapLocked();
}

void CacheCore::ReapLocked() {
  MrEntry* retired = nullptr;
  {
    std::lock_guard<std::mutex> lock(retired_mu_);
    retired = std::exchange(retired_, nullptr);
  }
  MrEntry* later = nullptr;
  MrEntry** later_end = &later;
  while (retired != nullptr) {
    MrEntry* e = std::exchange(retired, retired->next_retired);
    // A releaser may still hold a token on it: leave it for the next reap.
    if ((e->state.load(std::memory_order_acquire) & ~kInvalid) != (kRetired | 1)) {
      e->next_retired = nullptr;
      *later_end = e;
      later_end = &e->next_retired;
      continue;
    }
    index_.Erase(e);
    all_.erase(e);
    e->sub.reset();
    delete e;
  }
  if (later != nullptr) {
    std::lock_guard<std::mutex> lock(retired_mu_);
    *later_end = std::exchange(retired_, later);
  }
}

absl::Status CacheCore::Reserve(size_t bytes) {
  if (bytes > options_.max_bytes) {
    return absl::ResourceExhaustedError(
        hugemm::Format("MrCache: a registration of %u bytes is larger than max_bytes (%u)", bytes,
                       options_.max_bytes));
  }
  auto fits = [&] {
    return live_entries_.load(std::memory_order_relaxed) + 1 <= options_.max_entries &&
           live_bytes_.load(std::memory_order_relaxed) + bytes <= options_.max_bytes;
  };
  if (!fits()) {
    // The least recently released registrations no handle holds go first.
    std::vector<MrEntry*> unused;
    for (MrEntry* e : all_) {
      if ((e->state.load(std::memory_order_relaxed) & (kRefMask | kRetired)) == 1) {
        unused.push_back(e);
      }
    }
    std::sort(unused.begin(), unused.end(), [](const MrEntry* x, const MrEntry* y) {
      return x->last_use.load(std::memory_order_relaxed) <
             y->last_use.load(std::memory_order_relaxed);
    });
    for (MrEntry* e : unused) {
      if (fits()) break;
      if (e->TryRetireUnused()) Retire(e, Why::kEvicted);
    }
    if (!fits()) {
      return absl::ResourceExhaustedError(hugemm::Format(
          "MrCache: no room for a registration of %u bytes: %u registrations, %u bytes in all, "
          "are held (max_entries %u, max_bytes %u)",
          bytes, live_entries_.load(), live_bytes_.load(), options_.max_entries,
          options_.max_bytes));
    }
  }
  live_entries_.fetch_add(1, std::memory_order_relaxed);
  live_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  return absl::OkStatus();
}

void CacheCore::Unreserve(size_t bytes) {
  live_entries_.fetch_sub(1, std::memory_order_relaxed);
  live_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
}

size_t CacheCore::Flush() {
  if (InForkedChild()) [[unlikely]]
    return 0;  // the registrations are the parent's (see the destructor)
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (MrEntry* e : all_) {
    if (e->TryRetireUnused()) {
      Retire(e, Why::kFlushed);
      ++n;
    }
  }
  ReapLocked();
  return n;
}

MrCacheStats CacheCore::Stats() {
  MrCacheStats s;
  std::lock_guard<std::mutex> lock(mu_);
  ReapLocked();
  s.hits = index_.hits();
  s.misses = misses_.load(std::memory_order_relaxed);
  s.registrations = registrations_.load(std::memory_order_relaxed);
  s.deregistrations = deregistrations_.load(std::memory_order_relaxed);
  s.invalidations = invalidations_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  for (const MrEntry* e : all_) {
    const uint64_t state = e->state.load(std::memory_order_relaxed);
    if (state & kRetired) continue;
    ++s.entries;
    s.bytes += e->length;
    if ((state & kRefMask) > 1) ++s.held;
  }
  return s;
}

}  // namespace hugemm::verbs_internal
