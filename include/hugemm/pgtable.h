// The shadow page table: the runtime's own radix tree over the memory it maps, with the
// kernel's geometry, whose leaves sit where the kernel maps the same address (PUD for 1G,
// PMD for 2M, PTE for 4K; contiguous groups on arm64) and point at folios.
//
//   hugemm::PageTable table(hugemm::DetectHostGeometry());
//   absl::Status st = table.Map(folio, folio->data, hugemm::kProtRead | hugemm::kProtWrite);
//   std::optional<hugemm::Translation> t = table.Translate(addr);
//
// What it promises, as the kernel does:
//   - every entry that maps a folio holds one folio reference (a PMD leaf one, its 512
//     PTEs after a split one each, a cont-PTE group one per entry); unmap drops them;
//   - a folio is mapped whole, at an address aligned to its size (hugetlb, DAX and mTHP
//     all place folios so), which is why an entry needs no page index: the page is the
//     address's offset inside the folio;
//   - a PMD leaf keeps a deposited PTE table, so that splitting it never allocates;
//   - readers never block and never see a torn entry or freed memory: they walk inside a
//     read section, and whatever a writer unhooks (a table, a device-exclusive record, a
//     folio reference, a borrowed descriptor) is freed after a grace period (liburcu);
//   - every change is announced to the subscribers of the range (notifiers()), before it
//     is made and after, without table locks held.
//
// Errors, the same for every writer (each method lists those it can return):
//   InvalidArgument     a range that is empty or not made of whole base pages, a folio
//                       not aligned to its size, a bad protection, an invalid geometry;
//   OutOfRange          a range beyond the geometry's address space;
//   NotFound            an address or part of a range that nothing maps;
//   AlreadyExists       an address something already maps;
//   FailedPrecondition  a change that does not apply to what is mapped there;
//   ResourceExhausted   no memory for a table, or a folio count that would overflow.
// A writer that fails has changed nothing, unless its comment says otherwise.
#ifndef HUGEMM_PGTABLE_H_
#define HUGEMM_PGTABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/bitmask.h"
#include "hugemm/folio.h"
#include "hugemm/geometry.h"
#include "hugemm/notify.h"
#include "hugemm/os.h"

