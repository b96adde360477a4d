#include "fuzz/pin_oracle.h"

#include <algorithm>
#include <limits>

namespace hugemm::fuzz {
namespace {

using Code = absl::StatusCode;
constexpr uintptr_t kPageMask = kPageSize4K - 1;
constexpr GupFlags kKnown =
    kGupPin | kGupGet | kGupWrite | kGupLongterm | kGupFastOnly | kGupPartial;

bool FlagsOk(GupFlags f) {
  return !HasAny(f, ~kKnown) && HasAny(f, kGupPin) != HasAny(f, kGupGet) &&
         !(HasAny(f, kGupLongterm) && !HasAny(f, kGupPin));
}

// Segments in the making: appends a physical run, extending the last segment while it
// continues and is short of the maximum; all of the run or none of it fits.
class Segments {
 public:
  Segments(size_t cap, uint64_t max) : cap_(cap), max_(max) {}
  bool Add(uint64_t phys, uint64_t len) {
    std::vector<DmaSegment> next = out_;
    if (!next.empty() && next.back().phys_addr + next.back().length == phys) {
      const uint64_t room = max_ - std::min(max_, next.back().length);
      const uint64_t grow = std::min(room, len);
      next.back().length += grow;
      phys += grow;
      len -= grow;
    }
    while (len > 0) {
      const uint64_t chunk = std::min(len, max_);
      next.push_back({phys, chunk});
      phys += chunk;
      len -= chunk;
    }
    if (next.size() > cap_) return false;
    out_ = std::move(next);
    return true;
  }
  std::vector<DmaSegment>& out() { return out_; }

