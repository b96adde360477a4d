// The shadow page table: the runtime's own radix tree over the memory it maps, with the
// kernel's geometry, whose leaves sit where the kernel maps the same address (PUD for 1G,
// PMD for 2M, PTE for 4K; contiguous groups on arm64) and point at folios.
//
//   hugemm::PageTable table(hugemm::DetectHostGeometry());
//   table.Map(folio, folio->data, hugemm::kProtRead | hugemm::kProtWrite);
//   std::optional<hugemm::Translation> t = table.Translate(addr);
//
// Rules, as in the kernel:
//   - every entry that maps a folio holds one folio reference (a PMD leaf one, its 512
//     PTEs after a split one each, a cont-PTE group one per entry); unmap drops them;
//   - a folio is mapped whole, at an address aligned to its size (hugetlb, DAX and mTHP
//     all place folios so), which is why an entry needs no page index: the page is the
//     address's offset inside the folio;
//   - a PMD leaf keeps a deposited PTE table so that its split never allocates;
//   - readers walk without locks inside a read section; writers lock one table at a
//     time (parent before child); a table, an exclusive record or a borrowed folio
//     descriptor is freed only after a grace period (liburcu), so a reader never sees a
//     torn entry or freed memory;
//   - every change is announced to subscribers of the range (invalidate start / end).
// Writers must not run inside a read section (they wait for grace periods).
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
#include "hugemm/folio.h"
#include "hugemm/geometry.h"
#include "hugemm/notify.h"

namespace hugemm {

namespace pgtable_internal {
struct Table;
struct Entry;
struct WalkHint;
struct Garbage;
struct WholeLeaf;
class Cursor;
class LockedEntry;
}  // namespace pgtable_internal

// A mapping's protection: a bitmask of kProtRead, kProtWrite and kProtExec. A type of
// its own, so that it mixes with nothing else (GUP flags, plain integers).
enum class Prot : uint32_t {};
inline constexpr Prot kProtNone{0};
inline constexpr Prot kProtRead{1u << 0};
inline constexpr Prot kProtWrite{1u << 1};
inline constexpr Prot kProtExec{1u << 2};

constexpr Prot operator|(Prot a, Prot b) {
  return Prot{static_cast<uint32_t>(a) | static_cast<uint32_t>(b)};
}
constexpr Prot operator&(Prot a, Prot b) {
  return Prot{static_cast<uint32_t>(a) & static_cast<uint32_t>(b)};
}
constexpr Prot operator~(Prot a) { return Prot{~static_cast<uint32_t>(a)}; }
constexpr Prot& operator|=(Prot& a, Prot b) { return a = a | b; }
constexpr Prot& operator&=(Prot& a, Prot b) { return a = a & b; }
// True when `set` holds any bit of `bits`.
constexpr bool HasAny(Prot set, Prot bits) { return (set & bits) != kProtNone; }

// A lock-free read section (an RCU read-side critical section). Everything a reader got
// from the table (a LeafSnapshot's slot, a folio it has not grabbed) stays valid until the
// section ends. Nests; cheap; registers the thread with liburcu on first use.
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

// Per leaf size (bytes), how many logical leaves were checked; and what differed.
struct VerifyMismatch {
  uintptr_t va = 0;
  std::string what;  // "0x7f..: kernel maps 4K, shadow has a PMD leaf of 2M"
};
struct VerifyReport {
  std::map<size_t, size_t> leaves_checked;
  std::vector<VerifyMismatch> mismatches;
  bool pfns_checked = false;
  bool flags_checked = false;
  // Leaves whose PFNs the kernel hides (PUD-mapped device-DAX): held against the
  // recorded PFNs and kpageflags only.
  size_t pfns_hidden = 0;
  bool ok() const { return mismatches.empty(); }
};

// Thread safety: thread-safe. Readers (Translate*, Lookup, StillMapped, WithLeafLocked,
// Walk, Verify) never block one another or writers; writers (Map, Unmap, Split, Protect,
// MakeExclusive, RestoreExclusive, RegisterExternal, UnregisterExternal) may run at once
// from any threads, but never inside a ReadSection or a notifier callback (they wait for
// grace periods and announce to subscribers).
class PageTable {
 public:
  // An empty table. Never fails and never allocates: the top-level table lives inside the
  // object. An invalid geometry (see ValidateGeometry) gives a table that maps nothing:
  // every writer returns InvalidArgument naming what is wrong with it.
  explicit PageTable(Geometry geometry);
  // Unmaps everything (dropping the references) and frees all tables.
  ~PageTable();
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  const Geometry& geometry() const { return geometry_; }

