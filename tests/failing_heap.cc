#include "tests/failing_heap.h"

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace {

// Per thread: allocations to let through before one fails (-1: none fails), whether every
// one after fails too, and whether one failed.
thread_local long t_left = -1;
thread_local bool t_exhausted = false;
thread_local bool t_hit = false;
std::atomic<long> g_live{0};

void* Take(size_t n, size_t align, bool nothrow) {
  if (t_left == 0) {
    t_hit = true;
    if (!t_exhausted) t_left = -1;
    if (nothrow) return nullptr;
    throw std::bad_alloc();
  }
  if (t_left > 0) --t_left;
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n);
  } else if (posix_memalign(&p, align, n) != 0) {
    p = nullptr;
  }
  if (p == nullptr && !nothrow) throw std::bad_alloc();
  if (p != nullptr) g_live.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void Give(void* p) {
  if (p == nullptr) return;
  g_live.fetch_sub(1, std::memory_order_relaxed);
  std::free(p);
}

}  // namespace

namespace hugemm::testing {

void ArmHeapFailure(long k, bool exhausted) {
  t_hit = false;
  t_exhausted = exhausted;
  t_left = k;
}

bool DisarmHeapFailure() {
  t_left = -1;
  t_exhausted = false;
  const bool hit = t_hit;
  t_hit = false;
  return hit;
}

long LiveAllocations() { return g_live.load(); }

HeapFailuresPaused::HeapFailuresPaused() : left_(t_left), exhausted_(t_exhausted) { t_left = -1; }
HeapFailuresPaused::~HeapFailuresPaused() {
  t_left = left_;
  t_exhausted = exhausted_;
}

}  // namespace hugemm::testing

// The memory comes from malloc (Take), so free (Give) is its match: GCC, inlining these
// into a test's `new`, cannot see that and would warn of a mismatch.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) { return Take(n, 0, false); }
void* operator new[](size_t n) { return Take(n, 0, false); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return Take(n, 0, true); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return Take(n, 0, true); }
void* operator new(size_t n, std::align_val_t a) { return Take(n, static_cast<size_t>(a), false); }
void* operator new[](size_t n, std::align_val_t a) {
  return Take(n, static_cast<size_t>(a), false);
}
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Take(n, static_cast<size_t>(a), true);
}
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return Take(n, static_cast<size_t>(a), true);
}
void operator delete(void* p) noexcept { Give(p); }
void operator delete[](void* p) noexcept { Give(p); }
void operator delete(void* p, size_t) noexcept { Give(p); }
void operator delete[](void* p, size_t) noexcept { Give(p); }
void operator delete(void* p, std::align_val_t) noexcept { Give(p); }
void operator delete[](void* p, std::align_val_t) noexcept { Give(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { Give(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { Give(p); }
#pragma GCC diagnostic pop
