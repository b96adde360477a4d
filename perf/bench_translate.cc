// The translate benchmark (bench_translate.h).
#include "perf/bench_translate.h"

#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "hugemm/backing.h"
#include "hugemm/pgtable.h"
#include "perf/bench_util.h"
#include "runtime/sys/pagemap.h"

namespace hugemm::perf {
namespace {

constexpr uintptr_t kSynthBase = uintptr_t{1} << 44;
constexpr size_t kSynthBytes = size_t{1} << 30;
constexpr size_t kLookups = size_t{1} << 20;
constexpr size_t kPool = size_t{1} << 16;
constexpr size_t kPagemapReads = 20000;
constexpr int kRounds = 7;

}  // namespace

absl::StatusOr<TranslateBenchResult> RunTranslateBench() {
  // Synthetic 1 GiB of 2M folios.
  const size_t nfolios = kSynthBytes / kPageSize2M;
  std::vector<std::unique_ptr<Folio>> folios;
  std::vector<Folio*> flat(nfolios);
  std::vector<uint64_t> flat_pfns(nfolios);
  for (size_t i = 0; i < nfolios; ++i) {
    auto f = std::make_unique<Folio>();
    f->order = 9;
    f->data = reinterpret_cast<std::byte*>(kSynthBase + i * kPageSize2M);
    f->head_pfn = (uint64_t{1} << 30) + i * 1024;  // scattered, as a real pool would be
    f->refcount.store(1);
    flat[i] = f.get();
    flat_pfns[i] = f->head_pfn;
    folios.push_back(std::move(f));
  }
  // A real buffer for pagemap.
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .page_size = kPageSize2M});
  absl::StatusOr<Extent> extent = backing.ok() ? (*backing)->Map({.length = 8 * kPageSize2M})
                                               : absl::StatusOr<Extent>(backing.status());
  if (!extent.ok()) {
    backing = Backing::Create({.kind = BackingKind::kAnon});
    if (backing.ok()) extent = (*backing)->Map({.length = 16 * kPageSize2M});
  }
  if (!extent.ok()) return extent.status();
  for (size_t i = 0; i < extent->page_count(); ++i) {
    folios.push_back(std::make_unique<Folio>());
    InitFolioForPage(folios.back().get(), *extent, i);
  }

  auto table = std::make_unique<PageTable>(DetectHostGeometry());
  for (auto& f : folios) {
    if (absl::Status st = table->Map(f.get(), f->data, kProtRead | kProtWrite); !st.ok()) {
      return st;
    }
  }

  std::mt19937_64 rng(42);
  std::vector<uintptr_t> synth(kPool), real(kPool);
  for (size_t i = 0; i < kPool; ++i) {
    synth[i] = kSynthBase + rng() % kSynthBytes;
    real[i] = reinterpret_cast<uintptr_t>(extent->data()) + rng() % extent->size();
  }

  // Every candidate runs once per round, round-robin, so that a noisy neighbour slows
  // them alike, each after an untimed warm-up run; each reports its median over the
  // rounds. pagemap is compared with the batched translation of its own addresses. Translations
  // come in batches of kBatch addresses (one read section), as a DMA mapper fills a request's
  // pages; the flat array fills the same kind of output the same way.
  constexpr size_t kBatch = 256;
  std::vector<Translation> batch_out(kBatch);
  std::vector<uint64_t> pfn_out(kBatch);
  uint64_t sink = 0;
  auto batched = [&](const std::vector<uintptr_t>& addrs, auto&& fill) {
    return [&, fill] {
      uint64_t sum = 0;
      for (size_t i = 0; i < kLookups; i += kBatch) {
        fill(&addrs[i % kPool]);
        for (uint64_t p : pfn_out) sum += p;
      }
      DoNotOptimize(sum);
      sink += sum;
    };
  };
  struct Candidate {
    size_t n;
    std::function<void()> run;
    std::vector<double> samples;
  };
  auto table_pfns = [&](const uintptr_t* vas) {
    table->TranslatePfns(absl::MakeConstSpan(reinterpret_cast<const void* const*>(vas), kBatch),
                         absl::MakeSpan(pfn_out));
  };
  enum { kPfns, kFull, kSingle, kReal, kFlat, kFlatPfn, kPagemap, kCount };
  Candidate c[kCount] = {
      {kLookups, batched(synth, table_pfns)},
      {kLookups, batched(synth,
                         [&](const uintptr_t* vas) {
                           table->TranslateMany(
                               absl::MakeConstSpan(reinterpret_cast<const void* const*>(vas),
                                                   kBatch),
                               absl::MakeSpan(batch_out));
                           for (size_t j = 0; j < kBatch; ++j) pfn_out[j] = batch_out[j].pfn;
                         })},
      {kLookups,
       [&] {
         uint64_t sum = 0;
         Translation t;
         for (size_t i = 0; i < kLookups; ++i) {
           (void)table->TranslateInto(reinterpret_cast<const void*>(synth[i % kPool]), &t);
           sum += t.pfn;
         }
         DoNotOptimize(sum);
         sink += sum;
       }},
      // The addresses pagemap reads, translated the same batched way.
      {kLookups, batched(real, table_pfns)},
      {kLookups, batched(synth,
                         [&](const uintptr_t* vas) {
                           for (size_t j = 0; j < kBatch; ++j) {
                             const Folio* f = flat[(vas[j] - kSynthBase) >> 21];
                             pfn_out[j] =
                                 f->head_pfn + ((vas[j] & (kPageSize2M - 1)) >> kPageShift);
                           }
                         })},
      {kLookups, batched(synth,
                         [&](const uintptr_t* vas) {
                           for (size_t j = 0; j < kBatch; ++j) {
                             pfn_out[j] = flat_pfns[(vas[j] - kSynthBase) >> 21] +
                                          ((vas[j] & (kPageSize2M - 1)) >> kPageShift);
                           }
                         })},
      {kPagemapReads,
       [&] {
         uint64_t sum = 0;
         for (size_t i = 0; i < kPagemapReads; ++i) {
           absl::StatusOr<std::vector<uint64_t>> p =
               sys::ReadPfnRange(Os::Default(), reinterpret_cast<const void*>(real[i]), 1);
           sum += p.ok() ? (*p)[0] : 0;
         }
         DoNotOptimize(sum);
         sink += sum;
       }},
  };
  for (int r = 0; r < kRounds; ++r) {
    for (Candidate& k : c) {
      k.run();  // warm-up: the candidate before it (pagemap's system calls) evicted caches
      const uint64_t t0 = NowNs();
      k.run();
      k.samples.push_back(static_cast<double>(NowNs() - t0) / static_cast<double>(k.n));
    }
  }
  auto median = [&](int i) { return Summarize(c[i].samples).median; };
  TranslateBenchResult r;
  r.geometry = table->geometry().name;
  r.translate_ns = median(kPfns);
  r.translate_full_ns = median(kFull);
  r.translate_single_ns = median(kSingle);
  r.translate_real_ns = median(kReal);
  r.flat_array_ns = median(kFlat);
  r.flat_pfn_array_ns = median(kFlatPfn);
  r.pagemap_ns = median(kPagemap);
  r.batch = kBatch;
  r.lookups = kLookups;
  r.address_pool = kPool;
  r.pagemap_buffer_page_size = extent->page_size();
  DoNotOptimize(sink);
  return r;
}

}  // namespace hugemm::perf
