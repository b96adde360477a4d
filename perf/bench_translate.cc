// `hugemm bench translate`: VA -> folio / PFN through the shadow table, beside a read of
// /proc/self/pagemap and a lookup in a flat array indexed by 2M page number, all in one
// run over the same kind of addresses.
//
// The table and the flat arrays describe 1 GiB of 2M folios at a synthetic address (the
// table never touches the data, so no huge pages are spent on it); the pagemap reads go
// to a real buffer of 2M pages (hugetlb, else 4K anon), which the table also maps, and
// the table is timed there too so the ratio holds for the same addresses.
//
// Two flat arrays, both indexed by 2M page number: one of folio pointers (a page's
// descriptor, from which folio and PFN follow, as from the table) and one of PFNs alone
// (the least any VA -> PFN lookup can do). The target compares with the first.
//
// Addresses come from a pool of 64K random ones (512 KiB, which stays in cache, as a DMA
// request's list of pages does), cycled: with a pool the size of the run, streaming the
// pool from memory would be what every candidate measures.
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "hugemm/backing.h"
#include "hugemm/pgtable.h"
#include "perf/bench_util.h"
#include "runtime/cli/command.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/json.h"

namespace hugemm::perf {
namespace {

constexpr uintptr_t kSynthBase = uintptr_t{1} << 44;
constexpr size_t kSynthBytes = size_t{1} << 30;
constexpr size_t kLookups = size_t{1} << 20;
constexpr size_t kPool = size_t{1} << 16;
constexpr size_t kPagemapReads = 20000;
constexpr int kRounds = 7;

int RunTranslate(const cli::Args& in) {
  cli::Args args = in;
  const bool json = cli::TakeFlag(&args, "--json");
  if (int rc = cli::RejectLeftovers("bench translate", args)) return rc;

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
  if (!extent.ok()) {
    std::fprintf(stderr, "hugemm bench translate: %s\n",
                 std::string(extent.status().message()).c_str());
    return 1;
  }
  for (size_t i = 0; i < extent->page_count(); ++i) {
    folios.push_back(std::make_unique<Folio>());
    InitFolioForPage(folios.back().get(), *extent, i);
  }

  auto table = std::make_unique<PageTable>(DetectHostGeometry());
  for (auto& f : folios) {
    if (absl::Status st = table->Map(f.get(), f->data, kProtRead | kProtWrite); !st.ok()) {
      std::fprintf(stderr, "hugemm bench translate: %s\n", std::string(st.message()).c_str());
      return 1;
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
               sys::ReadPfnRange(reinterpret_cast<const void*>(real[i]), 1);
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
  const double translate_ns = median(kPfns);
  const double translate_full_ns = median(kFull);
  const double translate_single_ns = median(kSingle);
  const double translate_real_ns = median(kReal);
  const double flat_ns = median(kFlat);
  const double flat_pfn_ns = median(kFlatPfn);
  const double pagemap_ns = median(kPagemap);
  DoNotOptimize(sink);
  table.reset();

  const double vs_pagemap = pagemap_ns / translate_real_ns;
  const double vs_flat = translate_ns / flat_ns;
  const double vs_flat_pfn = translate_ns / flat_pfn_ns;
  if (json) {
    Json out = Json::MakeObject();
    out.Set("geometry", DetectHostGeometry().name);
    out.Set("translate_ns", translate_ns);
    out.Set("translate_full_ns", translate_full_ns);
    out.Set("translate_single_ns", translate_single_ns);
    out.Set("batch", kBatch);
    out.Set("translate_real_ns", translate_real_ns);
    out.Set("pagemap_ns", pagemap_ns);
    out.Set("flat_array_ns", flat_ns);
    out.Set("flat_pfn_array_ns", flat_pfn_ns);
    out.Set("pagemap_over_translate", vs_pagemap);
    out.Set("translate_over_flat_array", vs_flat);
    out.Set("translate_over_flat_pfn_array", vs_flat_pfn);
    out.Set("lookups", kLookups);
    out.Set("address_pool", kPool);
    out.Set("pagemap_buffer", PageSizeName(extent->page_size()));
    std::printf("%s\n", out.Dump().c_str());
  } else {
    std::printf("shadow table, VA->PFN, batches of %zu  %8.2f ns\n", kBatch, translate_ns);
    std::printf("shadow table, full result, batched    %8.2f ns\n", translate_full_ns);
    std::printf("shadow table, one call each           %8.2f ns\n", translate_single_ns);
    std::printf("shadow table, VA->PFN, pagemap's buffer %6.2f ns\n", translate_real_ns);
    std::printf("flat folio array, VA->PFN, batched    %8.2f ns   table / flat = %.2fx\n", flat_ns,
                vs_flat);
    std::printf("flat PFN array, VA->PFN, batched      %8.2f ns   table / flat = %.2fx\n",
                flat_pfn_ns, vs_flat_pfn);
    std::printf("pagemap read, real buffer             %8.2f ns   pagemap / table = %.0fx\n",
                pagemap_ns, vs_pagemap);
  }
  return 0;
}

}  // namespace

HUGEMM_REGISTER_BENCH("translate",
                      "VA -> PFN through the shadow table vs pagemap vs a flat array [--json]",
                      RunTranslate);

}  // namespace hugemm::perf
