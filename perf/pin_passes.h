// The timed parts of the pin benchmark (bench_pin.h): passes of pin calls over a range,
// run on one or more threads, and the floor of their output.
#ifndef HUGEMM_PERF_PIN_PASSES_H_
#define HUGEMM_PERF_PIN_PASSES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/gup.h"
#include "perf/bench_pin.h"

namespace hugemm::perf::pin_internal {

// What every pass of a run shares.
struct PassConfig {
  std::byte* base = nullptr;  // the buffer's first byte, a folio boundary
  size_t pages = 0;           // 4K pages in the range the run pins
  size_t folio_pages = 0;     // 4K pages per folio
  long pages_per_call = 512;  // -1: a pass's whole range in one call
  GupFlags flags = kGupNone;
  PinOutput output = PinOutput::kPages;
};

// One thread's pass: pins pages [first, first + pages) of the range in calls of
// pages_per_call, into output buffers of its own, then unpins them.
class Pass {
 public:
  Pass(Pinner& pinner, const PassConfig& c, size_t first, size_t pages);

  // Pins the pass's pages; on failure unpins what it took and returns the error.
  absl::Status Pin();
  void Unpin();

 private:
  absl::StatusOr<size_t> PinCall(size_t done, size_t n);

  Pinner& pinner_;
  const PassConfig& c_;
  const size_t first_, pages_;
  std::vector<PageRef> page_out_;
  std::vector<FolioSpan> span_out_;
  std::vector<DmaSegment> seg_out_;
  size_t count_ = 0;
  size_t pinned_pages_ = 0;
};

// Passes on `threads` threads started together, each over the whole range (gup_test -j:
// the same folios from every thread) or, `disjoint`, over its own part of it, cut at
// folio boundaries. Threads wait for each other before they pin and before they unpin,
// so that the wall times measure pinning and unpinning alone.
class PassRunner {
 public:
  PassRunner(Pinner& pinner, const PassConfig& c, int threads, bool disjoint);

  // One repeat: appends each thread's times, and the wall times of all of them, to `t`.
  absl::Status RunOnce(PinTimes* t);

 private:
  std::vector<std::unique_ptr<Pass>> passes_;
};

// The floor of the output, the least work that produces it: writing the page array (as
// the kernel's record_subpages does), or one atomic add per folio each call reaches (what
// a pin of folio spans or segments cannot do with less).
class Floor {
 public:
  Floor(const std::vector<Folio*>& folios, const PassConfig& c);
  double RunOnce();  // microseconds

 private:
  const PassConfig& c_;
  std::vector<Folio*> touched_;  // spans, segments: one folio per call and folio, in order
  std::vector<Folio*> folios_;   // pages: every folio of the range
  std::vector<PageRef> pages_;
};

}  // namespace hugemm::perf::pin_internal

#endif  // HUGEMM_PERF_PIN_PASSES_H_
