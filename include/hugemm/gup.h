// Pin and unpin: GUP-fast over the shadow page table, one reference operation per folio.
//
//   hugemm::Pinner pinner(table);
//   std::vector<hugemm::PageRef> pages(512);
//   absl::StatusOr<size_t> n =
//       pinner.PinPages(buf, 512, hugemm::kGupPin | hugemm::kGupWrite, absl::MakeSpan(pages));
//   ... hand pages[i].pfn() to a device ...
//   pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n), /*dirty=*/true);
//
// The fast path is the kernel's gup_fast: inside a read section, per logical leaf, look
// it up, take `refs` = pages covered on the folio head in one atomic (FolioTryGrab), then
// re-read the entry and undo if it changed. What the fast path cannot take goes to the
// slow path: under the leaf's table lock (PageTable::WithLeafLocked) it grabs what is
// mapped, asks the Populator to map what is missing, and reports what cannot be pinned.
//
// Outputs, all in caller memory so that the hot path never allocates:
//   PageRef     one per 4K page, in address order (the kernel's page array);
//   FolioSpan   one per folio run (head, first page, count): "head pages only";
//   DmaSegment  physically contiguous byte runs, capped at a maximum length, from the
//               PFNs recorded at map time.
// A pin is all-or-nothing unless kGupPartial is given: on failure every reference the
// call took is given back and the status names the request, the address and the reason.
// The output array may then have been written in part (a growing vector is left as it
// was): what it holds names nothing pinned.
//
// Errors of every pin (each method lists its own besides):
//   InvalidArgument     unknown flags, not exactly one of PIN and GET, LONGTERM without
//                       PIN, a range that wraps the address space, no room for the output;
//   NotFound            a page nothing maps (and no Populator, or it could not map it);
//   PermissionDenied    a WRITE pin of a read-only mapping;
//   FailedPrecondition  a device-exclusive page; a LONGTERM pin of borrowed memory;
//   ResourceExhausted   the output is full, or a folio count would overflow;
//   Unavailable         FAST_ONLY, and the mapping kept changing under the fast path;
//   Aborted             a folio freed between lookup and grab, seen under the lock.
// With kGupPartial, an error after at least one page is pinned returns the pages pinned
// so far instead.
#ifndef HUGEMM_GUP_H_
#define HUGEMM_GUP_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/bitmask.h"
#include "hugemm/folio.h"
#include "hugemm/pgtable.h"

namespace hugemm {

namespace gup_internal {
struct PinContext;
class PinnerTestPeer;
}  // namespace gup_internal

// What a pin takes and how: a bitmask of the constants below. A type of its own, so that
// it mixes with nothing else (protections, plain integers). The C API's HUGEMM_* flags
// have the same values.
enum class GupFlags : uint32_t {};
inline constexpr GupFlags kGupNone{0};
// References for DMA, counted in the folio's pincount (FOLL_PIN).
inline constexpr GupFlags kGupPin{1u << 0};
// Plain references (FOLL_GET). A pin takes exactly one of PIN and GET.
inline constexpr GupFlags kGupGet{1u << 1};
// The device will write: needs a writable mapping (FOLL_WRITE).
inline constexpr GupFlags kGupWrite{1u << 2};
// Held indefinitely (FOLL_LONGTERM): PIN only, and refused on memory that cannot stay put
// (borrowed external ranges).
inline constexpr GupFlags kGupLongterm{1u << 3};
// Never the slow path: no table lock, no populate (get_user_pages_fast_only).
inline constexpr GupFlags kGupFastOnly{1u << 4};
// Return what was pinned instead of failing; the caller unpins it.
inline constexpr GupFlags kGupPartial{1u << 5};

template <>
inline constexpr bool kIsBitmask<GupFlags> = true;

// "PIN|WRITE|LONGTERM", unknown bits in hex: for messages.
std::string GupFlagsName(GupFlags flags);

// OK for a set of flags a pin takes, else InvalidArgument naming what is wrong: unknown
// bits, not exactly one of PIN and GET, LONGTERM without PIN. Every pin checks its flags
// this way, and the C API checks the flags of its unpins by it too.
absl::Status CheckGupFlags(GupFlags flags);

// The experiment switch: one reference operation per folio run (what the kernel does
// since compound-head batching) or one per 4K page (what it did before), so the same
// memory can show both. Affects pinning and UnpinPages; results are identical.
enum class RefGranularity { kFolio, kPage };

// A page-array entry: 8 bytes, like the kernel's struct page *. It packs the folio
// descriptor's address, the page's index inside the folio and the reference kind, so
// unpin finds the head in O(1) and the page's address and PFN need no per-page
// descriptor, and the array costs what the kernel's does to write:
//   bits 63..19  descriptor address >> 3 (descriptors are 8-byte aligned; addresses
//                below 2^48, which Linux user space never exceeds without asking for
//                high addresses on 5-level paging)
//   bits 18..1   page index (a 1G folio has 2^18 pages)
//   bit  0       1 for GET references, 0 for PIN, so UnpinPages needs no flags
class PageRef {
 public:
  static constexpr int kKindBit = 0;          // 1: a GET reference, 0: a PIN
  static constexpr int kIndexShift = 1;       // the page's index inside its folio ...
  static constexpr int kIndexBits = 18;       // ... in this many bits (a 1G folio's pages)
  static constexpr int kFolioShift = 19;      // the descriptor's address, above the index ...
  static constexpr int kDescriptorAlign = 3;  // ... without its three zero bits (8-byte aligned)
  static constexpr uintptr_t kMaxDescriptor = uintptr_t{1} << (64 - kFolioShift + kDescriptorAlign);