 private:
  size_t cap_;
  uint64_t max_;
  std::vector<DmaSegment> out_;
};

}  // namespace

std::vector<DmaSegment> SegmentsOf(const std::vector<FolioSpan>& spans, uintptr_t va, uintptr_t lo,
                                   uintptr_t hi, uint64_t max_segment) {
  Segments segs(std::numeric_limits<size_t>::max(), max_segment);
  for (const FolioSpan& s : spans) {
    const uintptr_t end = va + (uintptr_t{s.pages} << kPageShift);
    const uintptr_t from = std::max(va, lo), to = std::min(end, hi);
    segs.Add(((s.folio->head_pfn + s.first_page) << kPageShift) + (from - va), to - from);
    va = end;
  }
  return segs.out();
}

PinPlan PredictPin(const TableModel& model, const PinAsk& ask) {
  PinPlan plan;
  auto fail = [&](Code c) {
    plan = PinPlan{};
    plan.code = c;
    return plan;
  };
  // The arguments, in the order each method checks them.
  uintptr_t start = 0;
  size_t npages = 0;
  uint64_t max_segment = std::numeric_limits<uint64_t>::max();
  if (ask.output == PinOutput::kPages) {
    if (ask.count == 0) return FlagsOk(ask.flags) ? plan : fail(Code::kInvalidArgument);
    start = ask.va & ~kPageMask;
    npages = ask.count;
    if (ask.cap < npages) return fail(Code::kInvalidArgument);
  } else {
    const uintptr_t lo = ask.va, len = ask.count;
    if (lo + len < lo || lo + len > std::numeric_limits<uintptr_t>::max() - kPageMask) {
      return fail(Code::kInvalidArgument);
    }
    start = lo & ~kPageMask;
    npages = (((lo + len + kPageMask) & ~kPageMask) - start) >> kPageShift;
    if (ask.output == PinOutput::kSegments && ask.max_segment != 0) {
      if (ask.max_segment < kPageSize4K) return fail(Code::kInvalidArgument);
      max_segment = ask.max_segment & ~uint64_t{kPageMask};
    }
    if (ask.output == PinOutput::kHandle && HasAny(ask.flags, kGupPartial)) {
      return fail(Code::kInvalidArgument);
    }
    if (ask.output == PinOutput::kVector && ask.cap == 0) return fail(Code::kInvalidArgument);
    if (len == 0) return FlagsOk(ask.flags) ? plan : fail(Code::kInvalidArgument);
    if (ask.cap == 0 && ask.output != PinOutput::kHandle) return fail(Code::kInvalidArgument);
  }
  if (!FlagsOk(ask.flags)) return fail(Code::kInvalidArgument);
  if (npages > (std::numeric_limits<uintptr_t>::max() - start) >> kPageShift) {
    return fail(Code::kInvalidArgument);
  }

  const uintptr_t end = start + (npages << kPageShift);
  const RefKind kind = HasAny(ask.flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
  const size_t span_cap =
      ask.output == PinOutput::kSpans ? ask.cap : std::numeric_limits<size_t>::max();
  Segments segs(ask.output == PinOutput::kSegments ? ask.cap : 0, max_segment);
  const int page_shift = model.geometry().page_shift;
  Code stop = Code::kOk;
  uintptr_t cur = start;
  while (cur < end) {
    uintptr_t leaf_va = 0;
    const ModelLeaf* l = cur < model.va_limit() ? model.Find(cur, &leaf_va) : nullptr;
    if (l == nullptr) {
      stop = cur == ask.refused_at && ask.refused_code != Code::kOk ? ask.refused_code
                                                                    : Code::kNotFound;
      break;
    }
    if (l->exclusive) {
      stop = Code::kFailedPrecondition;
      break;
    }
    if (HasAny(ask.flags, kGupWrite) && !HasAny(l->prot, kProtWrite)) {
      stop = Code::kPermissionDenied;
      break;
    }
    if (HasAny(ask.flags, kGupLongterm) && l->folio->has_flag(kFolioBorrowed)) {
      stop = Code::kFailedPrecondition;
      break;
    }
    // The folio is mapped whole from an address aligned to its size.
    const uintptr_t folio_va = leaf_va & ~(l->folio->size() - 1);
    (void)page_shift;
    const uintptr_t take_end = std::min(leaf_va + l->bytes, end);
    const auto first = static_cast<uint32_t>((cur - folio_va) >> kPageShift);
    const auto pages = static_cast<uint32_t>((take_end - cur) >> kPageShift);
    if (ask.output == PinOutput::kSegments) {
      if (l->folio->head_pfn == kUnknownPfn) {
        stop = Code::kFailedPrecondition;
        break;
      }
      const uintptr_t from = std::max(cur, ask.va), to = std::min(take_end, ask.va + ask.count);
      if (!segs.Add(((l->folio->head_pfn + first) << kPageShift) + (from - cur), to - from)) {
        stop = Code::kResourceExhausted;
        // A partial pin (not FAST_ONLY, which takes whole leaves) keeps the leaf's whole
        // pages the segments have room for: here added one page at a time until one
        // does not fit.
        if (!HasAny(ask.flags, kGupPartial) || HasAny(ask.flags, kGupFastOnly)) break;
        Segments trial = segs;
        uint32_t fit = 0;
        for (; fit < pages; ++fit) {
          const uintptr_t page_va = cur + (uintptr_t{fit} << kPageShift);
          const uintptr_t pf = std::max(page_va, ask.va);
          const uintptr_t pt = std::min(page_va + kPageSize4K, ask.va + ask.count);
          const uint64_t phys = ((l->folio->head_pfn + first + fit) << kPageShift) + (pf - page_va);
          if (!trial.Add(phys, pt - pf)) break;
        }
        if (fit == 0) break;
        segs = std::move(trial);
        if (!plan.spans.empty() && plan.spans.back().folio == l->folio &&
            plan.spans.back().first_page + plan.spans.back().pages == first) {
          plan.spans.back().pages += fit;
        } else {
          plan.spans.push_back({l->folio, first, fit});
        }
        for (uint32_t i = 0; i < fit; ++i) plan.pages.emplace_back(l->folio, first + i, kind);
        cur += uintptr_t{fit} << kPageShift;
        break;
      }
    }
    if (!plan.spans.empty() && plan.spans.back().folio == l->folio &&
        plan.spans.back().first_page + plan.spans.back().pages == first) {
      plan.spans.back().pages += pages;
    } else if (plan.spans.size() == span_cap) {
      stop = Code::kResourceExhausted;
      break;
    } else {
      plan.spans.push_back({l->folio, first, pages});
    }
    for (uint32_t i = 0; i < pages; ++i) plan.pages.emplace_back(l->folio, first + i, kind);
    cur = take_end;
  }
  plan.segments = std::move(segs.out());
  if (stop == Code::kOk) return plan;
  if (HasAny(ask.flags, kGupPartial) && cur > start) return plan;
  return fail(stop);
}

}  // namespace hugemm::fuzz
