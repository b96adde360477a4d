// Folio reference operations beside the bare atomics they are built from: the cost of
// the rules (try_get never raising zero, overflow refusal, the pin bias) over one
// fetch_add.
#include <atomic>

#include "benchmark/benchmark.h"
#include "hugemm/folio.h"

namespace hugemm {
namespace {

void BM_Baseline_AtomicAddSub(benchmark::State& state) {
  std::atomic<int32_t> count{1};
  for (auto _ : state) {
    count.fetch_add(1, std::memory_order_acquire);
    count.fetch_sub(1, std::memory_order_acq_rel);
  }
  benchmark::DoNotOptimize(count.load());
}
BENCHMARK(BM_Baseline_AtomicAddSub);

void BM_FolioGetPut(benchmark::State& state) {
  Folio folio;
  folio.counts.store(Folio::CountsWord(1, 0));
  folio.order = 9;
  for (auto _ : state) {
    (void)FolioGet(&folio);
    FolioPut(&folio);
  }
  benchmark::DoNotOptimize(folio.refcount());
}
BENCHMARK(BM_FolioGetPut);

void BM_FolioTryGetPut(benchmark::State& state) {
  Folio folio;
  folio.counts.store(Folio::CountsWord(1, 0));
  folio.order = 9;
  for (auto _ : state) {
    benchmark::DoNotOptimize(FolioTryGet(&folio));
    FolioPut(&folio);
  }
}
BENCHMARK(BM_FolioTryGetPut);

// A GUP-fast pin of a whole 2M folio (512 pages in one grab) and its unpin.
void BM_FolioPinUnpin2M(benchmark::State& state) {
  Folio folio;
  folio.counts.store(Folio::CountsWord(1, 0));
  folio.order = 9;
  for (auto _ : state) {
    (void)FolioTryGrab(&folio, 512, RefKind::kPin);
    FolioUngrab(&folio, 512, RefKind::kPin);
  }
  state.SetItemsProcessed(state.iterations() * 512);
}
BENCHMARK(BM_FolioPinUnpin2M);

// The same 512 pages pinned one reference per 4K page, as before compound batching.
void BM_Baseline_PerPagePinUnpin2M(benchmark::State& state) {
  Folio folio;
  folio.counts.store(Folio::CountsWord(1, 0));
  folio.order = 9;
  for (auto _ : state) {
    for (int i = 0; i < 512; ++i) (void)FolioTryGrab(&folio, 1, RefKind::kPin);
    for (int i = 0; i < 512; ++i) FolioUngrab(&folio, 1, RefKind::kPin);
  }
  state.SetItemsProcessed(state.iterations() * 512);
}
BENCHMARK(BM_Baseline_PerPagePinUnpin2M);

}  // namespace
}  // namespace hugemm