  PageRef() = default;
  PageRef(Folio* folio, uint32_t index, RefKind kind)
      : bits_((static_cast<uint64_t>(reinterpret_cast<uintptr_t>(folio)) >> kDescriptorAlign
                                                                                << kFolioShift) |
              (uint64_t{index} << kIndexShift) |
              (uint64_t{kind == RefKind::kGet ? 1u : 0u} << kKindBit)) {}
  // Whether a folio's pages can be encoded (always, for descriptors this runtime makes).
  static bool Encodable(const Folio* folio) {
    return reinterpret_cast<uintptr_t>(folio) < kMaxDescriptor && folio->order <= kIndexBits;
  }

  Folio* folio() const {
    return reinterpret_cast<Folio*>((bits_ >> kFolioShift) << kDescriptorAlign);
  }
  uint32_t index() const {
    return static_cast<uint32_t>((bits_ >> kIndexShift) & ((1u << kIndexBits) - 1));
  }
  RefKind kind() const { return (bits_ >> kKindBit) & 1 ? RefKind::kGet : RefKind::kPin; }
  std::byte* address() const { return folio()->page_address(index()); }
  uint64_t pfn() const { return folio()->page_pfn(index()); }
  uint64_t bits() const { return bits_; }
  static PageRef FromBits(uint64_t bits) {
    PageRef r;
    r.bits_ = bits;
    return r;
  }
  bool operator==(const PageRef& other) const { return bits_ == other.bits_; }

 private:
  uint64_t bits_ = 0;
};
static_assert(sizeof(PageRef) == 8);

// Pages [first_page, first_page + pages) of one folio, referenced `pages` times.
struct FolioSpan {
  Folio* folio = nullptr;
  uint32_t first_page = 0;
  uint32_t pages = 0;
};
static_assert(sizeof(FolioSpan) == 16);

// A byte run contiguous in the device's address space, for its scatter-gather list:
// physical addresses, or with a DmaAddressSpace its addresses (an IOMMU's IOVAs).
struct DmaSegment {
  uint64_t phys_addr = 0;  // the device address: physical, or in the DmaAddressSpace
  uint64_t length = 0;
};

// The addresses a device uses when they are not the physical ones: an IOMMU's IOVA
// space, set up once for all the memory (hugemm/vfio.h's IovaMapper). Given to
// PinSegments, it makes the segments that space's runs: contiguity is judged there.
//
// Thread safety: called from any pinning thread at once, inside the pin's read section:
// an implementation answers from memory, never blocks for long, and never pins, maps or
// frees through the runtime.
class DmaAddressSpace {
 public:
  virtual ~DmaAddressSpace() = default;
  // The device address of the byte at `va` into `*addr`, and into `*contiguous` how many
  // bytes from it on (at least 1) are contiguous in the device's space; false when the
  // device has no address for it.
  virtual bool DeviceAddress(uintptr_t va, uint64_t* addr, uint64_t* contiguous) const = 0;
};

// Maps memory where the slow path found none: "fault it in". The allocator-backed
// runtime implements it over the range's pool.
//
// Thread safety: called outside any read section and table lock, one call at a time per
// Pinner (from whichever thread is pinning).
class Populator {
 public:
  virtual ~Populator() = default;
  // Map something covering the base page at `va`, writable when `write`. AlreadyExists
  // (someone mapped it first) counts as success; any other error fails the pin.
  virtual absl::Status Populate(PageTable& table, uintptr_t va, bool write) = 0;
};

struct PinnerOptions {
  RefGranularity granularity = RefGranularity::kFolio;
  Populator* populator = nullptr;  // none: unmapped memory is an error
  // References every mapped folio holds besides its mappings' and its pins: 1 where each
  // folio's owner (or registration) keeps its own while the folio is mapped, as a
  // Runtime's do; 0 where the mappings may hold the only ones (a Populator's folios, like
  // faulted-in pages). A GET UnpinRange never takes these. Negative counts as 0.
  int32_t owner_refs = 0;
};

class PinnedRange;

// Pins and unpins the memory a PageTable maps. The table (and the populator, if any) must
// outlive it.
//
// Thread safety: thread-safe. Any number of threads may pin and unpin through one Pinner
// at once, while other threads change the table's mappings.
class Pinner {
 public:
  explicit Pinner(PageTable& table, PinnerOptions options = {});
  Pinner(const Pinner&) = delete;
  Pinner& operator=(const Pinner&) = delete;

