// A pool's extents: how it grows (geometrically, falling back to the smallest mapping
// that serves), how it gives whole idle extents back, and what it holds for them.
#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/alloc/address_index.h"
#include "runtime/alloc/pool.h"
#include "runtime/sys/status.h"

namespace hugemm::alloc_internal {

size_t GrowLength(size_t mapped, size_t min_length, size_t region_size, size_t page_size,
                  size_t limit) {
  size_t length =
      std::max(min_length, std::min(mapped, std::max(kMaxGrowBytes, kMaxGrowPages * page_size)));
  if (limit != 0) {
    if (mapped + min_length > limit) return 0;
    length = std::min(length, limit - mapped);
  }
  length -= length % region_size;
  return std::max(length, min_length);
}

void Pool::Retire(std::unique_ptr<ExtentRecord> rec) {
  if (observer_ != nullptr) observer_->MemoryRemoving(RangeOf(rec->extent));
  { Extent gone = std::move(rec->extent); }  // the kernel has the pages back now
  PutHeads(rec->heads);
  // Runs of order-0 descriptors stay readable memory too: the slab keeps them for reuse.
  for (size_t i = 0; i < rec->regions; ++i) {
    if (const Region* region = rec->SplitRecord(i)) {
      region->ForEachSystemRun([this](Folio* run) { descriptors_.PutRun(run); });
    }
  }
  IndexErase(std::move(rec));
}

Folio* Pool::TakeHeads(size_t n) {
  for (HeadArray& a : heads_) {
    if (!a.in_use && a.n == n) {
      a.in_use = true;
      return a.folios.get();
    }
  }
  heads_.push_back({.folios = std::make_unique<Folio[]>(n), .n = n, .in_use = true});
  return heads_.back().folios.get();
}

void Pool::PutHeads(Folio* heads) {
  for (HeadArray& a : heads_) {
    if (a.folios.get() == heads) a.in_use = false;
  }
}

absl::Status Pool::Grow(int order) {
  const size_t region_size = kPageSize4K << region_order_;
  const bool reserve =
      config_.reserve_bytes > 0 && (config_.key.backing == BackingKind::kDevDax ||
                                    config_.key.backing == BackingKind::kHugetlbfs);
  // The reserve eats the front of the first region; a whole-region folio needs a second.
  const size_t regions = reserve && order == region_order_ ? 2 : 1;
  const size_t min_length = std::max(region_size * regions, page_size_);
  const size_t length =
      GrowLength(mapped_bytes_, min_length, region_size, page_size_, config_.limit_bytes);
  if (length == 0) {
    return Exhausted(
        order, absl::StrCat("growing by ", HumanBytes(min_length), " would pass the pool limit"));
  }
  absl::StatusOr<Extent> extent =
      config_.backing->Map({.length = length, .node = config_.key.node, .align = region_size});
  if (!extent.ok() && length > min_length) {
    // Fewer free pages than the geometric step wants: the last ones still serve.
    extent = config_.backing->Map(
        {.length = min_length, .node = config_.key.node, .align = region_size});
  }
  if (!extent.ok()) {
    // A request no memory could satisfy (a node that is not online, a device's memory on
    // another node) is the caller's to fix, not this pool running out.
    if (extent.status().code() == absl::StatusCode::kInvalidArgument) {
      return sys::Annotate(extent.status(), Name());
    }
    // The OS's errno stays with the status (ErrnoOf), as every layer's annotations keep it.
    const int err = ErrnoOf(extent.status());
    const absl::Status exhausted = Exhausted(order, extent.status().message());
    return err != 0 ? sys::WithErrno(exhausted, err) : exhausted;
  }

  const size_t n = extent->size() / region_size;
  // Room in the list first, so that entering the extent at the end cannot fail.
  extents_.reserve(extents_.size() + 1);
  Folio* heads = TakeHeads(n);
  if (page_size_ != kPageSize4K) {
    // A huge page's PFN goes into its region's head descriptor, which keeps it for the
    // extent's life, so the extent's own list of them can go.
    for (size_t i = 0; i < n; ++i) heads[i].head_pfn = extent->pfn(FirstNative(i));
    extent->ForgetPfns();
  }
  std::unique_ptr<ExtentRecord> rec;
  try {
    rec = std::make_unique<ExtentRecord>(std::move(*extent), region_order_, heads);
  } catch (...) {
    PutHeads(heads);
    throw;
  }
  // A throw before the extent is entered (the heap ran out) takes it back whole: out of
  // the index once in it, its heads back, its mapping gone with the record.
  bool indexed = false;
  try {
    if (reserve) {
      // Capped before it is rounded up: a request near SIZE_MAX would wrap to no reserve.
      const size_t want = std::min(config_.reserve_bytes, region_size / 2);
      rec->reserve_bytes = (want + kPageSize4K - 1) & ~(kPageSize4K - 1);
      rec->reserve =
          std::make_unique<ReserveDescriptors>(rec->base, rec->reserve_bytes / sizeof(Folio));
    }
    // Regions that start out split (behind the reserve; every region of a 4K backing)
    // get their records before a reader can find the extent.
    for (size_t i = 0; i < n; ++i) {
      if (max_order_ < region_order_ || (i == 0 && rec->reserve_bytes > 0)) {
        rec->MakeSplitRecord(i, FirstNative(i), nullptr);
      }
    }
    if (absl::Status st = IndexInsert(rec.get()); !st.ok()) {
      PutHeads(heads);
      return st;
    }
    indexed = true;
    if (observer_ != nullptr) {
      // Before any folio of it is handed out: a device table that cannot take the extent
      // fails the allocation rather than leave memory it does not know.
      if (absl::Status st = observer_->MemoryAdded(RangeOf(rec->extent)); !st.ok()) {
        { Extent gone = std::move(rec->extent); }
        PutHeads(heads);
        IndexErase(std::move(rec));
        return sys::Annotate(st, absl::StrCat(Name(), ": growing by ", HumanBytes(length)));
      }
    }
  } catch (...) {
    if (rec != nullptr) {  // not yet erased by a refusal's path
      { Extent gone = std::move(rec->extent); }
      if (indexed) IndexErase(std::move(rec));
    }
    PutHeads(heads);
    throw;
  }
  const size_t pages_per_region = size_t{1} << region_order_;
  rec->usable_pages = n * pages_per_region - rec->reserve_bytes / kPageSize4K;
  for (size_t i = 0; i < n; ++i) {
    AddFreeRange(rec.get(), i, i == 0 ? rec->reserve_bytes / kPageSize4K : 0, pages_per_region);
  }
  mapped_bytes_ += rec->size;
  extents_.push_back(std::move(rec));
  return absl::OkStatus();
}

size_t Pool::Shrink() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t given = 0;
  for (auto it = extents_.begin(); it != extents_.end();) {
    ExtentRecord* rec = it->get();
    // An extent in use stays; so does one an observer cannot let go on this thread (a
    // program's single-issuer ring, from another thread than its submitter).
    if (rec->free_pages != rec->usable_pages ||
        (observer_ != nullptr && !observer_->MayRemove(RangeOf(rec->extent)).ok())) {
      ++it;
      continue;
    }
    for (size_t i = 0; i < rec->regions; ++i) {
      Region* region = rec->SplitRecord(i);
      if (region == nullptr) {
        Unlink(rec, &rec->heads[i]);
        DeleteDescriptor(rec, &rec->heads[i]);
        continue;
      }
      size_t page = i == 0 ? rec->reserve_bytes / kPageSize4K : 0;
      while (page < (size_t{1} << region->order())) {
        Folio* f = region->Find(page);
        Unlink(rec, f);
        region->Set(f->order, page >> f->order, nullptr);
        page += f->nr_pages();
        DeleteDescriptor(rec, f);
      }
    }
    mapped_bytes_ -= rec->size;
    given += rec->size;
    Retire(std::move(*it));
    it = extents_.erase(it);
  }
  return given;
}

PoolStats Pool::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStats s;
  s.backing = config_.key.backing;
  s.page_size = page_size_;
  s.node = config_.key.node;
  s.describe = Describe();
  s.extents = extents_.size();
  s.mapped_bytes = mapped_bytes_;
  s.free_bytes = free_bytes_;
  s.folios = total_folios_;
  // Everything held for the folios: the slab (all of it, in use or not), every head
  // array (idle ones kept for reuse too), and per extent its record, PFN list, split
  // directory and records, its index entry and its slot in extents_.
  s.metadata_bytes = descriptors_.bytes();
  for (const HeadArray& a : heads_) s.metadata_bytes += sizeof(HeadArray) + a.n * sizeof(Folio);
  for (const auto& rec : extents_) {
    s.reserve_bytes += rec->reserve_bytes;
    if (rec->reserve != nullptr) s.reserve_descriptors += rec->reserve->in_use();
    s.metadata_bytes += rec->metadata_bytes() + kIndexEntryBytes + sizeof(void*);
  }
  s.free_by_order.assign(free_count_.begin(), free_count_.begin() + max_order_ + 1);
  return s;
}

}  // namespace hugemm::alloc_internal
