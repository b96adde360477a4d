// Building DMA segments from pinned pages: physically contiguous byte runs, each at most
// max_segment bytes, in caller memory (or only counted, for sizing).
#ifndef HUGEMM_RUNTIME_GUP_SEGMENTS_H_
#define HUGEMM_RUNTIME_GUP_SEGMENTS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "hugemm/gup.h"
#include "runtime/util/format.h"

namespace hugemm::gup_internal {

// 0 = unlimited; otherwise at least one page, rounded down to whole pages (as the
// kernel's sg_alloc_table_from_pages_segment does).
inline absl::StatusOr<uint64_t> NormalizeMaxSegment(uint64_t max_segment) {
  if (max_segment == 0) return std::numeric_limits<uint64_t>::max();
  if (max_segment < kPageSize4K) {
    return absl::InvalidArgumentError(
        hugemm::Format("max segment %u is below one 4K page", max_segment));
  }
  return max_segment & ~uint64_t{kPageSize4K - 1};
}

class SegmentWriter {
 public:
  // out == nullptr: count only.
  SegmentWriter(DmaSegment* out, size_t cap, uint64_t max_segment)
      : out_(out), cap_(cap), max_(max_segment) {}

  // Appends [phys, phys + length), extending the last segment while contiguous and
  // short of the maximum. Writes nothing and returns false when it needs more segments
  // than the room left.
  bool Add(uint64_t phys, uint64_t length) {
    uint64_t extend = 0;
    if (n_ > 0 && last_phys_ + last_len_ == phys && last_len_ < max_) {
      extend = std::min(max_ - last_len_, length);
    }
    const uint64_t rest = length - extend;
    const size_t need = rest == 0 ? 0 : static_cast<size_t>((rest - 1) / max_ + 1);
    if (need > cap_ - n_) return false;
    if (extend != 0) {
      last_len_ += extend;
      if (out_ != nullptr) out_[n_ - 1].length = last_len_;
    }
    phys += extend;
    for (uint64_t left = rest; left != 0;) {
      const uint64_t chunk = std::min(left, max_);
      if (out_ != nullptr) out_[n_] = DmaSegment{phys, chunk};
      ++n_;
      last_phys_ = phys;
      last_len_ = chunk;
      phys += chunk;
      left -= chunk;
    }
    return true;
  }

  // Adds pages [first, first + pages) of `folio`, mapped from page-aligned `va`, clipped
  // to the byte range [lo, hi). The folio's PFN must be known.
  bool AddPages(const Folio* folio, uint32_t first, uint32_t pages, uintptr_t va, uintptr_t lo,
                uintptr_t hi) {
    const uintptr_t from = std::max(va, lo);
    const uintptr_t to = std::min(va + (uintptr_t{pages} << kPageShift), hi);
    const uint64_t phys = ((folio->head_pfn + first) << kPageShift) + (from - va);
    return Add(phys, to - from);
  }

  // Adds the byte range [from, to) at the addresses `space` gives it, split where the
  // space is not contiguous. All or nothing, like Add: false with *unmapped set when the
  // space has no address for a byte of it (and *at, if given, to the first such byte),
  // false alone when the room ran out, and then the segments are as they were (a partial
  // pin's count must not take them in).
  bool AddIn(const DmaAddressSpace& space, uintptr_t from, uintptr_t to, bool* unmapped,
             uintptr_t* at = nullptr) {
    const size_t n0 = n_;
    const uint64_t phys0 = last_phys_, len0 = last_len_;
    while (from < to) {
      uint64_t addr = 0, run = 0;
      const bool mapped = space.DeviceAddress(from, &addr, &run) && run != 0;
      const uint64_t n = mapped ? std::min<uint64_t>(run, to - from) : 0;
      if (!mapped || !Add(addr, n)) {
        *unmapped = !mapped;
        if (!mapped && at != nullptr) *at = from;
        n_ = n0;
        last_phys_ = phys0;
        last_len_ = len0;
        if (out_ != nullptr && n0 > 0) out_[n0 - 1].length = len0;
        return false;
      }
      from += n;
    }
    return true;
  }

  size_t count() const { return n_; }
  // A copy that counts only: what Add would do from here, with nothing written.
  SegmentWriter Counting() const {
    SegmentWriter w = *this;
    w.out_ = nullptr;
    return w;
  }

 private:
  DmaSegment* out_;
  size_t cap_;
  uint64_t max_;
  size_t n_ = 0;
  uint64_t last_phys_ = 0;
  uint64_t last_len_ = 0;
};

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_SEGMENTS_H_
