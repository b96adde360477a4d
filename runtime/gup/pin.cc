// Pinning: the fast path for as far as it gets, the slow path for the leaf it stopped at,
// and the fast path again, until the range is pinned or a step fails. The outputs differ
// only in their sink.
#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "hugemm/gup.h"
#include "runtime/gup/fast_path.h"
#include "runtime/gup/pin_steps.h"
#include "runtime/gup/segments.h"
#include "runtime/gup/sinks.h"
#include "runtime/gup/slow_path.h"

namespace hugemm {
namespace {

using gup_internal::FastResult;
using gup_internal::PinContext;
using gup_internal::PinRequest;
using gup_internal::RequestName;
using gup_internal::Stop;

// A FAST_ONLY pin whose leaf changed between grab and re-check looks again this many
// times before it gives up (there is no slow path to take it under the lock).
constexpr int kFastRetries = 2;

// The end of the last whole page of the address space: a range that ends past it would
// wrap when rounded up to its pages.
constexpr uintptr_t kLastPageEnd = std::numeric_limits<uintptr_t>::max() - (kPageSize4K - 1);

// The 4K pages covering [va, va + length): page-aligned start and count, or false when
// the range wraps the address space (WrapError says so).
inline bool PagesCovering(const void* va, size_t length, uintptr_t* start, size_t* npages) {
  const auto lo = reinterpret_cast<uintptr_t>(va);
  const uintptr_t mask = kPageSize4K - 1;
  if (lo + length < lo || lo + length > kLastPageEnd) [[unlikely]]
    return false;
  *start = lo & ~mask;
  *npages = (((lo + length + mask) & ~mask) - *start) >> kPageShift;
  return true;
}

ABSL_ATTRIBUTE_NOINLINE absl::Status WrapError(const void* va, size_t length) {
  return absl::InvalidArgumentError(absl::StrCat("range [0x",
                                                 absl::Hex(reinterpret_cast<uintptr_t>(va)), ", +",
                                                 length, ") wraps the address space"));
}

// InvalidArgument "<request>: <what>". Out of line, taking the request's fields: a call
// keeps its request in registers rather than in memory for the error's sake.
ABSL_ATTRIBUTE_NOINLINE absl::Status RequestError(uintptr_t start, size_t npages, GupFlags flags,
                                                  absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(RequestName(PinRequest{start, npages, flags}), ": ", what));
}

// A zero-length pin pins nothing, successfully, if its flags make sense.
absl::StatusOr<size_t> NothingToPin(GupFlags flags) {
  if (absl::Status st = CheckGupFlags(flags); !st.ok()) return st;
  return 0;
}

// How PinRest takes the sink the fast path filled: a copy where copying is cheap, so that
// the fast path's sink never has its address taken and stays in registers.
template <typename Sink>
using SinkArg = std::conditional_t<std::is_trivially_copyable_v<Sink>, Sink, Sink&>;

// Where the fast path stopped short of the end: the slow path for the leaf it stopped at
// and the fast path again, until the range is pinned or a step fails. All or nothing
// unless kGupPartial: on failure, everything the sink recorded is given back. Out of
// line, so that a pin the fast path finishes in one go is PinRange's straight line.
template <typename Sink>
ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<size_t> PinRest(const PinContext& ctx, uintptr_t start,
                                                       size_t npages, GupFlags flags,
                                                       FastResult fast, SinkArg<Sink> sink) {
  const PinRequest req{start, npages, flags};
  const bool fast_only = HasAny(req.flags, kGupFastOnly);
  uintptr_t va = fast.reached;
  int changes = 0;
  absl::Status failure;
  try {
    for (;;) {
      if (!fast_only) {
        absl::StatusOr<size_t> taken = gup_internal::PinSlow(ctx, req, va, sink);
        if (!taken.ok()) {
          failure = taken.status();
          break;
        }
        va += *taken << kPageShift;
      } else if (fast.why != Stop::kChanged || ++changes > kFastRetries) {
        failure = gup_internal::FastOnlyError(ctx, req, fast.why, va, sink.count());
        break;
      }
      fast = gup_internal::PinFast(ctx, va, req.end(), req.flags, sink);
      va = fast.reached;
      if (fast.why == Stop::kNone) return sink.count();
    }
  } catch (...) {
    // The heap ran out building a failure's status, or populating (no step throws
    // holding a grab it has not recorded): what was recorded goes back.
    sink.Undo(ctx.granularity);
    throw;
  }
  if (HasAny(req.flags, kGupPartial) && va > req.start) return sink.count();
  sink.Undo(ctx.granularity);
  return failure;
}

// The one pin loop: the fast path over the whole range, and PinRest when it stops short.
// The caller has checked that the range does not wrap. `context` makes the Pinner's
// PinContext: the fast path reads three of its fields, and only PinRest needs it whole, so
// it is made again there rather than kept in memory across the fast path.
template <typename Sink, typename MakeContext>
ABSL_ATTRIBUTE_ALWAYS_INLINE inline absl::StatusOr<size_t> PinRange(MakeContext context,
                                                                    const PinRequest& req,
                                                                    Sink& sink) {
  if (!gup_internal::FlagsValid(req.flags)) [[unlikely]]
    return CheckGupFlags(req.flags);
  const FastResult fast = gup_internal::PinFast(context(), req.start, req.end(), req.flags, sink);
  if (fast.why == Stop::kNone) [[likely]]
    return sink.count();
  return PinRest<Sink>(context(), req.start, req.npages, req.flags, fast, sink);
}

}  // namespace