  PageTable& table() const { return table_; }
  const PinnerOptions& options() const { return options_; }

  // Pins `npages` 4K pages from the page holding `va` into pages[0..npages). Returns the
  // number pinned: npages, or with kGupPartial possibly fewer (an error if none).
  //   InvalidArgument: `pages` shorter than `npages`; a folio whose descriptor a PageRef
  //   cannot encode (use folio spans).
  [[nodiscard]] absl::StatusOr<size_t> PinPages(const void* va, size_t npages, GupFlags flags,
                                                absl::Span<PageRef> pages);
  // Pins the pages covering [va, va + length) as folio spans, merging consecutive pages
  // of one folio into one span. Returns the number of spans written.
  //   InvalidArgument: `spans` is empty.  ResourceExhausted: more spans than it holds.
  [[nodiscard]] absl::StatusOr<size_t> PinFolios(const void* va, size_t length, GupFlags flags,
                                                 absl::Span<FolioSpan> spans);
  // The same, appending to `*spans`, which grows with the folios pinned: for a range whose
  // folio count the caller cannot bound beforehand (it allocates for the spans written,
  // never for `length`). On failure `*spans` is as it was.
  //   InvalidArgument: `spans` is null.
  [[nodiscard]] absl::StatusOr<size_t> PinFolios(const void* va, size_t length, GupFlags flags,
                                                 std::vector<FolioSpan>* spans);
  // Pins [va, va + length) and writes its physically contiguous runs, each at most
  // `max_segment` bytes (0 = unlimited; else at least 4K, rounded down to 4K), the first
  // starting at va's own byte. Returns the number of segments written. Segments do not
  // name folios: give `pinned` to receive the folio spans (appended) for UnpinFolios, or
  // unpin with UnpinRange. A partial pin that runs out of segments pins as far as they
  // reach, in whole 4K pages, inside a leaf too (the segments' lengths say how far; with
  // kGupFastOnly, to the last whole leaf); other partial results end at a leaf boundary.
  // With `space`, the segments are runs of its addresses instead of physical ones (PFNs
  // are not needed).
  //   InvalidArgument: `segments` is empty, or max_segment below 4K.
  //   ResourceExhausted: more segments than it holds.  FailedPrecondition: memory whose
  //   PFNs are unknown (no `space`), or that `space` has no address for.
  [[nodiscard]] absl::StatusOr<size_t> PinSegments(const void* va, size_t length, GupFlags flags,
                                                   uint64_t max_segment,
                                                   absl::Span<DmaSegment> segments,
                                                   std::vector<FolioSpan>* pinned = nullptr,
                                                   const DmaAddressSpace* space = nullptr);
  // All-or-nothing pin of [va, va + length) held by a handle that unpins when dropped.
  //   InvalidArgument: kGupPartial (a handle holds all or nothing).
  [[nodiscard]] absl::StatusOr<PinnedRange> Pin(const void* va, size_t length, GupFlags flags);

