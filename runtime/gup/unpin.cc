// Unpinning: by page array, by spans, or by a walk of the range that was pinned.
#include "runtime/gup/unpin.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "hugemm/gup.h"
#include "runtime/folio/refs.h"

namespace hugemm {
namespace gup_internal {
namespace {

// Longest run of page-array entries given back in one operation: far beyond any folio,
// short of what could overflow an order-0 folio's biased count.
constexpr size_t kMaxUnpinRun = size_t{1} << 20;

// The bits of an entry that name its folio and kind: all but the page index.
constexpr uint64_t kRunKeyMask =
    ~(((uint64_t{1} << PageRef::kIndexBits) - 1) << PageRef::kIndexShift);

// How many entries from pages[i] on name pages[i]'s folio with its kind. Every entry is
// read: the encoding would let a pinned folio's run end be guessed from the first entry's
// index (a 2M folio's pages from k on end 512 - k entries later), but a caller may
// concatenate the arrays of several pins, and then an entry in between can belong to
// another folio even when both ends match. So the loop reads eight entries at a time
// without a branch per entry, which the compiler turns into vector compares: reading the
// array costs no more than the pin's writing it.
size_t RunLength(const PageRef* pages, size_t i, size_t n) {
  const uint64_t key = pages[i].bits() & kRunKeyMask;
  const size_t limit = std::min(n, i + kMaxUnpinRun);
  size_t j = i + 1;
  while (j + 8 <= limit) {
    uint64_t differ = 0;
    for (size_t k = 0; k < 8; ++k) differ |= (pages[j + k].bits() & kRunKeyMask) ^ key;
    if (differ != 0) break;
    j += 8;
  }
  while (j < limit && (pages[j].bits() & kRunKeyMask) == key) ++j;
  return j - i;
}

}  // namespace

absl::Status CheckHeld(const PageTable& table, Folio* folio, size_t pages, RefKind kind,
                       int64_t keep, int64_t reserved) {
  // A pin of a large folio is counted in its pincount; one of an order-0 folio adds
  // kPinBias to its refcount (folio.h). Each table entry mapping the folio holds one
  // reference besides.
  // Both counts from one load of their word: read apart, a pin made between the reads
  // would count in one and not the other, and a range truly held look short.
  const uint64_t counts = folio->counts.load(std::memory_order_acquire);
  const int64_t refcount = static_cast<int32_t>(folio_internal::RefcountOf(counts));
  const int64_t pins = folio->large() ? static_cast<int32_t>(folio_internal::PincountOf(counts))
                                      : refcount / kPinBias;
  int64_t held = pins - reserved;
  if (kind == RefKind::kGet) {
    int64_t mappings = 0;
    table.Walk(folio->data, folio->size(), [&](const LogicalLeaf& l) {
      if (l.folio == folio) {
        mappings += static_cast<int64_t>(l.bytes / table.geometry().entry_bytes(l.level));
      }
    });
    held = refcount - (folio->large() ? pins : pins * kPinBias) - mappings - keep - reserved;
  }
  if (held >= static_cast<int64_t>(pages)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "the folio at 0x", absl::Hex(reinterpret_cast<uintptr_t>(folio->data)), " holds ",
      std::max<int64_t>(held, 0), kind == RefKind::kPin ? " pins" : " references", " of the ",
      pages, " this range would release",
      reserved > 0 ? absl::StrCat(" (besides ", reserved,
                                  " of recorded pins, which go back by their records)")
                   : "",
      "; nothing unpinned"));
}

size_t UnpinPageRefs(absl::Span<const PageRef> refs, bool dirty, RefGranularity granularity,
                     size_t* refused) {
  // A plain pointer: this loop is the hot path of unpin.
  const PageRef* pages = refs.data();
  const size_t n = refs.size();
  size_t ops = 0;
  size_t no = 0;
  if (granularity == RefGranularity::kPage) {
    for (size_t i = 0; i < n; ++i) {
      if (pages[i].folio() == nullptr) continue;
      const bool done = folio_internal::UngrabHeld(pages[i].folio(), 1, pages[i].kind(), dirty);
      ops += done;
      no += !done;
    }
  } else {
    for (size_t i = 0; i < n;) {
      const size_t run = RunLength(pages, i, n);
      if (Folio* folio = pages[i].folio(); folio != nullptr) {
        const bool done =
            folio_internal::UngrabHeld(folio, static_cast<uint32_t>(run), pages[i].kind(), dirty);
        ops += done;
        no += !done;
      }
      i += run;
    }
  }
  if (refused != nullptr) *refused = no;
  return ops;
}

size_t UnpinSpans(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty, size_t* refused) {
  size_t ops = 0;
  size_t no = 0;
  for (const FolioSpan& s : spans) {
    if (s.folio == nullptr || s.pages == 0) continue;
    const bool done = folio_internal::UngrabHeld(s.folio, s.pages, kind, dirty);
    ops += done;
    no += !done;
  }
  if (refused != nullptr) *refused = no;
  return ops;
}

namespace {

// UnpinRange's walk and checks of the page-aligned [start, end): the runs of pages of one
// folio in address order into `runs`, or why nothing may be unpinned. Called inside a read
// section, which keeps the folios it finds readable.
absl::Status WalkAndCheck(const PageTable& table, uintptr_t start, uintptr_t end, RefKind kind,
                          int64_t owner_refs, absl::FunctionRef<int64_t(const Folio*)> reserved,
                          std::vector<std::pair<Folio*, size_t>>& runs) {
  // One walk: whether every page is still mapped, and the runs of pages of one folio in
  // address order (adjacent leaves of the same folio merged). A hole means the contract
  // was broken and nothing can be given back safely.
  uintptr_t covered = start;
  bool at_home = true;  // every run lies where its folio's own address puts it
  table.Walk(reinterpret_cast<const void*>(start), end - start, [&](const LogicalLeaf& l) {
    const uintptr_t lo = std::max(l.va, start);
    const uintptr_t hi = std::min(l.va + l.bytes, end);
    if (lo == covered) covered = hi;
    const auto home = reinterpret_cast<uintptr_t>(l.folio->data);
    at_home = at_home && lo >= home && hi <= home + l.folio->size();
    const size_t pages = (hi - lo) >> kPageShift;
    if (!runs.empty() && runs.back().first == l.folio) {
      runs.back().second += pages;
    } else {
      runs.emplace_back(l.folio, pages);
    }
  });
  // "unpin [0x7f.., +512 pages) PIN: <why>": the request, then what is wrong with it.
  const auto refused = [&](absl::string_view why) {
    return absl::FailedPreconditionError(
        absl::StrCat("unpin [0x", absl::Hex(start), ", +", (end - start) >> kPageShift, " pages) ",
                     kind == RefKind::kPin ? "PIN" : "GET", ": ", why));
  };
  if (covered < end) {
    return refused(absl::StrCat("0x", absl::Hex(covered),
                                " is no longer mapped; nothing unpinned (unpin by spans)"));
  }
  // Each folio must hold as many references of the kind as the range has pages on it: a
  // range never pinned, or released already, must not drive the counts below what the
  // other pins and the mappings hold. Runs at home are each a different folio (live
  // folios' own ranges are disjoint, so a folio's pages are one stretch of the range); a
  // folio mapped a second time elsewhere in the range has its runs summed first.
  if (at_home) {
    for (const auto& [folio, pages] : runs) {
      if (absl::Status st =
              gup_internal::CheckHeld(table, folio, pages, kind, owner_refs, reserved(folio));
          !st.ok()) {
        return refused(st.message());
      }
    }
  } else {
    std::vector<std::pair<Folio*, size_t>> summed = runs;
    std::sort(summed.begin(), summed.end());
    for (size_t i = 0; i < summed.size();) {
      size_t pages = 0;
      size_t j = i;
      for (; j < summed.size() && summed[j].first == summed[i].first; ++j)
        pages += summed[j].second;
      if (absl::Status st = gup_internal::CheckHeld(table, summed[i].first, pages, kind, owner_refs,
                                                    reserved(summed[i].first));
          !st.ok()) {
        return refused(st.message());
      }
      i = j;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status UnpinRange(const PageTable& table, const void* va, size_t length, RefKind kind,
                        bool dirty, int64_t owner_refs,
                        absl::FunctionRef<int64_t(const Folio*)> reserved) {
  const auto lo = reinterpret_cast<uintptr_t>(va);
  const uintptr_t mask = kPageSize4K - 1;
  if (lo + length < lo || lo + length > std::numeric_limits<uintptr_t>::max() - mask) {
    return absl::InvalidArgumentError(
        absl::StrCat("range [0x", absl::Hex(lo), ", +", length, ") wraps the address space"));
  }
  if (length == 0) return absl::OkStatus();
  const uintptr_t start = lo & ~mask;
  const uintptr_t end = (lo + length + mask) & ~mask;
  // The walk and the checks run in one read section: the folios found stay readable while
  // they are checked, also where the range is unmapped and freed meanwhile (then it was
  // not pinned, and the checks refuse it). Those that pass are held by the pins released,
  // which go back outside it, as in every unpin.
  std::vector<std::pair<Folio*, size_t>> runs;
  {
    ReadSection section;
    if (absl::Status st = WalkAndCheck(table, start, end, kind, owner_refs, reserved, runs);
        !st.ok()) {
      return st;
    }
  }
  for (const auto& [folio, pages] : runs) {
    FolioUngrab(folio, static_cast<int32_t>(pages), kind, dirty);
  }
  return absl::OkStatus();
}

}  // namespace gup_internal

size_t Pinner::UnpinPages(absl::Span<const PageRef> pages, bool dirty, size_t* refused) const {
  return gup_internal::UnpinPageRefs(pages, dirty, options_.granularity, refused);
}

absl::Status Pinner::UnpinRange(const void* va, size_t length, RefKind kind, bool dirty) const {
  return gup_internal::UnpinRange(table_, va, length, kind, dirty, options_.owner_refs,
                                  [](const Folio*) { return int64_t{0}; });
}

absl::Status Pinner::UnpinRange(const void* va, size_t length, RefKind kind, bool dirty,
                                absl::FunctionRef<int64_t(const Folio*)> reserved) const {
  return gup_internal::UnpinRange(table_, va, length, kind, dirty, options_.owner_refs, reserved);
}

size_t Pinner::UnpinFolios(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty,
                           size_t* refused) const {
  return gup_internal::UnpinSpans(spans, kind, dirty, refused);
}

bool Pinner::MaybeDmaPinned(const void* va) const {
  ReadSection rs;
  std::optional<Translation> t = table_.Translate(va);
  return t.has_value() && FolioMaybeDmaPinned(t->folio);
}

}  // namespace hugemm
