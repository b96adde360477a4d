// GUP over the shadow table. The fast path reads like the kernel's gup_fast: walk, grab,
// re-check, undo. Each output (page array, spans, segments) is a Sink the one loop feeds
// with folio runs; a sink also knows how to give back everything it recorded, which is
// how an all-or-nothing pin fails without leaking a reference.
#include "hugemm/gup.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/gup/segments.h"
#include "runtime/pgtable/walk.h"

namespace hugemm {
namespace {

using gup_internal::NormalizeMaxSegment;
using gup_internal::SegmentWriter;

constexpr uint32_t kAllGupFlags =
    kGupPin | kGupGet | kGupWrite | kGupLongterm | kGupFastOnly | kGupPartial;
// A leaf that changes between grab and re-check is looked up again this many times
// before the slow path takes it under the table lock.
constexpr int kFastRetries = 2;
// Populate, look again: a range that some other thread keeps unmapping gives up after
// this many rounds.
constexpr int kPopulateAttempts = 3;
// Longest run of page-array entries given back in one operation: far beyond any folio,
// short of what could overflow an order-0 folio's biased count.
constexpr size_t kMaxUnpinRun = size_t{1} << 20;

// Why a leaf was not (fully) taken.
enum Stop : uint8_t {
  kNone,
  kNotMapped,
  kExclusive,
  kReadOnly,
  kBorrowed,
  kGrabFailed,
  kChanged,
  kFull,
  kNoPfn,
  kUnencodable,  // a descriptor a page-array entry cannot hold
};

std::string Addr(uintptr_t va) { return absl::StrFormat("0x%x", va); }

RefKind KindOf(uint32_t flags) { return (flags & kGupPin) ? RefKind::kPin : RefKind::kGet; }

absl::Status CheckFlags(uint32_t flags) {
  if ((flags & ~kAllGupFlags) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown GUP flags 0x%x", flags));
  }
  if (((flags & kGupPin) != 0) == ((flags & kGupGet) != 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GUP flags %s: need exactly one of PIN and GET", GupFlagsName(flags)));
  }
  if ((flags & kGupLongterm) && !(flags & kGupPin)) {
    return absl::InvalidArgumentError("GUP flags: LONGTERM is only for PIN");
  }
  return absl::OkStatus();
}

// The 4K pages covering [va, va + length): page-aligned start and count.
absl::Status PagesCovering(const void* va, size_t length, uintptr_t* start, size_t* npages) {
  const auto lo = reinterpret_cast<uintptr_t>(va);
  const uintptr_t mask = kPageSize4K - 1;
  if (lo + length < lo || lo + length > std::numeric_limits<uintptr_t>::max() - mask) {
    return absl::InvalidArgumentError(
        absl::StrFormat("range [%s, +%u) wraps the address space", Addr(lo), length));
  }
  *start = lo & ~mask;
  *npages = (((lo + length + mask) & ~mask) - *start) >> kPageShift;
  return absl::OkStatus();
}

// A zero-length pin pins nothing, successfully, if its flags make sense.
absl::StatusOr<size_t> NothingToPin(uint32_t flags) {
  if (absl::Status st = CheckFlags(flags); !st.ok()) return st;
  return 0;
}

std::string Range(uintptr_t start, size_t npages, uint32_t flags) {
  return absl::StrFormat("pin [%s, +%u pages) %s", Addr(start), npages, GupFlagsName(flags));
}

absl::Status StopError(Stop stop, uintptr_t va, const std::string& what, size_t entries,
                       const absl::Status& grab_error) {
  switch (stop) {
    case kNotMapped:
      return absl::NotFoundError(absl::StrFormat("%s: %s is not mapped", what, Addr(va)));
    case kExclusive:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: %s is device-exclusive; its owner must restore it first", what, Addr(va)));
    case kReadOnly:
      return absl::PermissionDeniedError(
          absl::StrFormat("%s: %s is mapped read-only", what, Addr(va)));
    case kBorrowed:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: %s is borrowed external memory, which may move: no LONGTERM pin", what, Addr(va)));
    case kGrabFailed:
      return absl::Status(grab_error.ok() ? absl::StatusCode::kAborted : grab_error.code(),
                          absl::StrFormat("%s: at %s: %s", what, Addr(va),
                                          grab_error.ok() ? "folio freed meanwhile"
                                                          : std::string(grab_error.message())));
    case kChanged:
      return absl::UnavailableError(
          absl::StrFormat("%s: %s kept changing under the fast path", what, Addr(va)));
    case kFull:
      return absl::ResourceExhaustedError(absl::StrFormat(
          "%s: the output is full after %u entries at %s", what, entries, Addr(va)));
    case kUnencodable:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: the folio at %s has a descriptor a page-array entry cannot hold; use folio "
          "spans",
          what, Addr(va)));
    case kNoPfn:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: the PFN of %s is unknown (pagemap unreadable at map time): no DMA segments", what,
          Addr(va)));
    case kNone:
      break;
  }
  return absl::InternalError(absl::StrFormat("%s: at %s: no reason", what, Addr(va)));
}