  // Maps the whole folio at `va` (aligned to the folio size) with leaves at its natural
  // level, taking one reference per entry. Fails, changing nothing, on a misaligned
  // address, an address outside the geometry, a folio smaller than the base page, or an
  // overlap with an existing mapping.
  absl::Status Map(Folio* folio, const void* va, Prot prot);
  // Removes every leaf in [va, va + length), splitting leaves that stick out of it, and
  // drops their references. A hole in the range is an error and nothing changes.
  absl::Status Unmap(const void* va, size_t length);
  // Splits the logical leaf holding `va` one step: a contiguous group into its entries,
  // a PUD leaf into PMD leaves, a PMD leaf into PTEs (on its deposited table). The data
  // is not touched. A PTE that is not part of a group cannot be split.
  absl::Status Split(const void* va);
  // Changes the protection of [va, va + length), splitting leaves that stick out.
  absl::Status Protect(const void* va, size_t length, Prot prot);

  // Makes the base page at `va` exclusive to `owner` (a device): splits down to a PTE,
  // tells every subscriber of another owner, and replaces the PTE with a device-exclusive
  // entry that keeps the folio reference. Restore puts back a normal PTE.
  absl::Status MakeExclusive(const void* va, const void* owner);
  absl::Status RestoreExclusive(const void* va);

  // Lock-free readers. Each takes its own ReadSection when the caller holds none.
  std::optional<Translation> Translate(const void* va, size_t max_run = 0) const {
    Translation t;
    if (!TranslateInto(va, &t, max_run)) return std::nullopt;
    return t;
  }
  // The same without an optional: fills `out` and returns true on a hit. The hot path
  // (no lock, no allocation, no call but the read section's).
  bool TranslateInto(const void* va, Translation* out, size_t max_run = 0) const;
  // `n` translations in one read section (no run scanning): out[i] for vas[i], hit[i]
  // (if given) says whether it was mapped. Returns the number of hits. What a DMA
  // mapper or a batch of I/O descriptors wants: the per-address cost drops to the walk.
  size_t TranslateMany(const void* const* vas, size_t n, Translation* out,
                       bool* hit = nullptr) const;
  // Only the PFNs (kUnknownPfn where unmapped or unknown): the IOMMU / scatter-gather
  // fill loop. Reads the frame word each entry keeps beside it (the PFN it maps, as a
  // hardware PTE holds one), never the folio: while addresses stay under the last table
  // reached, one load per address. Returns the number mapped.
  size_t TranslatePfns(const void* const* vas, size_t n, uint64_t* pfns) const;
  std::optional<LeafSnapshot> Lookup(const void* va) const;
  // True while the entry the snapshot read still holds the same value (same section).
  bool StillMapped(const LeafSnapshot& snapshot) const;
  // The slow path of a reader that must not lose a race (GUP's follow_page under the page
  // table lock): finds the entry mapping `va`, locks the table holding it and calls `fn`
  // with the leaf while no writer can change that entry, so references `fn` takes on the
  // folio are known to belong to a live mapping. false (fn not called) when nothing maps
  // `va`. `fn` runs in a read section under a table lock: it must not call the table's
  // writers, Subscribe or Unsubscribe. Device-exclusive entries are passed as they are.
  bool WithLeafLocked(const void* va, absl::FunctionRef<void(const LogicalLeaf&)> fn) const;
  // Calls `fn` for every logical leaf that overlaps [va, va + length), in address order.
  void Walk(const void* va, size_t length, absl::FunctionRef<void(const LogicalLeaf&)> fn) const;

  // The subscribers of this table's ranges: every change is announced there, without
  // table locks held.
  NotifierRegistry& notifiers() { return notifiers_; }

