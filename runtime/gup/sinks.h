// Where a pin records what it took: each output (page array, folio spans, DMA segments) is
// a sink the fast and slow paths feed with folio runs. A sink also knows how to give back
// everything it recorded, which is how an all-or-nothing pin fails without leaking.
//
// The interface, duck-typed so that the fast path inlines it:
//   bool Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t va)
//       records pages [first, first + pages) of a folio whose references the caller
//       holds, mapped from page-aligned va: all of them, or none and false;
//   Stop why() const      why the last Accept refused;
//   uint32_t Room(const Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) const
//                         after Accept refused those pages for want of room (kFull): how
//                         many of them, from `first`, it would take (fewer than `pages`;
//                         0 where a part of a run needs as much room as the whole);
//   size_t count() const  entries written so far (the pin's result);
//   void Undo(RefGranularity granularity)  gives back everything recorded.
// No Accept throws: a sink that needs the heap and finds none refuses (kNoMemory), and the
// pin gives back what it took, as for any refusal.
#ifndef HUGEMM_RUNTIME_GUP_SINKS_H_
#define HUGEMM_RUNTIME_GUP_SINKS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "hugemm/gup.h"
#include "runtime/gup/pin_steps.h"
#include "runtime/gup/segments.h"
#include "runtime/gup/unpin.h"

namespace hugemm::gup_internal {

// record_subpages: the entries of pages [first, first + pages) of `folio` from out[0], no
// reference work; false, writing nothing, for a folio a PageRef cannot name.
inline bool WritePageRefs(PageRef* out, Folio* folio, uint32_t first, uint32_t pages,
                          RefKind kind) {
  if (!PageRef::Encodable(folio)) [[unlikely]]
    return false;
  for (uint32_t i = 0; i < pages; ++i) out[i] = PageRef(folio, first + i, kind);
  return true;
}

// The page array: one PageRef per 4K page, in caller memory sized for the whole pin.
class PageSink {
 public:
  PageSink(PageRef* out, RefKind kind) : out_(out), kind_(kind) {}
  bool Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t /*va*/) {
    if (!WritePageRefs(out_ + n_, folio, first, pages, kind_)) [[unlikely]]
      return false;
    n_ += pages;
    return true;
  }
  Stop why() const { return Stop::kUnencodable; }
  uint32_t Room(const Folio*, uint32_t, uint32_t, uintptr_t) const { return 0; }
  size_t count() const { return n_; }
  void Undo(RefGranularity granularity) {
    UnpinPageRefs(absl::MakeConstSpan(out_, n_), /*dirty=*/false, granularity);
    n_ = 0;
  }

 private:
  PageRef* out_;
  RefKind kind_;
  size_t n_ = 0;
};

// Folio spans, merged per folio run, into FixedSpans or GrowingSpans.
template <typename Storage>
class SpanSink {
 public:
  template <typename... Args>
  explicit SpanSink(RefKind kind, Args&&... args) : s_(std::forward<Args>(args)...), kind_(kind) {}
  bool Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t /*va*/) {
    if (s_.size() > 0) {
      FolioSpan& last = s_.back();
      if (last.folio == folio && last.first_page + last.pages == first) {
        last.pages += pages;
        return true;
      }
    }
    return s_.push_back(FolioSpan{folio, first, pages});
  }
  Stop why() const { return s_.why(); }
  // A part of a folio run takes a span as the whole does.
  uint32_t Room(const Folio*, uint32_t, uint32_t, uintptr_t) const { return 0; }
  size_t count() const { return s_.size(); }
  void Undo(RefGranularity /*granularity*/) {
    UnpinSpans(absl::MakeConstSpan(s_.data(), s_.size()), kind_, /*dirty=*/false);
    s_.clear();
  }

 private:
  Storage s_;
  RefKind kind_;
};

// Caller memory of fixed capacity.
class FixedSpans {
 public:
  FixedSpans(FolioSpan* out, size_t cap) : out_(out), cap_(cap) {}
  size_t size() const { return n_; }
  FolioSpan& back() { return out_[n_ - 1]; }
  FolioSpan* data() { return out_; }
  bool push_back(const FolioSpan& s) {
    if (n_ == cap_) return false;
    out_[n_++] = s;
    return true;
  }
  Stop why() const { return Stop::kFull; }
  void clear() { n_ = 0; }

