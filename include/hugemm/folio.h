// Compound folios: one descriptor per folio, never one per 4K page.
//
// A folio is 2^order contiguous 4K pages of one backing, described by a 56-byte Folio
// that carries the reference and pin counts for all of them, as the kernel keeps them on
// the head page, in one 64-bit word, so that a pin or an unpin of a large folio is one
// atomic read-modify-write where the kernel needs two. Reference rules follow the
// kernel's:
//   - the owner holds one reference; a mapping holds one; each pin holds `refs`;
//   - TryGet fails on a zero refcount, so a racing reader never resurrects a free folio;
//   - the folio goes back to its owner when the last reference drops, whoever drops it;
//   - pins on a large folio add refs to refcount and exactly refs to pincount; on an
//     order-0 folio they add refs * kPinBias to refcount (no room for a pincount there
//     in the kernel; we keep the kernel's rule so maybe_dma_pinned reads the same);
//   - a count that would overflow is refused with an error, never wrapped.
//
//   hugemm::Folio* f = handle.folio();
//   absl::Status st = hugemm::FolioTryGrab(f, 16, hugemm::RefKind::kPin);
//   if (!st.ok()) return st;
//   ... DMA to f->page_pfn(0) ...
//   hugemm::FolioUngrab(f, 16, hugemm::RefKind::kPin, /*dirty=*/true);
#ifndef HUGEMM_FOLIO_H_
#define HUGEMM_FOLIO_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "hugemm/backing.h"
#include "hugemm/bitmask.h"
#include "hugemm/page_size.h"

namespace hugemm {

class FolioOwner;

// A folio's state bits. A bitmask: combine with | and test with &.
enum class FolioFlag : uint32_t {
  kNone = 0,
  kDirty = 1u << 0,        // written through a pin (unpin with dirty) or mapping
  kReferenced = 1u << 1,   // touched by a pin or a walk since last cleared
  kBorrowed = 1u << 2,     // external memory: never freed, may move (no LONGTERM)
  kReserveMeta = 1u << 3,  // the descriptor lives in the backing's reserve (altmap)
  kFree = 1u << 4,         // in a pool's free list
  kLocked = 1u << 5,       // being split, merged or mapped; readers back off
};

template <>
inline constexpr bool kIsBitmask<FolioFlag> = true;

// The flags by their kernel-like names, for code that reads better unqualified.
inline constexpr FolioFlag kFolioDirty = FolioFlag::kDirty;
inline constexpr FolioFlag kFolioReferenced = FolioFlag::kReferenced;
inline constexpr FolioFlag kFolioBorrowed = FolioFlag::kBorrowed;
inline constexpr FolioFlag kFolioReserveMeta = FolioFlag::kReserveMeta;
inline constexpr FolioFlag kFolioFree = FolioFlag::kFree;
inline constexpr FolioFlag kFolioLocked = FolioFlag::kLocked;

// The order-0 pin bias: the kernel's GUP_PIN_COUNTING_BIAS.
inline constexpr int32_t kPinBias = 1024;

// A plain reference (the kernel's FOLL_GET) or a DMA pin (FOLL_PIN).
enum class RefKind : uint8_t { kGet, kPin };

// The descriptor. Its counts and flags are atomics that any thread may change through
// the functions below; the other fields are written by the owner while it alone holds
// the folio (before it hands the first reference out, or after the last one came back)
// and only read otherwise.
struct Folio {
  // refcount in bits 0..31, pincount (exact, large folios only) in bits 32..63: one word,
  // so that one atomic takes both. Change it only through the functions below; an owner
  // (re)initialises it with CountsWord while it alone holds the folio.
  std::atomic<uint64_t> counts{0};
  std::atomic<uint32_t> flags{0};  // FolioFlag bits
  uint8_t order = 0;               // log2(bytes / 4K)
  BackingKind backing = BackingKind::kAnon;
  int16_t node = -1;
  uint64_t head_pfn = kUnknownPfn;
  std::byte* data = nullptr;  // virtual address of page 0
  // Who gets the folio back when the last reference drops; nullptr for borrowed memory.
  FolioOwner* owner = nullptr;
  // Owner-private words (free-list links, buddy bookkeeping).
  uint64_t owner_private[2] = {0, 0};

