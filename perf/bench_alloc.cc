// The allocation benchmark (bench_alloc.h).
#include "perf/bench_alloc.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "hugemm/alloc.h"
#include "perf/bench_util.h"
#include "runtime/alloc/zero.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::perf {
namespace {

constexpr int kSamples = kAllocBenchSamples;

// Median ns per allocate+free over kSamples batches of `per_batch` pairs.
absl::StatusOr<Summary> TimeAllocFree(Allocator* alloc, int order, bool zero, int per_batch) {
  const AllocOptions opts{.zero = zero};
  {
    // Warm up: the pool grows and the thread's magazine fills.
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
    if (!h.ok()) return h.status();
  }
  std::vector<double> samples;
  for (int s = 0; s < kSamples; ++s) {
    const uint64_t t0 = NowNs();
    for (int i = 0; i < per_batch; ++i) {
      absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(order, opts);
      if (!h.ok()) return h.status();
      DoNotOptimize(h->data());
    }
    samples.push_back(static_cast<double>(NowNs() - t0) / per_batch);
  }
  return Summarize(samples);
}

absl::StatusOr<Summary> TimeMmapFaultMunmap(int iterations) {
  std::vector<double> samples;
  for (int i = 0; i < iterations; ++i) {
    const uint64_t t0 = NowNs();
    void* p = mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("mmap(MAP_HUGETLB) of 2M: ", std::strerror(errno)));
    }
    static_cast<volatile char*>(p)[0] = 1;  // the fault: the kernel zeroes the 2M page
    munmap(p, kPageSize2M);
    samples.push_back(static_cast<double>(NowNs() - t0));
  }
  return Summarize(samples);
}

// Median ns to zero `bytes` with `zero`, on memory from the allocator.
absl::StatusOr<double> TimeZero(Allocator* alloc, size_t page_size, int reps,
                                void (*zero)(void*, size_t)) {
  absl::StatusOr<FolioHandle> h =
      alloc->Allocate(page_size, {.page_size = page_size, .zero = false});
  if (!h.ok()) return h.status();
  std::vector<double> samples;
  for (int i = 0; i < reps; ++i) {
    const uint64_t t0 = NowNs();
    zero(h->data(), h->size());
    samples.push_back(static_cast<double>(NowNs() - t0));
    DoNotOptimize(h->data()[i % h->size()]);
  }
  return Summarize(samples).median;
}

// Median ns to zero a 2M folio that is not in the cache: rotate over `count` folios.
absl::StatusOr<double> TimeZeroCold(Allocator* alloc, int count, void (*zero)(void*, size_t)) {
  std::vector<FolioHandle> held;
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<FolioHandle> h = alloc->AllocateOrder(9, {.zero = false});
    if (!h.ok()) return h.status();
    held.push_back(std::move(*h));
  }
  std::vector<double> samples;
  for (int round = 0; round < 3; ++round) {
    for (FolioHandle& h : held) {
      const uint64_t t0 = NowNs();
      zero(h.data(), h.size());
      samples.push_back(static_cast<double>(NowNs() - t0));
    }
  }
  return Summarize(samples).median;
}

// Measured system-memory metadata per GiB for folios of `order` on `page_size` pages:
// grow a pool from empty to `pool_bytes`, fill it with such folios, and scale what its
// stats count (everything the allocator holds for them) to a GiB.
absl::StatusOr<double> MeasuredPerGiB(size_t page_size, int order, size_t pool_bytes) {
  absl::StatusOr<std::unique_ptr<Allocator>> alloc =
      Allocator::Create({.max_bytes_per_pool = pool_bytes, .thread_cache = false});
  if (!alloc.ok()) return alloc.status();
  std::vector<FolioHandle> held;
  const size_t count = pool_bytes >> (kPageShift + order);
  held.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<FolioHandle> h =
        (*alloc)->AllocateOrder(order, {.page_size = page_size, .zero = false});
    if (!h.ok()) return h.status();
    held.push_back(std::move(*h));
  }
  const PoolStats s = (*alloc)->Stats().front();
  return static_cast<double>(s.metadata_bytes) * static_cast<double>(kPageSize1G) /
         static_cast<double>(pool_bytes);
}

bool Free1G() {
  absl::StatusOr<sys::HugePagePool> p = sys::ReadHugePagePool(Os::Default(), kPageSize1G);
  return p.ok() && p->free >= 1;
}

}  // namespace

