// `hugemm bench alloc`: allocate + free of a cached 2M folio (no zeroing) against
// mmap(MAP_HUGETLB) + first touch + munmap of 2M, timed in the same run; the metadata
// bytes per folio; and the two ways of zeroing, which decide ZeroFolioMemory.
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
#include "runtime/cli/command.h"
#include "runtime/sys/hugepages.h"
#include "runtime/util/json.h"

namespace hugemm::perf {
namespace {

constexpr int kSamples = 31;

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
// fill one native page with them and scale.
absl::StatusOr<double> MeasuredPerGiB(size_t page_size, int order) {
  absl::StatusOr<std::unique_ptr<Allocator>> alloc =
      Allocator::Create({.max_bytes_per_pool = page_size, .thread_cache = false});
  if (!alloc.ok()) return alloc.status();
  std::vector<FolioHandle> held;
  const size_t count = page_size >> (kPageShift + order);
  for (size_t i = 0; i < count; ++i) {
    absl::StatusOr<FolioHandle> h =
        (*alloc)->AllocateOrder(order, {.page_size = page_size, .zero = false});
    if (!h.ok()) return h.status();
    held.push_back(std::move(*h));
  }
  const PoolStats s = (*alloc)->Stats().front();
  return static_cast<double>(s.metadata_bytes) * static_cast<double>(kPageSize1G / page_size);
}

bool Free1G() {
  absl::StatusOr<sys::HugePagePool> p = sys::ReadHugePagePool(kPageSize1G);
  return p.ok() && p->free >= 1;
}

int RunAllocBench(const cli::Args& in) {
  cli::Args args = in;
  const bool json = cli::TakeFlag(&args, "--json");
  const std::string iters = cli::TakeValue(&args, "--iterations");
  if (int rc = cli::RejectLeftovers("bench alloc", args)) return rc;
  const int iterations = iters.empty() ? 200000 : std::atoi(iters.c_str());
  if (iterations < kSamples) {
    std::fprintf(stderr, "hugemm bench alloc: --iterations must be at least %d\n", kSamples);
    return 2;
  }
  auto fail = [](const absl::Status& st) {
    std::fprintf(stderr, "hugemm bench alloc: %s\n", std::string(st.message()).c_str());
    return 1;
  };

  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create({});
  if (!alloc.ok()) return fail(alloc.status());
  absl::StatusOr<Summary> fast = TimeAllocFree(alloc->get(), 9, false, iterations / kSamples);
  if (!fast.ok()) return fail(fast.status());
  absl::StatusOr<Summary> zeroed = TimeAllocFree(alloc->get(), 9, true, 200);
  if (!zeroed.ok()) return fail(zeroed.status());
  absl::StatusOr<Summary> slow = TimeMmapFaultMunmap(401);
  if (!slow.ok()) return fail(slow.status());
  const double ratio = slow->median / fast->median;

  std::vector<PoolStats> stats = (*alloc)->Stats();
  const double meta_per_folio =
      stats.empty() || stats[0].folios == 0
          ? 0
          : static_cast<double>(stats[0].metadata_bytes) / static_cast<double>(stats[0].folios);

  absl::StatusOr<double> z2m_memset =
      TimeZero(alloc->get(), kPageSize2M, 101, alloc_internal::ZeroCached);
  absl::StatusOr<double> z2m_nt =
      TimeZero(alloc->get(), kPageSize2M, 101, alloc_internal::ZeroNonTemporal);
  if (!z2m_memset.ok()) return fail(z2m_memset.status());
  if (!z2m_nt.ok()) return fail(z2m_nt.status());
  absl::StatusOr<double> cold_memset = TimeZeroCold(alloc->get(), 32, alloc_internal::ZeroCached);
  absl::StatusOr<double> cold_nt = TimeZeroCold(alloc->get(), 32, alloc_internal::ZeroNonTemporal);
  if (!cold_memset.ok()) return fail(cold_memset.status());
  if (!cold_nt.ok()) return fail(cold_nt.status());
  double z1g_memset = 0, z1g_nt = 0;
  if (Free1G()) {
    absl::StatusOr<double> a = TimeZero(alloc->get(), kPageSize1G, 5, alloc_internal::ZeroCached);
    absl::StatusOr<double> b =
        TimeZero(alloc->get(), kPageSize1G, 5, alloc_internal::ZeroNonTemporal);
    if (a.ok() && b.ok()) z1g_memset = *a, z1g_nt = *b;
  }
  (*alloc)->Shrink();

  struct Row {
    const char* name;
    size_t folio, page;
    int order;
  };
  const Row rows[] = {{"4K", kPageSize4K, kPageSize2M, 0},
                      {"2M", kPageSize2M, kPageSize2M, 9},
                      {"1G", kPageSize1G, kPageSize1G, 18}};
  Json per_gib = Json::MakeObject();
  std::string table;
  for (const Row& r : rows) {
    const MetadataCost c = FolioMetadataCost(r.folio, r.page);
    double measured = -1;
    if (r.page == kPageSize2M || Free1G()) {
      if (absl::StatusOr<double> m = MeasuredPerGiB(r.page, r.order); m.ok()) measured = *m;
    }
    Json row = Json::MakeObject();
    row.Set("model", c.bytes_per_gib);
    if (measured >= 0) row.Set("measured", measured);
    row.Set("kernel", c.kernel_bytes_per_gib);
    row.Set("kernel_hvo", c.kernel_hvo_bytes_per_gib);
    per_gib.Set(r.name, std::move(row));
    absl::StrAppendFormat(&table, "  %-3s folios  %12s  (measured %12s)   kernel %10s  (HVO %s)\n",
                          r.name, HumanBytes(c.bytes_per_gib),
                          measured >= 0 ? HumanBytes(static_cast<uint64_t>(measured)) : "n/a",
                          HumanBytes(c.kernel_bytes_per_gib),
                          HumanBytes(c.kernel_hvo_bytes_per_gib));
  }

  if (json) {
    Json out = Json::MakeObject();
    out.Set("alloc_free_ns", fast->median);
    out.Set("mmap_fault_munmap_ns", slow->median);
    out.Set("speedup", ratio);
    out.Set("metadata_bytes_per_folio", meta_per_folio);
    out.Set("descriptor_bytes", sizeof(Folio));
    out.Set("alloc_free_zeroed_ns", zeroed->median);
    out.Set("zero_2m_memset_ns", *z2m_memset);
    out.Set("zero_2m_nontemporal_ns", *z2m_nt);
    out.Set("zero_2m_cold_memset_ns", *cold_memset);
    out.Set("zero_2m_cold_nontemporal_ns", *cold_nt);
    if (z1g_memset > 0) {
      out.Set("zero_1g_memset_ns", z1g_memset);
      out.Set("zero_1g_nontemporal_ns", z1g_nt);
    }
    out.Set("metadata_bytes_per_gib", std::move(per_gib));
    out.Set("iterations", iterations);
    std::printf("%s\n", out.Dump().c_str());
    return 0;
  }
  std::printf("allocate+free, cached 2M folio, no zeroing   %10.1f ns  (min %.1f, max %.1f)\n",
              fast->median, fast->min, fast->max);
  std::printf("mmap(MAP_HUGETLB)+touch+munmap of 2M         %10.1f ns  (min %.1f, max %.1f)\n",
              slow->median, slow->min, slow->max);
  std::printf("speedup                                      %10.1f x\n", ratio);
  std::printf("allocate+free, 2M, zeroed                    %10.1f ns\n", zeroed->median);
  std::printf("zero 2M hot:  memset %.1f us, non-temporal %.1f us\n", *z2m_memset / 1e3,
              *z2m_nt / 1e3);
  std::printf("zero 2M cold: memset %.1f us, non-temporal %.1f us\n", *cold_memset / 1e3,
              *cold_nt / 1e3);
  if (z1g_memset > 0) {
    std::printf("zero 1G: memset %.1f ms, non-temporal %.1f ms\n", z1g_memset / 1e6, z1g_nt / 1e6);
  }
  std::printf("metadata per 2M folio                        %10.0f B (descriptor %zu B)\n",
              meta_per_folio, sizeof(Folio));
  std::printf("metadata per GiB of folios (system memory; kernel = 64 B per 4K page)\n%s",
              table.c_str());
  return 0;
}

}  // namespace

HUGEMM_REGISTER_BENCH("alloc",
                      "allocate+free of a cached 2M folio vs mmap+fault+munmap; metadata "
                      "bytes per folio [--json] [--iterations N]",
                      RunAllocBench);

}  // namespace hugemm::perf