  static constexpr int kPincountShift = 32;
  // The counts word holding `refcount` references of which `pincount` are pins.
  static constexpr uint64_t CountsWord(int32_t refcount, int32_t pincount) {
    return static_cast<uint32_t>(refcount) |
           (uint64_t{static_cast<uint32_t>(pincount)} << kPincountShift);
  }
  // The counts, read with acquire (a folio in use may change right after).
  int32_t refcount() const {
    return static_cast<int32_t>(static_cast<uint32_t>(counts.load(std::memory_order_acquire)));
  }
  int32_t pincount() const {
    return static_cast<int32_t>(counts.load(std::memory_order_acquire) >> kPincountShift);
  }

  size_t size() const { return kPageSize4K << order; }
  size_t nr_pages() const { return size_t{1} << order; }
  bool large() const { return order > 0; }
  // Relaxed: a flag is a hint about the folio, never what orders memory accesses.
  bool has_flag(FolioFlag f) const {
    return (flags.load(std::memory_order_relaxed) & static_cast<uint32_t>(f)) != 0;
  }
  void set_flag(FolioFlag f) {
    flags.fetch_or(static_cast<uint32_t>(f), std::memory_order_relaxed);
  }
  void clear_flag(FolioFlag f) {
    flags.fetch_and(~static_cast<uint32_t>(f), std::memory_order_relaxed);
  }