namespace hugemm {

namespace pgtable_internal {
struct Table;
struct Entry;
struct LeafBits;
struct WalkHint;
struct Garbage;
struct WholeLeaf;
class Cursor;
class LockedEntry;
class PageTableTestPeer;
}  // namespace pgtable_internal

// A mapping's protection: a bitmask of kProtRead, kProtWrite and kProtExec. A type of
// its own, so that it mixes with nothing else (GUP flags, plain integers).
enum class Prot : uint32_t {};
inline constexpr Prot kProtNone{0};
inline constexpr Prot kProtRead{1u << 0};
inline constexpr Prot kProtWrite{1u << 1};
inline constexpr Prot kProtExec{1u << 2};

template <>
inline constexpr bool kIsBitmask<Prot> = true;

// A lock-free read section (an RCU read-side critical section). Everything a reader got
// from the table (a LeafSnapshot's slot, a folio it has not grabbed) stays valid until the
// section ends. Nests; cheap; registers the thread with liburcu on first use.
//
// Thread safety: belongs to the thread that made it, which must also end it; a thread
// inside one must not call the table's writers (they wait for every section to end).
class ReadSection {
 public:
  ReadSection();
  ~ReadSection();
  ReadSection(const ReadSection&) = delete;
  ReadSection& operator=(const ReadSection&) = delete;
};

// What a logical leaf maps: a PUD or PMD leaf, a PTE, or a whole contiguous group.
struct LogicalLeaf {
  uintptr_t va = 0;  // first byte the leaf maps
  size_t bytes = 0;  // bytes it maps
  int level = 0;     // kPteLevel, kPmdLevel, kPudLevel, ...
  Folio* folio = nullptr;
  size_t first_page = 0;  // index of its first base page inside the folio
  size_t pages = 0;       // base pages it maps
  Prot prot = kProtNone;
  bool cont = false;       // a contiguous group of entries
  bool exclusive = false;  // a device-exclusive entry: the CPU may not use it
  const void* exclusive_owner = nullptr;
};

// A reader's view of one leaf, to grab references on and then re-check (GUP-fast):
// valid only inside the ReadSection it was taken in.
struct LeafSnapshot {
  LogicalLeaf leaf;
  const void* slot = nullptr;  // the entry this snapshot read
  uint64_t word = 0;           // its value then
};

// Where an address goes: its folio, page and frame, and the leaf that maps it.
struct Translation {
  Folio* folio = nullptr;
  size_t page = 0;             // base page of the folio holding the address
  uint64_t pfn = kUnknownPfn;  // 4K frame holding the address
  int level = 0;
  uintptr_t leaf_va = 0;  // the logical leaf holding the address
  size_t leaf_bytes = 0;
  // Bytes from the address that are physically contiguous: to the end of the leaf, and
  // on across following leaves while PFNs continue, up to the caller's limit.
  size_t run_bytes = 0;
  bool exclusive = false;
  const void* exclusive_owner = nullptr;
};

// One disagreement between the shadow and the kernel.
struct VerifyMismatch {
  uintptr_t va = 0;
  std::string what;  // "0x7f..: kernel maps 4K, shadow has a PMD leaf of 2M"
};
// What a verification checked and what differed.
struct VerifyReport {
  std::map<size_t, size_t> leaves_checked;  // per leaf size (bytes), logical leaves checked
  std::vector<VerifyMismatch> mismatches;
  bool pfns_checked = false;
  bool flags_checked = false;
  // Leaves whose PFNs the kernel hides (PUD-mapped device-DAX): held against the
  // recorded PFNs and kpageflags only.
  size_t pfns_hidden = 0;
  bool ok() const { return mismatches.empty(); }
};

// Thread safety: thread-safe. Readers (Translate*, Lookup, StillMapped, Walk, Verify) take
// no lock: they never block one another or writers. WithLeafLocked is the one reader that
// locks: while its callback runs, writers of the table holding its leaf, and other
// WithLeafLocked calls there, wait. Writers (Map, Unmap, Split, Protect, MakeExclusive,
// RestoreExclusive, RegisterExternal, UnregisterExternal) may run at once from any
// threads, but never inside a ReadSection or a notifier callback (they wait for grace
// periods and announce to subscribers).
class PageTable {
 public:
  // An empty table. Never fails and never allocates: the top-level table lives inside the
  // object. An invalid geometry (see ValidateGeometry) gives a table that maps nothing:
  // every writer returns InvalidArgument naming what is wrong with it. `os` is what
  // RegisterExternal and Verify read the kernel's view through (smaps, pagemap,
  // kpageflags); it must outlive the table.
  explicit PageTable(Geometry geometry, Os& os = Os::Default());
  // Unmaps everything (dropping the references) and frees all tables. No reader, writer
  // or registration may outlive it.
  ~PageTable();
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  const Geometry& geometry() const { return geometry_; }
  Os& os() const { return os_; }

  // ---- writers ----

  // Maps the whole folio at `va` with leaves at its natural level (NaturalUnit), taking
  // one reference per entry, so that a later split never allocates.
  //   InvalidArgument: no folio; a folio not a multiple of the base page, or spanning more
  //     than one table of its level; `va` not aligned to the folio size; `prot` without
  //     read or with unknown bits.  OutOfRange: beyond the address space.
  //   AlreadyExists: anything is mapped in the range, or a larger leaf covers it.
  //   FailedPrecondition: a free folio (refcount 0: the caller holds no reference).
  //   ResourceExhausted: no memory for tables, or the folio's refcount would overflow.
  [[nodiscard]] absl::Status Map(Folio* folio, const void* va, Prot prot);
  // Removes every leaf in [va, va + length), splitting first the leaves that stick out of
  // it, drops their references and frees the tables left empty.
  //   InvalidArgument / OutOfRange: as for every range.  NotFound: a hole in the range
  //   (nothing changes).  ResourceExhausted: a split needed memory (PUD leaves only); the
  //   leaves before it are unmapped.
  [[nodiscard]] absl::Status Unmap(const void* va, size_t length);
  // Splits the logical leaf holding `va` one step: a contiguous group into its entries,
  // a PUD leaf into PMD leaves (each with its deposit), a PMD leaf into PTEs (on its
  // deposited table). The data is not touched.
  //   OutOfRange: beyond the address space.  NotFound: nothing maps `va`.
  //   FailedPrecondition: a single PTE, a device-exclusive entry, or a level below that
  //   cannot hold leaves.  ResourceExhausted: no memory for a PUD split's tables, or the
  //   folio's refcount would overflow.
  [[nodiscard]] absl::Status Split(const void* va);
  // Changes the protection of [va, va + length), splitting first the leaves that stick
  // out of it.
  //   InvalidArgument / OutOfRange: as for every range, or a bad `prot` (as for Map).
  //   NotFound: a hole in the range.  FailedPrecondition: the range holds a
  //   device-exclusive entry (restore it first).  ResourceExhausted: as for Unmap.
  [[nodiscard]] absl::Status Protect(const void* va, size_t length, Prot prot);