Pinner::Pinner(PageTable& table, PinnerOptions options)
    : table_(table), options_(std::move(options)) {
  // A negative count would let a GET UnpinRange take the mappings' own references.
  options_.owner_refs = std::max(options_.owner_refs, 0);
}

gup_internal::PinContext Pinner::Context() {
  return {table_, options_.granularity, options_.populator, &populate_mu_,
          after_grab_ ? &after_grab_ : nullptr};
}

absl::StatusOr<size_t> Pinner::PinPages(const void* va, size_t npages, GupFlags flags,
                                        absl::Span<PageRef> pages) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(va) & ~uintptr_t{kPageSize4K - 1};
  if (npages != 0 && pages.size() >= npages &&
      npages <= (std::numeric_limits<uintptr_t>::max() - start) >> kPageShift &&
      gup_internal::FlagsValid(flags) && !after_grab_ &&
      options_.granularity == RefGranularity::kFolio) [[likely]] {
    PageRef* const out = pages.data();
    const RefKind kind = HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
    if (gup_internal::PinOneLeaf(table_, start, npages << kPageShift, flags,
                                 [out, kind](Folio* folio, uint32_t first, uint32_t n) {
                                   return gup_internal::WritePageRefs(out, folio, first, n, kind);
                                 })) [[likely]]
      return npages;
  }
  if (npages == 0) return NothingToPin(flags);
  const PinRequest req{start, npages, flags};
  if (pages.size() < npages) {
    return RequestError(req.start, req.npages, req.flags,
                        absl::StrCat("a page array of ", pages.size(), " entries"));
  }
  if (npages > (std::numeric_limits<uintptr_t>::max() - req.start) >> kPageShift) [[unlikely]] {
    if (!gup_internal::FlagsValid(flags)) return CheckGupFlags(flags);
    return RequestError(req.start, req.npages, req.flags, "wraps the address space");
  }
  gup_internal::PageSink sink(pages.data(), req.kind());
  return PinRange([this] { return Context(); }, req, sink);
}

namespace {

// PinFolios but for its one-span fast case: out of line, so that the fast case needs
// neither its stack nor its registers.
template <typename MakeContext>
ABSL_ATTRIBUTE_NOINLINE absl::StatusOr<size_t> PinFoliosInGeneral(MakeContext context,
                                                                  const void* va, size_t length,
                                                                  GupFlags flags,
                                                                  absl::Span<FolioSpan> spans) {
  PinRequest req{.flags = flags};
  if (!PagesCovering(va, length, &req.start, &req.npages)) [[unlikely]]
    return WrapError(va, length);
  if (length == 0) return NothingToPin(flags);
  if (spans.empty()) {
    return RequestError(req.start, req.npages, req.flags, "no room for folio spans");
  }
  gup_internal::SpanSink<gup_internal::FixedSpans> sink(req.kind(), spans.data(), spans.size());
  return PinRange(context, req, sink);
}

}  // namespace