// ---- sinks ----------------------------------------------------------------------------
// Accept(folio, first, pages, va) records pages [first, first + pages) of a folio
// whose references the caller holds, mapped from page-aligned va, and returns how many
// it kept (all or none); why() says why none. Undo gives back everything recorded.

class PageSink {
 public:
  PageSink(PageRef* out, RefKind kind) : out_(out), kind_(kind) {}
  size_t Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t /*va*/) {
    if (!PageRef::Encodable(folio)) [[unlikely]] {
      why_ = kUnencodable;
      return 0;
    }
    // record_subpages: no reference work, just the entries.
    PageRef* p = out_ + n_;
    for (uint32_t i = 0; i < pages; ++i) p[i] = PageRef(folio, first + i, kind_);
    n_ += pages;
    return pages;
  }
  Stop why() const { return why_; }
  size_t count() const { return n_; }
  void Undo(const Pinner& pinner) {
    pinner.UnpinPages(out_, n_);
    n_ = 0;
  }

 private:
  PageRef* out_;
  RefKind kind_;
  size_t n_ = 0;
  Stop why_ = kFull;
};

// Folio spans, merged per folio run, into FixedSpans or GrowingSpans.
template <typename Storage>
class SpanSink {
 public:
  template <typename... Args>
  explicit SpanSink(RefKind kind, Args&&... args) : s_(std::forward<Args>(args)...), kind_(kind) {}
  size_t Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t /*va*/) {
    if (s_.size() > 0) {
      FolioSpan& last = s_.back();
      if (last.folio == folio && last.first_page + last.pages == first) {
        last.pages += pages;
        return pages;
      }
    }
    if (!s_.push_back(FolioSpan{folio, first, pages})) return 0;
    return pages;
  }
  Stop why() const { return kFull; }
  size_t count() const { return s_.size(); }
  void Undo(const Pinner& pinner) {
    pinner.UnpinFolios(s_.data(), s_.size(), kind_);
    s_.clear();
  }
  Storage& storage() { return s_; }

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
  bool push_back(const FolioSpan& s) {
    if (ext_) {
      ext_->push_back(s);
    } else {
      own_.push_back(s);
    }
    return true;
  }
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

class SegmentSink {
 public:
  SegmentSink(DmaSegment* out, size_t cap, uint64_t max_segment, uintptr_t lo, uintptr_t hi,
              std::vector<FolioSpan>* pinned, RefKind kind)
      : writer_(out, cap, max_segment), lo_(lo), hi_(hi), log_(kind, pinned) {}
  size_t Accept(Folio* folio, uint32_t first, uint32_t pages, uintptr_t va) {
    if (folio->head_pfn == kUnknownPfn) {
      why_ = kNoPfn;
      return 0;
    }
    if (!writer_.AddPages(folio, first, pages, va, lo_, hi_)) {
      why_ = kFull;
      return 0;
    }
    return log_.Accept(folio, first, pages, va);
  }
  Stop why() const { return why_; }
  size_t count() const { return writer_.count(); }
  void Undo(const Pinner& pinner) { log_.Undo(pinner); }