  // Makes the base page at `va` exclusive to `owner` (a device): splits down to a PTE,
  // tells every subscriber but the owner's, and replaces the PTE with a device-exclusive
  // entry that keeps the folio reference; readers then see `exclusive` set.
  //   OutOfRange: beyond the address space.  NotFound: nothing maps `va`.
  //   AlreadyExists: it is device-exclusive already.  ResourceExhausted: as for Split.
  [[nodiscard]] absl::Status MakeExclusive(const void* va, const void* owner);
  // Puts back the PTE a device-exclusive entry replaced.
  //   OutOfRange: beyond the address space.  FailedPrecondition: `va` holds no
  //   device-exclusive entry.
  [[nodiscard]] absl::Status RestoreExclusive(const void* va);

  // ---- readers: lock-free, each in its own ReadSection unless the caller holds one ----

  // Where `va` goes, or nullopt when nothing maps it. With `max_run`, run_bytes goes on
  // across following leaves while the frames continue, up to max_run.
  [[nodiscard]] std::optional<Translation> Translate(const void* va, size_t max_run = 0) const {
    Translation t;
    if (!TranslateInto(va, &t, max_run)) return std::nullopt;
    return t;
  }
  // The same without an optional: fills `out` and returns true on a hit. The hot path
  // (no lock, no allocation, no call but the read section's).
  [[nodiscard]] bool TranslateInto(const void* va, Translation* out, size_t max_run = 0) const;
  // Translations of many addresses in one read section, without run scanning: out[i] for
  // vas[i] and, when `hit` is not empty, hit[i] = whether it is mapped. Translates the
  // first min(vas.size(), out.size()) addresses (and no more than hit.size() when `hit` is
  // given); returns how many of those are mapped. What a DMA mapper or a batch of I/O
  // descriptors wants: the per-address cost drops to the walk.
  size_t TranslateMany(absl::Span<const void* const> vas, absl::Span<Translation> out,
                       absl::Span<bool> hit = {}) const;
  // Only the PFNs: pfns[i] for vas[i], kUnknownPfn where unmapped or unknown, for the first
  // min(vas.size(), pfns.size()) addresses; returns how many are mapped. The IOMMU /
  // scatter-gather fill loop: reads the frame word each entry keeps beside it (the PFN it
  // maps, as a hardware PTE holds one), never the folio, and while addresses stay under
  // the last table reached, one load per address.
  size_t TranslatePfns(absl::Span<const void* const> vas, absl::Span<uint64_t> pfns) const;
  // The leaf mapping `va` and the entry it was read from, or nullopt. Valid only inside a
  // ReadSection the caller holds across the call and the use.
  [[nodiscard]] std::optional<LeafSnapshot> Lookup(const void* va) const;
  // True while the entry the snapshot read still holds the same value (same section).
  [[nodiscard]] bool StillMapped(const LeafSnapshot& snapshot) const;
  // The slow path of a reader that must not lose a race (GUP's follow_page under the page
  // table lock): finds the entry mapping `va`, locks the table holding it and calls `fn`
  // with the leaf while no writer can change that entry, so references `fn` takes on the
  // folio are known to belong to a live mapping. false (fn not called) when nothing maps
  // `va`. `fn` runs in a read section under a table lock: it must not call the table's
  // writers or the notifier registry. Device-exclusive entries are passed as they are.
  bool WithLeafLocked(const void* va, absl::FunctionRef<void(const LogicalLeaf&)> fn) const;
  // Calls `fn` for every logical leaf that overlaps [va, va + length), in address order,
  // inside one read section (the same rules for `fn` as for WithLeafLocked).
  void Walk(const void* va, size_t length, absl::FunctionRef<void(const LogicalLeaf&)> fn) const;

  // The subscribers of this table's ranges (notify.h): every change is announced there.
  NotifierRegistry& notifiers() { return notifiers_; }

  // ---- memory the program mapped itself ----

