// Microbenchmarks of the runtime's hot paths, each beside its baseline:
//   translate            vs a flat array lookup of the same addresses
//   allocate+free        vs mmap(MAP_HUGETLB)+touch+munmap (2M)
//   pin/unpin one folio  vs the two bare atomics it needs
//   pin/unpin a range    refcount per folio vs per 4K page, spans vs page array
// They need free 2M huge pages; without them they report an error and skip.
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "hugemm/runtime.h"

namespace hugemm {
namespace {

constexpr size_t kRange = size_t{256} << 20;  // 128 folios of 2M

// One runtime and one 256 MiB buffer for every benchmark in the process.
struct Fixture {
  std::unique_ptr<Runtime> rt;
  Buffer buf;
  std::string error;

  static Fixture& Get() {
    static Fixture* f = [] {
      auto* fx = new Fixture();
      absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
      if (!rt.ok()) {
        fx->error = std::string(rt.status().message());
        return fx;
      }
      fx->rt = std::move(*rt);
      absl::StatusOr<Buffer> b = fx->rt->MapBuffer(kRange);
      if (!b.ok()) {
        fx->error = std::string(b.status().message());
        return fx;
      }
      fx->buf = std::move(*b);
      return fx;
    }();
    return *f;
  }
};

#define NEED_FIXTURE(state)                  \
  Fixture& fx = Fixture::Get();              \
  if (!fx.error.empty()) {                   \
    (state).SkipWithError(fx.error.c_str()); \
    return;                                  \
  }

std::vector<const void*> RandomAddresses(const Buffer& b, size_t n) {
  std::mt19937_64 rng(7);
  std::vector<const void*> v(n);
  for (auto& p : v) p = b.data() + rng() % b.size();
  return v;
}

void BM_Translate(benchmark::State& state) {
  NEED_FIXTURE(state);
  const std::vector<const void*> vas = RandomAddresses(fx.buf, 4096);
  std::vector<uint64_t> pfns(vas.size());
  for (auto _ : state) {
    fx.rt->table().TranslatePfns(vas, absl::MakeSpan(pfns));
    benchmark::DoNotOptimize(pfns.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(vas.size()));
}
BENCHMARK(BM_Translate);

void BM_Baseline_FlatArrayTranslate(benchmark::State& state) {
  NEED_FIXTURE(state);
  const std::vector<const void*> vas = RandomAddresses(fx.buf, 4096);
  std::vector<Folio*> flat(fx.buf.size() / kPageSize2M);
  for (size_t i = 0; i < flat.size(); ++i) {
    flat[i] = fx.rt->Translate(fx.buf.data() + i * kPageSize2M)->folio;
  }
  const auto base = reinterpret_cast<uintptr_t>(fx.buf.data());
  std::vector<uint64_t> pfns(vas.size());
  for (auto _ : state) {
    for (size_t i = 0; i < vas.size(); ++i) {
      const uintptr_t off = reinterpret_cast<uintptr_t>(vas[i]) - base;
      pfns[i] = flat[off >> 21]->head_pfn + ((off & (kPageSize2M - 1)) >> 12);
    }
    benchmark::DoNotOptimize(pfns.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(vas.size()));
}
BENCHMARK(BM_Baseline_FlatArrayTranslate);

void BM_AllocateFree2M(benchmark::State& state) {
  NEED_FIXTURE(state);
  const AllocOptions opts{.zero = false};
  for (auto _ : state) {
    absl::StatusOr<FolioHandle> h = fx.rt->allocator().AllocateOrder(9, opts);
    if (!h.ok()) {
      state.SkipWithError(std::string(h.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(h->data());
  }
}
BENCHMARK(BM_AllocateFree2M);

void BM_Baseline_MmapTouchMunmap2M(benchmark::State& state) {
  for (auto _ : state) {
    void* p = mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (p == MAP_FAILED) {
      state.SkipWithError("mmap(MAP_HUGETLB) failed: no free 2M pages");
      return;
    }
    static_cast<char*>(p)[0] = 1;
    munmap(p, kPageSize2M);
  }
}
BENCHMARK(BM_Baseline_MmapTouchMunmap2M);

void BM_PinUnpinOneFolio(benchmark::State& state) {
  NEED_FIXTURE(state);
  FolioSpan span;
  for (auto _ : state) {
    absl::StatusOr<size_t> n =
        fx.rt->pinner().PinFolios(fx.buf.data(), kPageSize2M, kGupPin, absl::MakeSpan(&span, 1));
    benchmark::DoNotOptimize(n);
    fx.rt->pinner().UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin);
  }
}
BENCHMARK(BM_PinUnpinOneFolio);

// The floor of a pin and unpin of one folio: one atomic add and one atomic sub on its
// counts word, with nothing checked.
void BM_Baseline_OneAtomicEachWay(benchmark::State& state) {
  NEED_FIXTURE(state);
  Folio* f = fx.rt->Translate(fx.buf.data())->folio;
  const uint64_t delta = Folio::CountsWord(512, 512);
  for (auto _ : state) {
    f->counts.fetch_add(delta, std::memory_order_acquire);
    f->counts.fetch_sub(delta, std::memory_order_release);
  }
}
BENCHMARK(BM_Baseline_OneAtomicEachWay);

// A 256 MiB range: per folio vs per 4K page references, spans vs page array output.
void BM_PinUnpinRange(benchmark::State& state) {
  NEED_FIXTURE(state);
  const bool per_page = state.range(0) != 0;
  const bool spans = state.range(1) != 0;
  Pinner pinner(fx.rt->table(),
                {.granularity = per_page ? RefGranularity::kPage : RefGranularity::kFolio});
  const size_t pages = fx.buf.size() / kPageSize4K;
  std::vector<PageRef> refs(spans ? 0 : pages);
  std::vector<FolioSpan> out(spans ? pages / 512 : 0);
  for (auto _ : state) {
    if (spans) {
      absl::StatusOr<size_t> n =
          pinner.PinFolios(fx.buf.data(), fx.buf.size(), kGupPin, absl::MakeSpan(out));
      pinner.UnpinFolios(absl::MakeConstSpan(out.data(), n.ok() ? *n : 0), RefKind::kPin);
    } else {
      absl::StatusOr<size_t> n =
          pinner.PinPages(fx.buf.data(), pages, kGupPin, absl::MakeSpan(refs));
      pinner.UnpinPages(absl::MakeConstSpan(refs.data(), n.ok() ? *n : 0));
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(fx.buf.size()));
  state.SetLabel(std::string(per_page ? "refcount per 4K page" : "refcount per folio") +
                 (spans ? ", folio spans" : ", page array"));
}
BENCHMARK(BM_PinUnpinRange)->Args({0, 0})->Args({1, 0})->Args({0, 1})->Args({1, 1});

}  // namespace
}  // namespace hugemm