 private:
  SegmentWriter writer_;
  uintptr_t lo_, hi_;
  SpanSink<GrowingSpans> log_;
  Stop why_ = kFull;
};

}  // namespace

std::string GupFlagsName(uint32_t flags) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {kGupPin, "PIN"},
      {kGupGet, "GET"},
      {kGupWrite, "WRITE"},
      {kGupLongterm, "LONGTERM"},
      {kGupFastOnly, "FAST_ONLY"},
      {kGupPartial, "PARTIAL"},
  };
  std::vector<std::string> parts;
  for (const auto& [bit, name] : kNames) {
    if (flags & bit) parts.emplace_back(name);
  }
  if (uint32_t rest = flags & ~kAllGupFlags) parts.push_back(absl::StrFormat("0x%x", rest));
  return parts.empty() ? "0" : absl::StrJoin(parts, "|");
}

struct Pinner::Run {
  size_t pages = 0;
  Stop stop = kNone;
  absl::Status error;  // kGrabFailed: what the folio said
};

Pinner::Pinner(PageTable& table, PinnerOptions options)
    : table_(table), options_(std::move(options)) {}

absl::Status Pinner::Grab(Folio* folio, uint32_t refs, RefKind kind) const {
  if (options_.granularity == RefGranularity::kFolio) [[likely]] {
    return FolioTryGrab(folio, static_cast<int32_t>(refs), kind);
  }
  for (uint32_t i = 0; i < refs; ++i) {
    if (absl::Status st = FolioTryGrab(folio, 1, kind); !st.ok()) [[unlikely]] {
      if (i != 0) FolioUngrab(folio, static_cast<int32_t>(i), kind);
      return st;
    }
  }
  return absl::OkStatus();
}

// One leaf: check, grab refs = pages of [va, end) it maps, re-check (fast path), record.
template <typename Sink>
Pinner::Run Pinner::TakeLeaf(const LogicalLeaf& leaf, uintptr_t va, uintptr_t end, uint32_t flags,
                             Sink& sink, const LeafSnapshot* recheck) {
  if (leaf.exclusive) [[unlikely]]
    return {0, kExclusive};
  if ((flags & kGupWrite) && !(leaf.prot & kProtWrite)) [[unlikely]]
    return {0, kReadOnly};
  Folio* folio = leaf.folio;
  const auto refs = static_cast<uint32_t>((std::min(leaf.va + leaf.bytes, end) - va) >> kPageShift);
  const uintptr_t folio_va = leaf.va - (leaf.first_page << table_.geometry().page_shift);
  const auto first = static_cast<uint32_t>((va - folio_va) >> kPageShift);
  const RefKind kind = KindOf(flags);
  if (absl::Status st = Grab(folio, refs, kind); !st.ok()) [[unlikely]] {
    return {0, kGrabFailed, std::move(st)};
  }
  if (recheck != nullptr) {
    if (options_.after_grab_for_testing) [[unlikely]]
      options_.after_grab_for_testing(va);
    if (!pgtable_internal::Cursor::StillMapped(*recheck)) [[unlikely]] {
      FolioUngrab(folio, static_cast<int32_t>(refs), kind);
      return {0, kChanged};
    }
  }
  // Only now is the folio known to be the one mapped here.
  if ((flags & kGupLongterm) && folio->has_flag(kFolioBorrowed)) [[unlikely]] {
    FolioUngrab(folio, static_cast<int32_t>(refs), kind);
    return {0, kBorrowed};
  }
  const size_t took = sink.Accept(folio, first, refs, va);
  if (took < refs) [[unlikely]] {
    FolioUngrab(folio, static_cast<int32_t>(refs - took), kind);
    return {took, sink.why()};
  }
  return {refs, kNone};
}