  // Registers [va, va + length), which this program mapped itself (say its own
  // MAP_HUGETLB buffer): learns the page size and the protection from smaps (a page is
  // mapped with the kernel's protection, so a WRITE pin of memory the program mapped
  // read-only is refused), PFNs from pagemap (which must be readable), and checks compound
  // heads in kpageflags; builds borrowed folios (never freed to any pool; no LONGTERM
  // pins) and maps them. Returns the id for UnregisterExternal.
  // The table is not told when the program changes the kernel's side afterwards (munmap,
  // mremap, mprotect, MADV_DONTNEED or MADV_REMOVE, a hole punched in or a truncate of
  // the file behind it, the copy a write makes after fork): it keeps translating to, and
  // pinning, the frames and protections it recorded. A pin holds no reference on the
  // kernel's page, so the kernel may reuse a frame a device still holds. Unpin and
  // unregister before changing such memory (MADV_DONTFORK it before a fork); Verify names
  // each of these changes.
  //   FailedPrecondition: a geometry that is not this machine's (x86-64, 4 or 5 levels;
  //     InvalidArgument for an invalid one); a page not faulted in, or
  //     not physically contiguous, or not a compound head.  PermissionDenied: pagemap
  //     hides PFNs from this process, or the program may not read part of the range.
  //     NotFound: part of the range is not mapped by the kernel.  InvalidArgument: the
  //     range is not made of whole pages of the size the kernel maps there.
  //     AlreadyExists: part of it is mapped in this table already.
  //   Errors reading /proc pass through.
  [[nodiscard]] absl::StatusOr<uint64_t> RegisterExternal(const void* va, size_t length);
  // A page a registration is about to map: its descriptor (not yet in the table; valid
  // for the call it is passed to) and the protection the kernel gives it.
  struct ExternalPage {
    const Folio* folio;
    Prot prot;
  };
  // RegisterExternal, calling `before_map` once the whole range is read and checked and
  // before any of it is visible in the table, with its pages in address order: what a
  // registration must take before a reader can pin it (say a kernel hold on its frames)
  // is taken there. Its error refuses the registration and is returned; nothing is
  // mapped. An error after it (AlreadyExists) leaves the caller to give back what it
  // took. It runs on the calling thread, outside the table's locks, and must not call the
  // table's writers.
  [[nodiscard]] absl::StatusOr<uint64_t> RegisterExternal(
      const void* va, size_t length,
      absl::FunctionRef<absl::Status(absl::Span<const ExternalPage>)> before_map);
  // Unmaps a registration and frees its descriptors.
  //   NotFound: no registration `id`.  FailedPrecondition: its memory is still referenced
  //   beyond its mappings (pinned): nothing changes, the registration stays, and its
  //   mappings stay as they were (a pin that races with the unmap gets them put back).
  [[nodiscard]] absl::Status UnregisterExternal(uint64_t id);

  // Holds every leaf in [va, va + length) against the live kernel: the page size smaps
  // gives (a folio smaller than the kernel's page, carved from it by an allocator, is
  // instead mapped by its own natural leaves inside it: a split leaf is still named), PFNs
  // contiguous and equal to the recorded ones (and to the frame words), compound head then
  // tails of the kernel's page, and no more protection than the kernel's VMA gives. A page
  // the kernel no longer maps (munmap, a page dropped by MADV_DONTNEED or a punched hole,
  // another page moved there, a copy-on-write) is a mismatch; only a device-DAX leaf
  // without a PFN in pagemap counts as hidden. Mismatches are the report's, not errors.
  //   FailedPrecondition: a geometry that is not this machine's (x86-64, 4 or 5 levels).
  //   InvalidArgument: an invalid geometry (ValidateGeometry), a range that wraps the
  //   address space.  Errors reading /proc pass through.
  [[nodiscard]] absl::StatusOr<VerifyReport> Verify(const void* va, size_t length) const;

 private:
  using Table = pgtable_internal::Table;
  using Entry = pgtable_internal::Entry;
  using Garbage = pgtable_internal::Garbage;
  class ExternalRegion;
  using WholeLeaf = pgtable_internal::WholeLeaf;
  friend class pgtable_internal::Cursor;
  friend class pgtable_internal::LockedEntry;
  friend class pgtable_internal::PageTableTestPeer;

  // walk.h: the one descent and the one leaf decoder.
  Entry Descend(uintptr_t va, int to_level, pgtable_internal::WalkHint* hint) const;
  pgtable_internal::LeafBits DecodeBits(const Entry& e) const;
  LogicalLeaf Decode(uintptr_t va, const Entry& e) const;