absl::StatusOr<size_t> Pinner::PinFolios(const void* va, size_t length, GupFlags flags,
                                         absl::Span<FolioSpan> spans) {
  const auto lo = reinterpret_cast<uintptr_t>(va);
  if (length != 0 && lo + length > lo && lo + length <= kLastPageEnd && !spans.empty() &&
      gup_internal::FlagsValid(flags) && !after_grab_ &&
      options_.granularity == RefGranularity::kFolio) [[likely]] {
    FolioSpan* const out = spans.data();
    if (gup_internal::PinOneLeaf(table_, lo, length, flags,
                                 [out](Folio* folio, uint32_t first, uint32_t pages) {
                                   *out = FolioSpan{folio, first, pages};
                                   return true;
                                 })) [[likely]]
      return 1;
  }
  return PinFoliosInGeneral([this] { return Context(); }, va, length, flags, spans);
}

absl::StatusOr<size_t> Pinner::PinFolios(const void* va, size_t length, GupFlags flags,
                                         std::vector<FolioSpan>* spans) {
  PinRequest req{.flags = flags};
  if (!PagesCovering(va, length, &req.start, &req.npages)) [[unlikely]]
    return WrapError(va, length);
  if (spans == nullptr) {
    return RequestError(req.start, req.npages, req.flags, "no vector for folio spans");
  }
  if (length == 0) return NothingToPin(flags);
  gup_internal::SpanSink<gup_internal::GrowingSpans> sink(req.kind(), spans);
  return PinRange([this] { return Context(); }, req, sink);
}

absl::StatusOr<size_t> Pinner::PinSegments(const void* va, size_t length, GupFlags flags,
                                           uint64_t max_segment, absl::Span<DmaSegment> segments,
                                           std::vector<FolioSpan>* pinned,
                                           const DmaAddressSpace* space) {
  PinRequest req{.flags = flags};
  if (!PagesCovering(va, length, &req.start, &req.npages)) [[unlikely]]
    return WrapError(va, length);
  absl::StatusOr<uint64_t> max = gup_internal::NormalizeMaxSegment(max_segment);
  if (!max.ok()) return max.status();
  if (length == 0) return NothingToPin(flags);
  if (segments.empty()) {
    return RequestError(req.start, req.npages, req.flags, "no room for DMA segments");
  }
  const auto lo = reinterpret_cast<uintptr_t>(va);
  gup_internal::SegmentSink sink(segments.data(), segments.size(), *max, lo, lo + length, pinned,
                                 req.kind(), space);
  return PinRange([this] { return Context(); }, req, sink);
}

absl::StatusOr<PinnedRange> Pinner::Pin(const void* va, size_t length, GupFlags flags) {
  PinRequest req{.flags = flags};
  if (!PagesCovering(va, length, &req.start, &req.npages)) [[unlikely]]
    return WrapError(va, length);
  if (HasAny(flags, kGupPartial)) {
    return absl::InvalidArgumentError("PinnedRange: a partial pin has no handle; use PinFolios");
  }
  PinnedRange out;
  if (length != 0) {
    std::vector<FolioSpan> spans;
    gup_internal::SpanSink<gup_internal::GrowingSpans> sink(req.kind(), &spans);
    absl::StatusOr<size_t> n = PinRange([this] { return Context(); }, req, sink);
    if (!n.ok()) return n.status();
    out.spans_ = std::move(spans);
  } else if (absl::Status st = CheckGupFlags(flags); !st.ok()) {
    return st;
  }
  out.pinner_ = this;
  out.va_ = reinterpret_cast<uintptr_t>(va);
  out.length_ = length;
  out.flags_ = flags;
  return out;
}

}  // namespace hugemm
