// The folio allocator: compound folios from huge page backings, handed out fast.
//
//   auto alloc = hugemm::Allocator::Create({});
//   absl::StatusOr<hugemm::FolioHandle> buf = (*alloc)->Allocate(64 << 10, {});
//   memcpy(buf->data(), src, n);            // 64 KiB, zeroed, on a 2M hugetlb page
//   // A DMA pin outlives the handle:
//   absl::Status st = hugemm::FolioTryGrab(buf->folio(), 16, hugemm::RefKind::kPin);
//
// Pools exist per (backing, page size, NUMA node); inside a pool, each native huge page
// is a buddy region whose folios split down to 4K (order 0) and merge back when both
// halves are free. A folio goes back to its pool only when its last reference drops
// (FolioOwner::ReleaseFolio), so a pinned folio outlives its handle and is reused only
// after the last unpin, its contents untouched in between.
//
// Hot path: a per-thread magazine per (pool, order). Allocating or freeing a cached folio
// makes no system call, takes no lock and makes no atomic read-modify-write but the
// folio's refcount. Magazines drain to the pool (under its mutex) when full, on
// FlushThreadCache() and at thread exit; those of threads not allocating or freeing at
// the moment drain too when their pool has nothing left for another thread's request
// (ResourceExhausted only after that) and on Shrink().
//
// Pools grow geometrically (each mapping as large as what the pool holds, up to 1 GiB
// or 64 pages of 1G), so a pool has few extents. Each extent keeps one descriptor per
// native page for the folio whose head is that page's first byte; only a page that was
// split has a record of its smaller folios: 4K folios' descriptors in runs of 64 at their
// pages' places with a live bit each, and slots of the larger ones kept per order in use.
// page -> folio (FolioOf, the kernel's compound_head) needs no per-page pointer: a binary
// search over the process's extents finds the extent, then arithmetic finds the page's
// descriptor, or the split record is probed once per order in use (at most 19 probes,
// usually one). folio -> page i is arithmetic (Folio::page_address, Folio::page_pfn).
// All-in, a 2M or a 4K folio costs under the kernel's 64-byte struct page.
#ifndef HUGEMM_ALLOC_H_
#define HUGEMM_ALLOC_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/backing.h"
#include "hugemm/folio.h"
#include "hugemm/memory_observer.h"
#include "hugemm/os.h"

namespace hugemm {

// Which pool to allocate from, and how.
struct AllocOptions {
  BackingKind backing = BackingKind::kHugetlb;
  // The backing's native page size. 0 (the default) = the kind's own: 2M for hugetlb
  // and hugetlbfs, the device alignment for devdax, 4K for anon.
  size_t page_size = 0;
  // NUMA node, or -1 for wherever the kernel puts the pages. devdax: the memory sits on
  // the device's node; a request naming another is InvalidArgument.
  int node = -1;
  // Zero the folio before handing it out. false: the caller gets whatever the previous
  // owner left (never another process's data: the pages are this process's).
  bool zero = true;
  std::string hugetlbfs_mount;  // hugetlbfs: "" = any mount of page_size
  std::string devdax_path;      // devdax: "/dev/daxX.Y"
};

struct AllocatorOptions {
  // Bytes a pool may map from its backing; 0 = no limit. A request beyond it is
  // ResourceExhausted, as is one the kernel cannot satisfy.
  size_t max_bytes_per_pool = 0;
  // devdax and hugetlbfs pools: bytes carved from the front of each extent to hold its
  // folio descriptors (seed 002's vmem_altmap), rounded up to 4K and at most half the
  // extent's first native page; descriptors beyond it fall back to system memory.
  // 0 = descriptors in system memory (the default). Reserve descriptors go with their
  // extent when Shrink gives it back (see FolioOf).
  size_t meta_reserve_bytes = 0;
  // Per-thread magazines. false: every allocate and free goes to the pool's mutex.
  bool thread_cache = true;
  // The OS the pools' backings call; nullptr = Os::Default(). Must outlive the allocator
  // and every folio it handed out.
  Os* os = nullptr;
  // Told of every extent a pool maps and before it unmaps one (memory_observer.h);
  // nullptr = none. Must outlive the allocator. Extents of pools whose folios are still
  // in use when the allocator goes are no longer reported after that.
  MemoryObserver* observer = nullptr;
};

// Owns one reference on a folio; drops it when destroyed. Move-only. Not thread-safe:
// one owner at a time (the folio it holds may be shared: see folio.h).
class FolioHandle {
 public:
  FolioHandle() = default;
  // Adopts a reference the caller holds.
  explicit FolioHandle(Folio* folio) : folio_(folio) {}
  ~FolioHandle() { Reset(); }
  FolioHandle(FolioHandle&& other) noexcept : folio_(std::exchange(other.folio_, nullptr)) {}
  FolioHandle& operator=(FolioHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      folio_ = std::exchange(other.folio_, nullptr);
    }
    return *this;
  }
  FolioHandle(const FolioHandle&) = delete;
  FolioHandle& operator=(const FolioHandle&) = delete;