// The slow path for the leaf at va: grab under the table lock, populating first when
// nothing is mapped. *pages = pages taken.
template <typename Sink>
absl::Status Pinner::SlowStep(uintptr_t va, uintptr_t end, uint32_t flags, Sink& sink,
                              size_t* pages, const std::string& what) {
  *pages = 0;
  for (int attempt = 0;; ++attempt) {
    Run run;
    const bool mapped = table_.WithLeafLocked(
        reinterpret_cast<const void*>(va),
        [&](const LogicalLeaf& leaf) { run = TakeLeaf(leaf, va, end, flags, sink, nullptr); });
    if (mapped) {
      *pages = run.pages;
      if (run.stop == kNone) return absl::OkStatus();
      return StopError(run.stop, va + (run.pages << kPageShift), what, sink.count(), run.error);
    }
    if (options_.populator == nullptr) return StopError(kNotMapped, va, what, 0, {});
    if (attempt == kPopulateAttempts) {
      return absl::NotFoundError(absl::StrFormat("%s: %s is still not mapped after %d populates",
                                                 what, Addr(va), attempt));
    }
    absl::Status st;
    {
      std::lock_guard<std::mutex> lock(populate_mu_);
      st = options_.populator->Populate(table_, va, (flags & kGupWrite) != 0);
    }
    if (!st.ok() && st.code() != absl::StatusCode::kAlreadyExists) {
      return absl::Status(st.code(),
                          absl::StrFormat("%s: populating %s: %s", what, Addr(va), st.message()));
    }
  }
}

template <typename Sink>
absl::StatusOr<size_t> Pinner::PinLoop(uintptr_t start, size_t npages, uint32_t flags, Sink& sink) {
  if (absl::Status st = CheckFlags(flags); !st.ok()) return st;
  if (npages > (std::numeric_limits<uintptr_t>::max() - start) >> kPageShift) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: wraps the address space", Range(start, npages, flags)));
  }
  const uintptr_t end = start + (npages << kPageShift);
  uintptr_t cur = start;
  absl::Status failure;
  while (cur < end) {
    Run run;
    {
      ReadSection rs;
      pgtable_internal::Cursor cursor(table_);
      LeafSnapshot snap;
      while (cur < end) {
        for (int attempt = 0;; ++attempt) {
          if (!cursor.Lookup(cur, &snap)) [[unlikely]] {
            run = {0, kNotMapped};
            break;
          }
          run = TakeLeaf(snap.leaf, cur, end, flags, sink, &snap);
          if (run.stop != kChanged || attempt == kFastRetries) break;
        }
        cur += run.pages << kPageShift;
        if (run.stop != kNone) break;
      }
    }
    if (run.stop == kNone) break;
    const std::string what = Range(start, npages, flags);
    if (run.stop == kFull || run.stop == kNoPfn || run.stop == kBorrowed ||
        run.stop == kUnencodable || (flags & kGupFastOnly)) {
      failure = StopError(run.stop, cur, what, sink.count(), run.error);
      break;
    }
    size_t pages = 0;
    failure = SlowStep(cur, end, flags, sink, &pages, what);
    cur += pages << kPageShift;
    if (!failure.ok()) break;
  }
  if (failure.ok()) return sink.count();
  if ((flags & kGupPartial) && cur > start) return sink.count();
  sink.Undo(*this);
  return failure;
}

absl::StatusOr<size_t> Pinner::PinPages(const void* va, size_t npages, uint32_t flags,
                                        PageRef* pages) {
  if (npages == 0) return NothingToPin(flags);
  if (pages == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: no page array", Range(reinterpret_cast<uintptr_t>(va), npages, flags)));
  }
  PageSink sink(pages, KindOf(flags));
  return PinLoop(reinterpret_cast<uintptr_t>(va) & ~uintptr_t{kPageSize4K - 1}, npages, flags,
                 sink);
}

absl::StatusOr<size_t> Pinner::PinFolios(const void* va, size_t length, uint32_t flags,
                                         FolioSpan* spans, size_t cap) {
  uintptr_t start = 0;
  size_t npages = 0;
  if (absl::Status st = PagesCovering(va, length, &start, &npages); !st.ok()) return st;
  if (length == 0) return NothingToPin(flags);
  if (spans == nullptr || cap == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: no room for folio spans", Range(start, npages, flags)));
  }
  SpanSink<FixedSpans> sink(KindOf(flags), spans, cap);
  return PinLoop(start, npages, flags, sink);
}

