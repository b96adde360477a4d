// A pool: the folios of one (backing, page size, NUMA node), as buddy free lists per
// order over regions of native pages, grown from the backing on demand and shrunk back
// to it. Every method but ReleaseFolio runs under the pool's mutex; ReleaseFolio hands
// the folio to the calling thread's magazine without a lock when it can.
//
// Growth is geometric: each mapping is as large as what the pool has mapped already,
// from one native page up to kMaxGrowBytes (64 pages of 1G), never past
// the pool's limit; when the kernel (or device) cannot give that much, the pool falls
// back to the smallest mapping that serves the request. Few large extents keep the
// per-folio metadata (extent records, index entries, observer and pin-table entries)
// near zero. The price: Shrink gives back only whole idle extents, so one folio in use
// keeps its whole extent (up to 1 GiB, or 64 GiB of 1G pages) mapped.
#ifndef HUGEMM_RUNTIME_ALLOC_POOL_H_
#define HUGEMM_RUNTIME_ALLOC_POOL_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "hugemm/alloc.h"
#include "hugemm/backing.h"
#include "runtime/alloc/descriptors.h"
#include "runtime/alloc/extent_record.h"
#include "runtime/alloc/region.h"
#include "runtime/sys/fork_watch.h"

namespace hugemm::alloc_internal {

class ThreadCacheSet;

// The largest mapping a pool grows by: 1 GiB, or 64 native pages if that is more (1G
// pages), so that the extent's fixed cost is shared by 64 folios or more.
inline constexpr size_t kMaxGrowBytes = size_t{1} << 30;
inline constexpr size_t kMaxGrowPages = 64;

// The length of a pool's next mapping: what it has mapped (at least `min_length`, at
// most the cap above), cut to what `limit` (0 = none) leaves, in whole regions. 0 when
// not even `min_length` fits under the limit.
size_t GrowLength(size_t mapped, size_t min_length, size_t region_size, size_t page_size,
                  size_t limit);

// One extent's array of region-head descriptors, kept by the pool for its whole life
// (and reused by a later extent of as many regions) so that descriptors stay readable.
struct HeadArray {
  std::unique_ptr<Folio[]> folios;
  size_t n = 0;
  bool in_use = false;
};

struct PoolKey {
  BackingKind backing = BackingKind::kHugetlb;
  size_t page_size = 0;  // as requested, normalised: 0 only for devdax
  int node = -1;
  std::string path;  // hugetlbfs mount or devdax device
  bool Matches(const AllocOptions& o, size_t normalised_page_size) const;
};

struct PoolConfig {
  PoolKey key;
  std::shared_ptr<Backing> backing;
  size_t limit_bytes = 0;    // 0 = none
  size_t reserve_bytes = 0;  // descriptor reserve per extent; 0 = system memory
  bool thread_cache = true;
  ThreadCacheSet* caches = nullptr;  // the allocator's per-thread magazines
  int index = 0;                     // dense, per allocator: the magazine slot
  MemoryObserver* observer = nullptr;
  int device_node = -1;  // devdax: the device's node (sysfs); -1 = unknown or other kinds
};

class Pool final : public FolioOwner {
 public:
  explicit Pool(PoolConfig config);
  ~Pool() override;

  const PoolKey& key() const { return config_.key; }
  int index() const { return config_.index; }
  // devdax: the node the device's memory sits on, -1 when unknown; -1 for other kinds.
  int device_node() const { return config_.device_node; }
  size_t page_size() const { return page_size_; }
  // Largest order handed out: the native page's (4K backings: 0).
  int max_order() const { return max_order_; }
  std::string Describe() const { return config_.backing->Describe(); }

  // The last reference to one of this pool's folios dropped.
  void ReleaseFolio(Folio* folio) override;

  // Up to `want` free folios of `order` (at least one, or an error naming the pool),
  // growing the pool by one mapping if it has none. Their refcounts are 0.
  absl::StatusOr<int> AllocateBatch(int order, Folio** out, int want);
  // Folios with refcount 0 back to the free lists, merged with their free buddies.
  void FreeBatch(Folio* const* folios, int n);
  // Unmaps every extent whose folios are all free; returns the bytes given back.
  size_t Shrink();
  PoolStats Stats() const;

  // The allocator is going away. Deletes the pool now if none of its folios is in use
  // (true); else keeps it for good, and its memory goes back to the kernel when the last
  // folio comes back (false).
  bool Orphan();

 private:
  absl::Status Grow(int order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Folio* TakeFree(int order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeOne(Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A descriptor for the folio of `order` at page `head` of region `i`: the region's own
  // head slot for head 0; for order 0 its page's place in the region's run (given a run
  // from the reserve or the slab on first use); else one from the reserve or the slab.
  Folio* NewFolio(ExtentRecord* rec, size_t i, size_t head, int order)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteDescriptor(ExtentRecord* rec, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PushFree(ExtentRecord* rec, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unlink(ExtentRecord* rec, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds [begin, end) pages of region i to the free lists as maximal aligned folios.
  void AddFreeRange(ExtentRecord* rec, size_t i, size_t begin, size_t end)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t FirstNative(size_t i) const { return i << (region_order_ - PageOrder(page_size_)); }
  // A head-descriptor array of n, reused from a shrunk extent when one of that length
  // is idle (descriptors stay readable memory for the pool's life).
  Folio* TakeHeads(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PutHeads(Folio* heads) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string Name() const;
  absl::Status Exhausted(int order, absl::string_view why) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_folios_ == free_folios_; }
  MemoryRange RangeOf(const Extent& extent) const;
  // Tells the observer `rec` is going, unmaps it and drops it from the index.
  void Retire(std::unique_ptr<ExtentRecord> rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant but for the backing, which an orphaned pool lets go of with its last folio.
  PoolConfig config_;
  const size_t page_size_;
  const int region_order_;  // pages per region: the native page, or 2M for 4K backings
  const int max_order_;
  std::atomic<bool> orphaned_{false};
  // The process that made the pool: in a child of fork() its extents are holes
  // (MADV_DONTFORK), whose index entries a pool of the child's may have replaced.
  const ForkWatch made_by_;

  mutable std::mutex mu_;
  std::array<Folio*, kOrders> free_ ABSL_GUARDED_BY(mu_){};  // heads; owner_private = next, prev
  std::array<size_t, kOrders> free_count_ ABSL_GUARDED_BY(mu_){};
  std::vector<std::unique_ptr<ExtentRecord>> extents_ ABSL_GUARDED_BY(mu_);
  SystemDescriptors descriptors_ ABSL_GUARDED_BY(mu_);
  std::vector<HeadArray> heads_ ABSL_GUARDED_BY(mu_);
  size_t mapped_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t free_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t total_folios_ ABSL_GUARDED_BY(mu_) = 0;
  size_t free_folios_ ABSL_GUARDED_BY(mu_) = 0;
  // config_.observer until the pool is orphaned with folios still out.
  MemoryObserver* observer_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_POOL_H_