  // folio -> page i, without per-page storage.
  std::byte* page_address(size_t i) const { return data + (i << kPageShift); }
  uint64_t page_pfn(size_t i) const { return head_pfn == kUnknownPfn ? kUnknownPfn : head_pfn + i; }
  // Which page of this folio holds addr (caller guarantees addr is inside).
  size_t page_index(const void* addr) const {
    return static_cast<size_t>(static_cast<const std::byte*>(addr) - data) >> kPageShift;
  }
  bool contains(const void* addr) const {
    auto* p = static_cast<const std::byte*>(addr);
    return p >= data && p < data + size();
  }
};
// 56 bytes, 8-byte aligned: descriptors sit in arrays without padding (what a pool holds
// per huge folio is its descriptor and a share of its extent's record, under 64 bytes).
static_assert(sizeof(Folio) == 56 && alignof(Folio) == 8, "the descriptor's layout");

// Receives folios whose last reference dropped (a pool) — and nothing else.
// ReleaseFolio runs on whichever thread dropped the last reference, so an owner must
// take folios back from any thread.
class FolioOwner {
 public:
  virtual ~FolioOwner() = default;
  virtual void ReleaseFolio(Folio* folio) = 0;
};

// The reference operations. All are lock-free and may race with each other on one
// folio from any number of threads. Each is one atomic read-modify-write of the counts
// word when nothing races with it: a compare-and-swap for those that must not raise a
// zero count or pass the maximum (retried while other threads change the word), a
// fetch-sub for those that drop references. Counts never exceed INT32_MAX.
//
// One more reference; the caller already holds one (refcount > 0). InvalidArgument for
// refs <= 0; FailedPrecondition on a free folio (refcount 0: never a resurrection);
// ResourceExhausted if the count would overflow. Nothing is taken on error.
[[nodiscard]] absl::Status FolioGet(Folio* folio, int32_t refs = 1);
// More references only if the folio is live (refcount > 0). false, taking nothing, for
// refs <= 0, a freed or freeing folio or an overflow; `error` (if not null) then says
// which: InvalidArgument, NotFound or ResourceExhausted.
[[nodiscard]] bool FolioTryGet(Folio* folio, int32_t refs = 1, absl::Status* error = nullptr);
// Drops `refs` references the caller holds; the last one returns the folio to its
// owner (on this thread). false, dropping nothing, for refs <= 0 or a folio whose
// refcount is below `refs`: a put of references never taken, or put already. (That check
// is exact only while no other thread changes the folio's counts; see FolioUngrab.)
bool FolioPut(Folio* folio, int32_t refs = 1);

// Takes `refs` page references as GET (plain) or PIN (DMA) at once on the head, as
// GUP-fast does per leaf: refcount += refs (or refs * kPinBias for an order-0 pin),
// pincount += refs for a large-folio pin. InvalidArgument for refs <= 0, NotFound on a
// freed folio, ResourceExhausted on overflow; nothing is taken on error.
[[nodiscard]] absl::Status FolioTryGrab(Folio* folio, int32_t refs, RefKind kind);
// Undoes FolioTryGrab, in the same one operation; marks the folio dirty first when asked
// (a flag already set is not written again). false, giving nothing back, for refs <= 0 or
// beyond what a grab can take, or when the folio holds fewer references of `kind` than
// `refs` (a pincount, or an order-0 folio's refcount, below the pins; a refcount below
// the references): an unpin of what was never pinned, was unpinned already, or was
// pinned as the other kind, which would otherwise take references the folio's mappings
// or other holders own. The check reads the result of the one operation and undoes it
// when it fell short, so it is exact while no other thread changes the folio's counts;
// one that does so at the same moment may be refused too. It catches a mistake; it
// cannot tell a holder's references from another's.
bool FolioUngrab(Folio* folio, int32_t refs, RefKind kind, bool dirty = false);

// What a fresh folio descriptor says: everything but its counts.
struct FolioInit {
  uint8_t order = 0;
  BackingKind backing = BackingKind::kAnon;
  int node = -1;
  uint64_t head_pfn = kUnknownPfn;
  std::byte* data = nullptr;
  FolioOwner* owner = nullptr;  // nullptr: nobody takes it back (borrowed memory)
  FolioFlag flags = FolioFlag::kNone;
};

// The one folio initialiser: describes `folio` as `init` says, holding one reference (its
// owner's), no pins and nothing in the owner's private words. Every descriptor starts here.
void InitFolio(Folio* folio, const FolioInit& init);

// Describes native page `i` of `extent` as one folio (InitFolio with the extent's order,
// backing, node, data and head PFN). For descriptors made outside an allocator: buffers
// of whole pages, tools, tests.
void InitFolioForPage(Folio* folio, const Extent& extent, size_t i, FolioOwner* owner = nullptr);

// True if the folio may be pinned for DMA: exact for large folios, as in the kernel
// (pincount > 0); for order-0 ones, refcount >= kPinBias.
[[nodiscard]] bool FolioMaybeDmaPinned(const Folio* folio);

// A snapshot of one folio, for people and tests: data only, read with relaxed loads (a
// folio in use may change right after).
struct FolioInfo {
  std::byte* data = nullptr;
  size_t size = 0;
  int order = 0;
  int32_t refcount = 0;
  // Pins of a large folio; 0 for an order-0 folio, whose pins add kPinBias each to
  // refcount (FolioMaybeDmaPinned reads either).
  int32_t pincount = 0;
  uint32_t flags = 0;  // FolioFlag bits, as the C API hands them out
  int node = -1;
  BackingKind backing = BackingKind::kAnon;
  uint64_t head_pfn = kUnknownPfn;
  bool meta_in_reserve = false;  // the descriptor lives in the backing's reserve
  bool has(FolioFlag f) const { return (flags & static_cast<uint32_t>(f)) != 0; }
  const char* meta_placement() const { return meta_in_reserve ? "reserve" : "system"; }
};
[[nodiscard]] FolioInfo DescribeFolio(const Folio& folio);

}  // namespace hugemm

#endif  // HUGEMM_FOLIO_H_