  std::byte* data() const { return folio_ ? folio_->data : nullptr; }
  // The folio's size: the request rounded up to a power of two of at least 4K.
  size_t size() const { return folio_ ? folio_->size() : 0; }
  Folio* folio() const { return folio_; }
  // A snapshot of the folio; the handle must hold one.
  [[nodiscard]] FolioInfo info() const { return DescribeFolio(*folio_); }
  explicit operator bool() const { return folio_ != nullptr; }

  // Drops the reference now; the folio returns to its pool once no pin holds it.
  void Reset() {
    if (folio_ != nullptr) FolioPut(std::exchange(folio_, nullptr));
  }
  // Gives up ownership without dropping the reference.
  [[nodiscard]] Folio* Release() { return std::exchange(folio_, nullptr); }

 private:
  Folio* folio_ = nullptr;
};

// One pool's counters. Folios in per-thread magazines count as in use.
// reserve_descriptors counts descriptor slots taken from the extents' reserves: single
// descriptors in use, and whole runs of 64 for 4K folios, which keep their slots until
// their extent goes whether their folios are live or not; it may exceed `folios`.
struct PoolStats {
  BackingKind backing = BackingKind::kHugetlb;
  size_t page_size = 0;
  int node = -1;
  std::string describe;            // the backing's own description
  size_t extents = 0;              // mappings held
  size_t mapped_bytes = 0;         // bytes mapped from the backing
  size_t free_bytes = 0;           // in the pool's free lists
  size_t reserve_bytes = 0;        // carved for descriptors (altmap)
  size_t folios = 0;               // live descriptors, free or in use
  size_t reserve_descriptors = 0;  // reserve slots taken (above)
  // System memory held for the folios, all of it: descriptor arrays and slab chunks
  // (in use or not), extent records and their PFN lists, index entries, split records.
  // Not counted: the pool object itself (a few hundred bytes per pool).
  size_t metadata_bytes = 0;
  std::vector<size_t> free_by_order;  // free folios per order
};