  // Memory this program mapped itself (say its own MAP_HUGETLB buffer): learns the page
  // size from smaps, PFNs from pagemap (which must be readable) and checks compound heads
  // in kpageflags; builds borrowed folios (never freed to any pool) and maps them.
  // Returns an id for UnregisterExternal, which unmaps and then frees the descriptors.
  absl::StatusOr<uint64_t> RegisterExternal(const void* va, size_t length,
                                            Prot prot = kProtRead | kProtWrite);
  absl::Status UnregisterExternal(uint64_t id);

  // Holds every leaf in [va, va + length) against the live kernel: same page size in
  // smaps, PFNs contiguous and equal to the recorded ones, compound head then tails.
  // Host geometry only. Errors only when /proc cannot be read.
  absl::StatusOr<VerifyReport> Verify(const void* va, size_t length) const;

  // Tables currently allocated (live, deposited, not yet reclaimed), for tests.
  size_t TableCount() const { return tables_.load(std::memory_order_relaxed); }

 private:
  using Table = pgtable_internal::Table;
  using Entry = pgtable_internal::Entry;
  using Garbage = pgtable_internal::Garbage;
  class ExternalRegion;
  using WholeLeaf = pgtable_internal::WholeLeaf;
  friend class pgtable_internal::Cursor;
  friend class pgtable_internal::LockedEntry;

  // walk.h: the one descent and the one leaf decoder.
  Entry Descend(uintptr_t va, int to_level, pgtable_internal::WalkHint* hint) const;
  LogicalLeaf Decode(uintptr_t va, const Entry& e) const;

  // pgtable.cc: table memory and the checks every writer makes.
  Table* NewTable(int level) const;
  void InitTable(Table* t, int level, size_t entries) const;
  void FreeTable(Table* t) const;     // with the tables deposited in it
  void FreeChain(Table* head) const;  // a list linked through `next`
  absl::Status CheckRange(uintptr_t va, size_t length, const char* op) const;
  static absl::Status CheckProt(Prot prot);
  absl::Status CheckNoHoles(uintptr_t va, size_t length, const char* op) const;

  // read.cc
  bool TranslateLocked(uintptr_t va, Translation* out, size_t max_run,
                       pgtable_internal::WalkHint* hint) const;
  uint64_t RecordedPfn(uintptr_t va) const;  // the frame word of va's entry

  // map.cc
  absl::Status MakePath(uintptr_t va, int level);
  absl::Status ForEachWholeLeaf(uintptr_t va, size_t length,
                                absl::FunctionRef<void(const WholeLeaf&)> apply);
  absl::Status UnmapLeaves(uintptr_t va, size_t length, Garbage* garbage);

  // split.cc
  absl::Status SplitLeaf(uintptr_t va);
  Table* NewLeafTable(int level, uint64_t word, uintptr_t va) const;

  // reclaim.cc
  void PruneEmpty(uintptr_t va, Garbage* garbage);
  void Reclaim(Garbage* garbage);

  Geometry geometry_;
  int top_ = 0;
  int shift_[kMaxLevels + 1] = {};
  int cont_shift_[kMaxLevels] = {};  // log2 of the entries of a contiguous group
  uintptr_t index_mask_[kMaxLevels] = {};
  uintptr_t va_limit_ = 0;  // the first address beyond the geometry (0: invalid geometry)
  absl::Status geometry_status_;
  Table* root_ = nullptr;
  // The top-level table's header, entries and frame words (see table.h), in the object so
  // that construction cannot fail.
  static constexpr size_t kRootBytes = 128 + 2 * (size_t{1} << kMaxTopIndexBits) * 8;
  alignas(64) std::byte root_storage_[kRootBytes];
  mutable std::atomic<size_t> tables_{0};

  NotifierRegistry notifiers_;

  std::mutex external_mu_;
  std::map<uint64_t, std::unique_ptr<ExternalRegion>> external_ ABSL_GUARDED_BY(external_mu_);
  uint64_t next_external_ ABSL_GUARDED_BY(external_mu_) = 1;
};

}  // namespace hugemm

#endif  // HUGEMM_PGTABLE_H_