absl::StatusOr<size_t> Pinner::PinSegments(const void* va, size_t length, uint32_t flags,
                                           uint64_t max_segment, DmaSegment* segments, size_t cap,
                                           std::vector<FolioSpan>* pinned) {
  uintptr_t start = 0;
  size_t npages = 0;
  if (absl::Status st = PagesCovering(va, length, &start, &npages); !st.ok()) return st;
  absl::StatusOr<uint64_t> max = NormalizeMaxSegment(max_segment);
  if (!max.ok()) return max.status();
  if (length == 0) return NothingToPin(flags);
  if (segments == nullptr || cap == 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: no room for DMA segments", Range(start, npages, flags)));
  }
  const auto lo = reinterpret_cast<uintptr_t>(va);
  SegmentSink sink(segments, cap, *max, lo, lo + length, pinned, KindOf(flags));
  return PinLoop(start, npages, flags, sink);
}

absl::StatusOr<PinnedRange> Pinner::Pin(const void* va, size_t length, uint32_t flags) {
  uintptr_t start = 0;
  size_t npages = 0;
  if (absl::Status st = PagesCovering(va, length, &start, &npages); !st.ok()) return st;
  if (flags & kGupPartial) {
    return absl::InvalidArgumentError("PinnedRange: a partial pin has no handle; use PinFolios");
  }
  PinnedRange out;
  if (length != 0) {
    std::vector<FolioSpan> spans;
    SpanSink<GrowingSpans> sink(KindOf(flags), &spans);
    absl::StatusOr<size_t> n = PinLoop(start, npages, flags, sink);
    if (!n.ok()) return n.status();
    out.spans_ = std::move(spans);
  } else if (absl::Status st = CheckFlags(flags); !st.ok()) {
    return st;
  }
  out.pinner_ = this;
  out.va_ = reinterpret_cast<uintptr_t>(va);
  out.length_ = length;
  out.flags_ = flags;
  return out;
}

size_t Pinner::UnpinPages(const PageRef* pages, size_t n, bool dirty) const {
  if (pages == nullptr) return 0;
  size_t ops = 0;
  if (options_.granularity == RefGranularity::kPage) {
    for (size_t i = 0; i < n; ++i) {
      if (pages[i].folio() == nullptr) continue;
      FolioUngrab(pages[i].folio(), 1, pages[i].kind(), dirty);
      ++ops;
    }
    return ops;
  }
  // unpin_user_pages_dirty_lock: one operation per run of entries on the same folio.
  for (size_t i = 0; i < n;) {
    Folio* folio = pages[i].folio();
    const RefKind kind = pages[i].kind();
    size_t j = i + 1;
    // Same folio and kind: the same bits above the index.
    const uint64_t key = pages[i].bits() >> 19;
    while (j < n && j - i < kMaxUnpinRun && (pages[j].bits() >> 19) == key &&
           pages[j].kind() == kind) {
      ++j;
    }
    if (folio != nullptr) {
      FolioUngrab(folio, static_cast<int32_t>(j - i), kind, dirty);
      ++ops;
    }
    i = j;
  }
  return ops;
}

size_t Pinner::UnpinFolios(const FolioSpan* spans, size_t n, RefKind kind, bool dirty) const {
  if (spans == nullptr) return 0;
  size_t ops = 0;
  for (size_t i = 0; i < n; ++i) {
    if (spans[i].folio == nullptr || spans[i].pages == 0) continue;
    FolioUngrab(spans[i].folio, static_cast<int32_t>(spans[i].pages), kind, dirty);
    ++ops;
  }
  return ops;
}