absl::StatusOr<AllocBenchResult> RunAllocBench(const AllocBenchConfig& config) {
  if (config.iterations < kSamples) {
    return absl::InvalidArgumentError(
        absl::StrCat("--iterations must be at least ", kSamples, ", not ", config.iterations));
  }
  AllocBenchResult r;
  r.iterations = config.iterations;
  r.descriptor_bytes = sizeof(Folio);
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create({});
  if (!alloc.ok()) return alloc.status();
  absl::StatusOr<Summary> fast = TimeAllocFree(alloc->get(), 9, false, r.iterations / kSamples);
  if (!fast.ok()) return fast.status();
  absl::StatusOr<Summary> zeroed = TimeAllocFree(alloc->get(), 9, true, 200);
  if (!zeroed.ok()) return zeroed.status();
  absl::StatusOr<Summary> slow = TimeMmapFaultMunmap(401);
  if (!slow.ok()) return slow.status();
  r.alloc_free_ns = *fast;
  r.alloc_free_zeroed_ns = *zeroed;
  r.mmap_fault_munmap_ns = *slow;

  absl::StatusOr<double> z2m_memset =
      TimeZero(alloc->get(), kPageSize2M, 101, alloc_internal::ZeroCached);
  if (!z2m_memset.ok()) return z2m_memset.status();
  absl::StatusOr<double> z2m_nt =
      TimeZero(alloc->get(), kPageSize2M, 101, alloc_internal::ZeroNonTemporal);
  if (!z2m_nt.ok()) return z2m_nt.status();
  absl::StatusOr<double> cold_memset = TimeZeroCold(alloc->get(), 32, alloc_internal::ZeroCached);
  if (!cold_memset.ok()) return cold_memset.status();
  absl::StatusOr<double> cold_nt = TimeZeroCold(alloc->get(), 32, alloc_internal::ZeroNonTemporal);
  if (!cold_nt.ok()) return cold_nt.status();
  r.zero_2m_memset_ns = *z2m_memset;
  r.zero_2m_nontemporal_ns = *z2m_nt;
  r.zero_2m_cold_memset_ns = *cold_memset;
  r.zero_2m_cold_nontemporal_ns = *cold_nt;
  if (Free1G()) {
    absl::StatusOr<double> a = TimeZero(alloc->get(), kPageSize1G, 5, alloc_internal::ZeroCached);
    absl::StatusOr<double> b =
        TimeZero(alloc->get(), kPageSize1G, 5, alloc_internal::ZeroNonTemporal);
    if (a.ok() && b.ok()) {
      r.zero_1g_memset_ns = *a;
      r.zero_1g_nontemporal_ns = *b;
    }
  }
  (*alloc)->Shrink();

  // The pools measured: 1 GiB of 2M pages (512 of them, grown from empty as any pool
  // is: the model's case), one 2M page of 4K folios (scaled: 4K folios cost per page,
  // not per extent) and one 1G page.
  struct Row {
    const char* name;
    size_t folio, page;
    int order;
    size_t pool;
  };
  const Row rows[] = {{"4K", kPageSize4K, kPageSize2M, 0, kPageSize2M},
                      {"2M", kPageSize2M, kPageSize2M, 9, kPageSize1G},
                      {"1G", kPageSize1G, kPageSize1G, 18, kPageSize1G}};
  for (const Row& row : rows) {
    const MetadataCost c = *FolioMetadataCost(row.folio, row.page);  // rows: real pools
    MetadataPerGiB m{.folios = row.name,
                     .model = c.bytes_per_gib,
                     .kernel = c.kernel_bytes_per_gib,
                     .kernel_hvo = c.kernel_hvo_bytes_per_gib};
    if (row.page == kPageSize2M || Free1G()) {
      if (absl::StatusOr<double> v = MeasuredPerGiB(row.page, row.order, row.pool); v.ok()) {
        m.measured = *v;
      }
    }
    if (row.folio == kPageSize2M) {
      // All-in per 2M folio: the measured 1 GiB pool, or the model when its pages were
      // not free.
      r.metadata_bytes_per_folio = (m.measured ? *m.measured : static_cast<double>(m.model)) /
                                   static_cast<double>(kPageSize1G / kPageSize2M);
    }
    r.metadata_per_gib.push_back(std::move(m));
  }
  return r;
}

}  // namespace hugemm::perf