  // Gives back what PinPages took: one FolioUngrab per run of entries on the same folio
  // with the same kind (per entry in kPage granularity). Dirty marks each folio once,
  // before its references drop. Returns the reference operations done. A run whose folio
  // holds fewer references of its kind than the run has entries (entries never pinned,
  // unpinned already: FolioUngrab) is refused, giving nothing back, and counted in
  // `*refused` when it is not null; the other runs are given back all the same.
  size_t UnpinPages(absl::Span<const PageRef> pages, bool dirty = false,
                    size_t* refused = nullptr) const;
  // Gives back spans of `kind`: one operation per span. Returns the operations done. A
  // span its folio does not hold (never pinned, unpinned already, pinned as the other
  // kind) is refused whole and counted in `*refused` when it is not null.
  size_t UnpinFolios(absl::Span<const FolioSpan> spans, RefKind kind, bool dirty = false,
                     size_t* refused = nullptr) const;
  // Gives back what a pin of exactly [va, va + length) with this kind took, found by a
  // walk of the table: valid only while the range still maps the folios it mapped when
  // pinned (splits and protection changes are fine; an unmap or remap is not). Use spans
  // or a PinnedRange where the mapping may change under the pin.
  //   InvalidArgument: the range wraps the address space.  FailedPrecondition: part of
  //   the range is no longer mapped, or a folio holds fewer pins (PIN), or references
  //   beyond its mappings' and PinnerOptions::owner_refs (GET), than the range has pages
  //   on it: nothing is given back. The check counts references, not their holders: a
  //   range this caller never pinned passes it while another holder's pins are there,
  //   and takes those.
  [[nodiscard]] absl::Status UnpinRange(const void* va, size_t length, RefKind kind,
                                        bool dirty = false) const;
  // The same for a caller that keeps records of some pins and gives those back by their
  // records: `reserved(folio)` says how many references of `kind` on the folio they hold,
  // and the check counts only what the folio holds beyond them. It is called inside the
  // walk's read section, so it must not change the table (Unmap would wait for it).
  [[nodiscard]] absl::Status UnpinRange(const void* va, size_t length, RefKind kind, bool dirty,
                                        absl::FunctionRef<int64_t(const Folio*)> reserved) const;

  // folio_maybe_dma_pinned for the folio mapping `va` (false when unmapped).
  [[nodiscard]] bool MaybeDmaPinned(const void* va) const;

 private:
  friend class gup_internal::PinnerTestPeer;
  gup_internal::PinContext Context();

  PageTable& table_;
  PinnerOptions options_;
  std::mutex populate_mu_;                        // one Populate at a time
  std::function<void(uintptr_t va)> after_grab_;  // tests only (pinner_test_peer.h)
};

// A pinned range that unpins itself (dirty when pinned with kGupWrite) when dropped or
// released. Move-only; the Pinner must outlive it.
//
// Thread safety: like a value: one thread at a time may use or release a handle.
class PinnedRange {
 public:
  PinnedRange() = default;
  ~PinnedRange() { Release(); }
  PinnedRange(PinnedRange&& other) noexcept;
  PinnedRange& operator=(PinnedRange&& other) noexcept;
  PinnedRange(const PinnedRange&) = delete;
  PinnedRange& operator=(const PinnedRange&) = delete;

  bool pinned() const { return pinner_ != nullptr; }
  const void* va() const { return reinterpret_cast<const void*>(va_); }
  size_t length() const { return length_; }
  GupFlags flags() const { return flags_; }
  const std::vector<FolioSpan>& spans() const { return spans_; }
  size_t page_count() const;
  // The page array (one entry per 4K page, in address order) into `out`: the first
  // min(page_count(), out.size()) entries, but none from the first folio a PageRef cannot
  // encode on (see PinPages; spans() names it). Returns how many it wrote.
  size_t Pages(absl::Span<PageRef> out) const;
  // The physically contiguous runs of [va, va + length), or those of `space` (see
  // Pinner::PinSegments).
  //   InvalidArgument: max_segment below 4K.  FailedPrecondition: memory whose PFNs are
  //   unknown (no `space`), or that `space` has no address for.
  [[nodiscard]] absl::StatusOr<std::vector<DmaSegment>> Segments(
      uint64_t max_segment = 0, const DmaAddressSpace* space = nullptr) const;
  // Unpins now; idempotent.
  void Release();

 private:
  friend class Pinner;
  RefKind kind() const;

  const Pinner* pinner_ = nullptr;
  uintptr_t va_ = 0;
  size_t length_ = 0;
  GupFlags flags_ = kGupNone;
  std::vector<FolioSpan> spans_;
};

}  // namespace hugemm

#endif  // HUGEMM_GUP_H_