 private:
  FolioSpan* out_;
  size_t cap_;
  size_t n_ = 0;
};

// A growing vector: the caller's (appending after what it held) or, for segments, a
// small inline log that only allocates past 64 folio runs.
class GrowingSpans {
 public:
  explicit GrowingSpans(std::vector<FolioSpan>* external)
      : ext_(external), base_(external ? external->size() : 0) {}
  size_t size() const { return ext_ ? ext_->size() - base_ : own_.size(); }
  FolioSpan& back() { return ext_ ? ext_->back() : own_.back(); }
  FolioSpan* data() { return ext_ ? ext_->data() + base_ : own_.data(); }
  // False when the heap has no room for one more span.
  bool push_back(const FolioSpan& s) {
    try {
      if (ext_) {
        ext_->push_back(s);
      } else {
        own_.push_back(s);
      }
    } catch (const std::bad_alloc&) {
      return false;
    }
    return true;
  }
  Stop why() const { return Stop::kNoMemory; }
  void clear() {
    if (ext_) {
      ext_->resize(base_);
    } else {
      own_.clear();
    }
  }

 private:
  std::vector<FolioSpan>* ext_;
  size_t base_;
  absl::InlinedVector<FolioSpan, 64> own_;
};

// DMA segments of the byte range [lo, hi), with a log of the folio runs to give back.
class SegmentSink {
 public:
  SegmentSink(DmaSegment* out, size_t cap, uint64_t max_segment, uintptr_t lo, uintptr_t hi,
              std::vector<FolioSpan>* pinned, RefKind kind, const DmaAddressSpace* space)
      : writer_(out, cap, max_segment), lo_(lo), hi_(hi), log_(kind, pinned), space_(space) {}
  bool Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) {
    if (space_ != nullptr) {
      bool unmapped = false;
      const uintptr_t from = std::max(va, lo_);
      const uintptr_t to = std::min(va + (uintptr_t{pages} << kPageShift), hi_);
      if (!writer_.AddIn(*space_, from, to, &unmapped)) {
        why_ = unmapped ? Stop::kNoDeviceAddress : Stop::kFull;
        return false;
      }
      return Log(folio, first, pages, va);
    }
    if (folio->head_pfn == kUnknownPfn) {
      why_ = Stop::kNoPfn;
      return false;
    }
    if (!writer_.AddPages(folio, first, pages, va, lo_, hi_)) {
      why_ = Stop::kFull;
      return false;
    }
    return Log(folio, first, pages, va);
  }
  Stop why() const { return why_; }
  // The most pages from `first` whose bytes fit in the segments left: fewer bytes never
  // need more segments, so a binary search over counting-only trials finds it.
  uint32_t Room(const Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) const {
    uint32_t lo = 0, hi = pages == 0 ? 0 : pages - 1;
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      if (Fits(folio, first, mid, va)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    return lo;
  }
  size_t count() const { return writer_.count(); }
  void Undo(RefGranularity granularity) { log_.Undo(granularity); }

 private:
  // The run into the log of what to give back. Refused (no heap for the log), the
  // segments already written for it are the failed pin's, never read.
  bool Log(Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) {
    if (log_.Accept(folio, first, pages, va)) return true;
    why_ = log_.why();
    return false;
  }
  // Whether Accept would find room for pages [first, first + pages) from va.
  bool Fits(const Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) const {
    SegmentWriter trial = writer_.Counting();
    if (space_ != nullptr) {
      bool unmapped = false;
      const uintptr_t from = std::max(va, lo_);
      const uintptr_t to = std::min(va + (uintptr_t{pages} << kPageShift), hi_);
      return trial.AddIn(*space_, from, to, &unmapped);
    }
    return trial.AddPages(folio, first, pages, va, lo_, hi_);
  }

  SegmentWriter writer_;
  uintptr_t lo_, hi_;
  SpanSink<GrowingSpans> log_;
  const DmaAddressSpace* space_;
  Stop why_ = Stop::kFull;
};

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_SINKS_H_
