// What a pin over the model's leaves must return: the status code and, on success, the
// exact output (page array, folio spans or DMA segments), from the contract in gup.h:
// the argument checks of each method, then leaf by leaf in address order until the
// range is taken or a leaf stops it (unmapped, device-exclusive, read-only under WRITE,
// borrowed under LONGTERM, no PFN for segments, no room in the output); all or nothing
// unless PARTIAL, which keeps what was taken before the stop (and, for segments without
// FAST_ONLY, the whole pages of the stopping leaf that the segments have room for).
#ifndef HUGEMM_FUZZ_PIN_ORACLE_H_
#define HUGEMM_FUZZ_PIN_ORACLE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "fuzz/pgtable_model.h"
#include "hugemm/gup.h"

namespace hugemm::fuzz {

// kVector: PinFolios appending to a std::vector (cap 0: a null vector).
enum class PinOutput { kPages, kSpans, kSegments, kHandle, kVector };

struct PinAsk {
  PinOutput output = PinOutput::kPages;
  uintptr_t va = 0;
  size_t count = 0;  // kPages: pages; else bytes
  GupFlags flags = kGupNone;
  size_t cap = 0;  // entries the output holds (kHandle, kVector: unlimited)
  uint64_t max_segment = 0;
  // Where the populator refused to map, and with what code (kOk: it never refused).
  uintptr_t refused_at = 0;
  absl::StatusCode refused_code = absl::StatusCode::kOk;
};

struct PinPlan {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::vector<PageRef> pages;
  std::vector<FolioSpan> spans;  // every output's folio runs (what the pin holds)
  std::vector<DmaSegment> segments;
};

// The model must already show what a populator mapped during the pin.
PinPlan PredictPin(const TableModel& model, const PinAsk& ask);

// The DMA segments of pinned spans mapped from page-aligned `va`, for the byte range
// [lo, hi), each at most max_segment (already normalised): what PinnedRange::Segments
// must return.
std::vector<DmaSegment> SegmentsOf(const std::vector<FolioSpan>& spans, uintptr_t va, uintptr_t lo,
                                   uintptr_t hi, uint64_t max_segment);

}  // namespace hugemm::fuzz

#endif  // HUGEMM_FUZZ_PIN_ORACLE_H_
