// A pool: the folios of one (backing, page size, NUMA node), as buddy free lists per
// order over regions of native pages, grown from the backing on demand and shrunk back
// to it. Every method but ReleaseFolio runs under the pool's mutex; ReleaseFolio hands
// the folio to the calling thread's magazine without a lock when it can.
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
#include "runtime/alloc/region.h"

namespace hugemm::alloc_internal {

class ThreadCacheSet;

// One mapping of the pool's backing and the regions carved from it.
struct ExtentRecord {
  Extent extent;
  std::vector<std::unique_ptr<Region>> regions;
  ReserveDescriptors reserve;
  size_t reserve_bytes = 0;
  size_t usable_pages = 0;  // 4K pages that are folios (all but the reserve)
  size_t free_pages = 0;    // of which in the pool's free lists
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
};

class Pool final : public FolioOwner {
 public:
  explicit Pool(PoolConfig config);
  ~Pool() override;

  const PoolKey& key() const { return config_.key; }
  int index() const { return config_.index; }
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

  // The allocator is going away. Deletes the pool now if none of its folios is in use,
  // else when the last one comes back.
  void Orphan();

 private:
  absl::Status Grow(int order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Folio* TakeFree(int order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeOne(Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Folio* NewFolio(Region* region, size_t head, int order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteDescriptor(Region* region, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PushFree(Region* region, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Unlink(Region* region, Folio* folio) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds [begin, end) pages of a region to the free lists as maximal aligned folios.
  void AddFreeRange(Region* region, size_t begin, size_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string Name() const;
  absl::Status Exhausted(int order, absl::string_view why) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return total_folios_ == free_folios_; }
  MemoryRange RangeOf(const Extent& extent) const;
  // Tells the observer `rec` is going, then drops its regions from the index.
  void Retire(ExtentRecord& rec) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant but for the backing, which an orphaned pool lets go of with its last folio.
  PoolConfig config_;
  const size_t page_size_;
  const int region_order_;  // pages per region: the native page, or 2M for 4K backings
  const int max_order_;
  std::atomic<bool> orphaned_{false};

  mutable std::mutex mu_;
  std::array<Folio*, kOrders> free_ ABSL_GUARDED_BY(mu_){};  // heads; owner_private = next, prev
  std::array<size_t, kOrders> free_count_ ABSL_GUARDED_BY(mu_){};
  std::vector<std::unique_ptr<ExtentRecord>> extents_ ABSL_GUARDED_BY(mu_);
  SystemDescriptors descriptors_ ABSL_GUARDED_BY(mu_);
  size_t mapped_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t free_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t total_folios_ ABSL_GUARDED_BY(mu_) = 0;
  size_t free_folios_ ABSL_GUARDED_BY(mu_) = 0;
  // config_.observer until the pool is orphaned with folios still out.
  MemoryObserver* observer_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_POOL_H_