// Hands out folios of 4K up to a backing's native page from pools it grows on demand.
// fork(): every extent is MADV_DONTFORK, so a child of fork() has none of the pools'
// memory. There an allocator made before the fork refuses to allocate
// (FailedPrecondition), Shrink gives nothing back and the destructor leaves the extents
// alone (the child may have mapped its own memory where they were); folios the child's
// copy of a handle still references may be freed, which touches no memory of theirs,
// unless their descriptors live in the extent's reserve (meta_reserve_bytes): those are
// the parent's memory too, and the child must leave such folios alone (its exit or exec
// releases them).
// Thread-safe: Allocate, AllocateOrder, FlushThreadCache, Shrink and Stats may be called
// from any number of threads at once; folios may be freed (their last reference dropped)
// on any thread. Only the destructor must not race with other calls.
class Allocator {
 public:
  // Never fails today; a StatusOr so that option checks can be added.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Allocator>> Create(
      const AllocatorOptions& options = {});
  // Folios still referenced (handles, pins) stay valid; their memory goes back to the
  // kernel when the last one drops.
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // A folio of at least `bytes` (rounded up to a power of two of at least 4K, at most
  // the backing's page size), holding one reference: the handle's. Errors name the pool:
  //   InvalidArgument   bytes is 0 or larger than the page size, or a bad node;
  //   NotFound and others from Backing::Create the first time a pool is needed (no
  //                     hugetlbfs mount, no such device, unsupported page size);
  //   Unimplemented     a backing whose page size is not 4K, 2M or 1G;
  //   ResourceExhausted the pool is at max_bytes_per_pool, or the kernel (or device)
  //                     has no page left; the message gives the pool's and the kernel's
  //                     free counts and the OS error;
  //                     or 64 pools already exist in this allocator;
  //   FailedPrecondition in a child of fork() of the process that made the allocator;
  //   any code          the observer refused the extent the pool grew by (its message).
  [[nodiscard]] absl::StatusOr<FolioHandle> Allocate(size_t bytes,
                                                     const AllocOptions& options = {});
  // A folio of 4K << order. InvalidArgument for an order outside 0 .. the page's;
  // otherwise as Allocate.
  [[nodiscard]] absl::StatusOr<FolioHandle> AllocateOrder(int order,
                                                          const AllocOptions& options = {});

  // Returns the calling thread's magazines to their pools.
  void FlushThreadCache();
  // Flushes the magazines of every thread (the calling one, and every other not inside
  // an allocate or free of this allocator at the moment; one membarrier(2), without
  // which the calling thread's only), then unmaps every extent whose memory is all free
  // and that the observer lets go (MemoryObserver::MayRemove), giving the huge pages back
  // to the kernel. Returns the bytes given back. Extents are large (they grow with the
  // pool): one folio in use keeps its whole extent mapped.
  size_t Shrink();

  [[nodiscard]] std::vector<PoolStats> Stats() const;
  const AllocatorOptions& options() const { return options_; }

  // The live folio holding `addr` in any allocator of this process, or nullptr.
  // Lock-free; O(log extents in the process). The answer can be stale by the time it
  // is read (the folio may be split, merged or freed concurrently): take a reference
  // with FolioTryGet and check folio->contains(addr) again, as the kernel does after a
  // speculative get. Descriptors in system memory stay readable memory for the
  // allocator's life. A descriptor in a reserve (meta_reserve_bytes) lives in its extent
  // and goes with it when Shrink gives the extent back: for such a pool, use the answer
  // only while the extent is sure to stay (a reference held on one of its folios, or no
  // Shrink running).
  [[nodiscard]] static Folio* FolioOf(const void* addr);

 private:
  class Impl;

  explicit Allocator(const AllocatorOptions& options);
  AllocatorOptions options_;
  std::unique_ptr<Impl> impl_;
};

// Metadata model, for `hugemm info` and the README: the system memory (as
// PoolStats::metadata_bytes counts it) of a pool of native pages of `page_size` grown
// from empty to 1 GiB and carved into folios of `folio_size`, and the kernel's struct
// page cost for comparison. InvalidArgument for a pair the allocator never makes: a size
// that is not a power of two of at least 4K, a page size other than 4K, 2M and 1G, or a
// folio larger than its page.
struct MetadataCost {
  size_t folio_size = 0;
  size_t page_size = 0;
  uint64_t bytes_per_gib = 0;
  uint64_t kernel_bytes_per_gib = 0;      // 64 B per 4K page
  uint64_t kernel_hvo_bytes_per_gib = 0;  // with the vmemmap optimisation for huge pages
};
[[nodiscard]] absl::StatusOr<MetadataCost> FolioMetadataCost(size_t folio_size, size_t page_size);

}  // namespace hugemm

#endif  // HUGEMM_ALLOC_H_