  // pgtable.cc: table memory and the checks every writer makes.
  Table* NewTable(int level) const;
  void InitTable(Table* t, int level, size_t entries) const;
  void FreeTable(Table* t) const;     // with the tables deposited in it
  void FreeChain(Table* head) const;  // a list linked through `next`
  absl::Status CheckGeometry(const char* op) const;
  // CheckGeometry, then FailedPrecondition unless the geometry is x86-64's (4 or 5
  // levels): the kernel's own, which RegisterExternal and Verify read through pagemap.
  absl::Status CheckMachineGeometry(const char* op) const;
  absl::Status CheckRange(uintptr_t va, size_t length, const char* op) const;
  static absl::Status CheckProt(Prot prot);
  absl::Status CheckNoHoles(uintptr_t va, size_t length, const char* op) const;

  // read.cc
  bool TranslateLocked(uintptr_t va, Translation* out, size_t max_run,
                       pgtable_internal::WalkHint* hint) const;
  void ExtendRun(Translation* t, size_t max_run) const;
  uint64_t RecordedPfn(uintptr_t va) const;  // the frame word of va's entry

  // map.cc
  absl::Status MakePath(uintptr_t va, int level);
  // `apply` false stops the visit at that leaf: *stopped (if given) is then its address.
  absl::Status ForEachWholeLeaf(uintptr_t va, size_t length,
                                absl::FunctionRef<bool(const WholeLeaf&)> apply,
                                uintptr_t* stopped = nullptr);
  // Stops early, with *resume the first address left mapped, when `garbage` has no room
  // for the next leaf and the heap none to give; *resume is 0 when it reached the end.
  absl::Status ClearLeaves(uintptr_t va, size_t length, Garbage* garbage, uintptr_t* resume);

  // split.cc
  absl::Status SplitLeaf(uintptr_t va);
  Table* NewLeafTable(int level, uint64_t word, uintptr_t va) const;

  // external.cc
  std::vector<LogicalLeaf> LeavesOf(const Folio* folio) const;
  absl::Status CheckOnlyMapped(const Folio* folio, absl::Span<const LogicalLeaf> leaves,
                               int32_t owner_refs) const;
  absl::Status UnmapRuns(absl::Span<const LogicalLeaf> leaves);
  absl::Status RestoreExternal(const ExternalRegion& region,
                               absl::Span<const std::vector<LogicalLeaf>> leaves,
                               const absl::Status& why);

  // reclaim.cc
  void PruneEmpty(uintptr_t va, Garbage* garbage);
  void Reclaim(Garbage* garbage);

  Geometry geometry_;
  Os& os_;
  int top_ = 0;
  int shift_[kMaxLevels + 1] = {};
  int cont_shift_[kMaxLevels] = {};  // log2 of the entries of a contiguous group
  uintptr_t index_mask_[kMaxLevels] = {};
  uintptr_t va_limit_ = 0;  // the first address beyond the geometry (0: invalid geometry)
  // Bumped after a writer unhooks a table from the tree, before the grace period that
  // frees it: a reader thread reuses the walk hint it saved (walk.h) only while this is
  // unchanged. Starts at a value no other table in the process starts at.
  std::atomic<uint64_t> generation_{0};
  absl::Status geometry_status_;
  Table* root_ = nullptr;
  // The top-level table's header, entries and frame words (see table.h), in the object so
  // that construction cannot fail.
  static constexpr size_t kRootBytes = 128 + 2 * (size_t{1} << kMaxTopIndexBits) * 8;
  alignas(64) std::byte root_storage_[kRootBytes];
  mutable std::atomic<size_t> tables_{0};  // live, deposited, not yet reclaimed; the root

  NotifierRegistry notifiers_;

  std::mutex external_mu_;
  std::map<uint64_t, std::unique_ptr<ExternalRegion>> external_ ABSL_GUARDED_BY(external_mu_);
  uint64_t next_external_ ABSL_GUARDED_BY(external_mu_) = 1;

  // Testing only (PageTableTestPeer): runs where a writer has let go of a leaf it is
  // about to split, to play another writer there.
  void (*before_split_)(void*) = nullptr;
  void* before_split_arg_ = nullptr;
};

}  // namespace hugemm

#endif  // HUGEMM_PGTABLE_H_