absl::Status Pinner::UnpinRange(const void* va, size_t length, RefKind kind, bool dirty) const {
  uintptr_t start = 0;
  size_t npages = 0;
  if (absl::Status st = PagesCovering(va, length, &start, &npages); !st.ok()) return st;
  if (length == 0) return absl::OkStatus();
  const uintptr_t end = start + (npages << kPageShift);
  const void* p = reinterpret_cast<const void*>(start);
  // First make sure every page is still mapped: a hole means the contract was broken and
  // nothing can be given back safely.
  uintptr_t covered = start;
  table_.Walk(p, end - start, [&](const LogicalLeaf& l) {
    if (std::max(l.va, start) == covered) covered = std::min(l.va + l.bytes, end);
  });
  if (covered < end) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "unpin [%s, +%u pages): %s is no longer mapped; nothing unpinned (unpin by spans)",
        Addr(start), npages, Addr(covered)));
  }
  Folio* run = nullptr;
  size_t run_pages = 0;
  auto flush = [&] {
    if (run != nullptr) FolioUngrab(run, static_cast<int32_t>(run_pages), kind, dirty);
  };
  table_.Walk(p, end - start, [&](const LogicalLeaf& l) {
    const size_t pages = (std::min(l.va + l.bytes, end) - std::max(l.va, start)) >> kPageShift;
    if (l.folio == run) {
      run_pages += pages;
      return;
    }
    flush();
    run = l.folio;
    run_pages = pages;
  });
  flush();
  return absl::OkStatus();
}

bool Pinner::MaybeDmaPinned(const void* va) const {
  ReadSection rs;
  std::optional<Translation> t = table_.Translate(va);
  return t.has_value() && FolioMaybeDmaPinned(t->folio);
}

// ---- PinnedRange ------------------------------------------------------------------------

PinnedRange::PinnedRange(PinnedRange&& other) noexcept
    : pinner_(std::exchange(other.pinner_, nullptr)),
      va_(other.va_),
      length_(other.length_),
      flags_(other.flags_),
      spans_(std::move(other.spans_)) {
  other.spans_.clear();
}

PinnedRange& PinnedRange::operator=(PinnedRange&& other) noexcept {
  if (this != &other) {
    Release();
    pinner_ = std::exchange(other.pinner_, nullptr);
    va_ = other.va_;
    length_ = other.length_;
    flags_ = other.flags_;
    spans_ = std::move(other.spans_);
    other.spans_.clear();
  }
  return *this;
}

size_t PinnedRange::page_count() const {
  size_t n = 0;
  for (const FolioSpan& s : spans_) n += s.pages;
  return n;
}

size_t PinnedRange::Pages(PageRef* out, size_t cap) const {
  if (out == nullptr) return 0;
  const RefKind kind = KindOf(flags_);
  size_t n = 0;
  for (const FolioSpan& s : spans_) {
    for (uint32_t i = 0; i < s.pages && n < cap; ++i)
      out[n++] = PageRef(s.folio, s.first_page + i, kind);
  }
  return n;
}

absl::StatusOr<std::vector<DmaSegment>> PinnedRange::Segments(uint64_t max_segment) const {
  absl::StatusOr<uint64_t> max = NormalizeMaxSegment(max_segment);
  if (!max.ok()) return max.status();
  const uintptr_t lo = va_, hi = va_ + length_;
  // Count, then write: one allocation of the exact size.
  std::vector<DmaSegment> out;
  for (int pass = 0; pass < 2; ++pass) {
    SegmentWriter w(pass == 0 ? nullptr : out.data(),
                    pass == 0 ? std::numeric_limits<size_t>::max() : out.size(), *max);
    uintptr_t va = lo & ~uintptr_t{kPageSize4K - 1};
    for (const FolioSpan& s : spans_) {
      if (s.folio->head_pfn == kUnknownPfn) {
        return absl::FailedPreconditionError(absl::StrFormat(
            "segments of [%s, +%u): the PFN of %s is unknown (pagemap unreadable at map time)",
            Addr(lo), length_, Addr(va)));
      }
      w.AddPages(s.folio, s.first_page, s.pages, va, lo, hi);
      va += uintptr_t{s.pages} << kPageShift;
    }
    if (pass == 0) out.resize(w.count());
  }
  return out;
}

void PinnedRange::Release() {
  if (pinner_ == nullptr) return;
  pinner_->UnpinFolios(spans_.data(), spans_.size(), KindOf(flags_), (flags_ & kGupWrite) != 0);
  spans_.clear();
  pinner_ = nullptr;
}

}  // namespace hugemm
