#include "runtime/alloc/pool.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/alloc/address_index.h"
#include "runtime/alloc/thread_cache.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/status.h"

namespace hugemm::alloc_internal {
namespace {

size_t HeadOf(const Region* region, const Folio* folio) {
  return static_cast<size_t>(folio->data - region->base()) >> kPageShift;
}

// Free-list links live in the owner-private words.
Folio* Next(const Folio* f) { return reinterpret_cast<Folio*>(f->owner_private[0]); }
Folio* Prev(const Folio* f) { return reinterpret_cast<Folio*>(f->owner_private[1]); }
void SetNext(Folio* f, Folio* next) { f->owner_private[0] = reinterpret_cast<uint64_t>(next); }
void SetPrev(Folio* f, Folio* prev) { f->owner_private[1] = reinterpret_cast<uint64_t>(prev); }

}  // namespace

bool PoolKey::Matches(const AllocOptions& o, size_t normalised_page_size) const {
  if (o.backing != backing) return false;
  switch (backing) {
    case BackingKind::kDevDax:
      // One pool per device: two would hand out the same device ranges.
      return o.devdax_path == path &&
             (normalised_page_size == 0 || normalised_page_size == page_size);
    case BackingKind::kHugetlbfs:
      return o.hugetlbfs_mount == path && normalised_page_size == page_size && o.node == node;
    default:
      return normalised_page_size == page_size && o.node == node;
  }
}

Pool::Pool(PoolConfig config)
    : config_(std::move(config)),
      page_size_(config_.backing->page_size()),
      region_order_(PageOrder(page_size_) == 0 ? 9 : PageOrder(page_size_)),
      max_order_(PageOrder(page_size_)),
      observer_(config_.observer) {}

Pool::~Pool() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& rec : extents_) Retire(*rec);
  extents_.clear();
}

MemoryRange Pool::RangeOf(const Extent& extent) const {
  return {.data = extent.data(),
          .length = extent.size(),
          .page_size = extent.page_size(),
          .node = extent.node(),
          .backing = config_.key.backing,
          .kind = MemoryRangeKind::kPoolExtent};
}

void Pool::Retire(ExtentRecord& rec) {
  if (observer_ != nullptr) observer_->MemoryRemoving(RangeOf(rec.extent));
  for (auto& region : rec.regions) IndexErase(region.get());
}

std::string Pool::Name() const {
  return absl::StrCat(Describe(), " pool on node ",
                      config_.key.node < 0 ? std::string("any") : absl::StrCat(config_.key.node));
}

absl::Status Pool::Exhausted(int order, absl::string_view why) const {
  std::string kernel;
  if (config_.key.backing == BackingKind::kHugetlb ||
      config_.key.backing == BackingKind::kHugetlbfs) {
    // The node's own counts when the pool is bound to one: the machine's would not say
    // why this node ran out.
    const std::string counts =
        sys::DescribePool(config_.backing->os(), page_size_, config_.key.node);
    if (!counts.empty()) kernel = absl::StrCat("; the kernel's ", counts);
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      Name(), ": no free ", PageSizeName(kPageSize4K << order), " folio: ", why, "; pool has ",
      HumanBytes(free_bytes_), " free in ", free_folios_, " folios, ", HumanBytes(mapped_bytes_),
      " mapped", config_.limit_bytes ? absl::StrCat(" of ", HumanBytes(config_.limit_bytes)) : "",
      kernel));
}

Folio* Pool::NewFolio(Region* region, size_t head, int order) {
  ExtentRecord* rec = region->extent();
  Folio* f = rec->reserve.Get();
  const bool in_reserve = f != nullptr;
  if (f == nullptr) f = descriptors_.Get();
  f->counts.store(Folio::CountsWord(0, 0), std::memory_order_relaxed);
  f->flags.store(in_reserve ? static_cast<uint32_t>(FolioFlag::kReserveMeta) : 0u,
                 std::memory_order_relaxed);
  f->order = static_cast<uint8_t>(order);
  f->backing = config_.key.backing;
  f->node = static_cast<int16_t>(rec->extent.node());
  if (page_size_ == kPageSize4K) {
    // Contiguous only page by page: a larger folio of a 4K backing has no single PFN.
    f->head_pfn = order == 0 ? rec->extent.pfn(region->first_native() + head) : kUnknownPfn;
  } else {
    const uint64_t pfn = rec->extent.pfn(region->first_native());
    f->head_pfn = pfn == kUnknownPfn ? kUnknownPfn : pfn + head;
  }
  f->data = region->base() + (head << kPageShift);
  f->owner = this;
  f->owner_private[0] = f->owner_private[1] = 0;
  ++total_folios_;
  return f;
}

void Pool::DeleteDescriptor(Region* region, Folio* folio) {
  --total_folios_;
  if (folio->has_flag(FolioFlag::kReserveMeta)) {
    region->extent()->reserve.Put(folio);
  } else {
    descriptors_.Put(folio);
  }
}

void Pool::PushFree(Region* region, Folio* f) {
  f->set_flag(FolioFlag::kFree);
  Folio* head = free_[f->order];
  SetNext(f, head);
  SetPrev(f, nullptr);
  if (head != nullptr) SetPrev(head, f);
  free_[f->order] = f;
  ++free_count_[f->order];
  ++free_folios_;
  free_bytes_ += f->size();
  region->extent()->free_pages += f->nr_pages();
}

void Pool::Unlink(Region* region, Folio* f) {
  f->clear_flag(FolioFlag::kFree);
  if (Prev(f) != nullptr) {
    SetNext(Prev(f), Next(f));
  } else {
    free_[f->order] = Next(f);
  }
  if (Next(f) != nullptr) SetPrev(Next(f), Prev(f));
  SetNext(f, nullptr);
  SetPrev(f, nullptr);
  --free_count_[f->order];
  --free_folios_;
  free_bytes_ -= f->size();
  region->extent()->free_pages -= f->nr_pages();
}

void Pool::AddFreeRange(Region* region, size_t begin, size_t end) {
  while (begin < end) {
    int o = std::min(max_order_, region->order());
    while ((begin & ((size_t{1} << o) - 1)) != 0 || begin + (size_t{1} << o) > end) --o;
    Folio* f = NewFolio(region, begin, o);
    region->Set(o, begin >> o, f);
    PushFree(region, f);
    begin += size_t{1} << o;
  }
}

absl::Status Pool::Grow(int order) {
  const size_t region_size = kPageSize4K << region_order_;
  const bool reserve =
      config_.reserve_bytes > 0 && (config_.key.backing == BackingKind::kDevDax ||
                                    config_.key.backing == BackingKind::kHugetlbfs);
  // The reserve eats the front of the first region; a whole-region folio needs a second.
  size_t regions = reserve && order == region_order_ ? 2 : 1;
  const size_t length = std::max(region_size * regions, page_size_);
  if (config_.limit_bytes != 0 && mapped_bytes_ + length > config_.limit_bytes) {
    return Exhausted(order,
                     absl::StrCat("growing by ", HumanBytes(length), " would pass the pool limit"));
  }
  absl::StatusOr<Extent> extent =
      config_.backing->Map({.length = length, .node = config_.key.node, .align = region_size});
  if (!extent.ok()) return Exhausted(order, extent.status().message());

  auto rec = std::make_unique<ExtentRecord>();
  rec->extent = std::move(*extent);
  std::byte* base = rec->extent.data();
  for (size_t off = 0; off < length; off += region_size) {
    auto region = std::make_unique<Region>(base + off, region_order_, rec.get(), off / page_size_);
    if (absl::Status st = IndexInsert(region.get()); !st.ok()) {
      for (auto& r : rec->regions) IndexErase(r.get());
      return st;
    }
    rec->regions.push_back(std::move(region));
  }
  if (observer_ != nullptr) {
    // Before any folio of it is handed out: a device table that cannot take the extent
    // fails the allocation rather than leave memory it does not know.
    if (absl::Status st = observer_->MemoryAdded(RangeOf(rec->extent)); !st.ok()) {
      for (auto& r : rec->regions) IndexErase(r.get());
      return sys::Annotate(st, absl::StrCat(Name(), ": growing by ", HumanBytes(length)));
    }
  }
  if (reserve) {
    rec->reserve_bytes =
        std::min((config_.reserve_bytes + kPageSize4K - 1) & ~(kPageSize4K - 1), region_size / 2);
    rec->reserve = ReserveDescriptors(base, rec->reserve_bytes / sizeof(Folio));
  }
  const size_t pages_per_region = size_t{1} << region_order_;
  rec->usable_pages = rec->regions.size() * pages_per_region - rec->reserve_bytes / kPageSize4K;
  for (size_t i = 0; i < rec->regions.size(); ++i) {
    AddFreeRange(rec->regions[i].get(), i == 0 ? rec->reserve_bytes / kPageSize4K : 0,
                 pages_per_region);
  }
  mapped_bytes_ += length;
  extents_.push_back(std::move(rec));
  return absl::OkStatus();
}

Folio* Pool::TakeFree(int order) {
  for (int o = order; o <= max_order_; ++o) {
    if (free_[o] == nullptr) continue;
    Folio* f = free_[o];
    Region* region = IndexLookup(f->data);
    Unlink(region, f);
    while (f->order > order) {
      // Split: f keeps the lower half, a new descriptor takes the upper one. The new
      // slots go in before the old one goes, so a lock-free reader always finds one.
      const int half = f->order - 1;
      const size_t head = HeadOf(region, f);
      Folio* upper = NewFolio(region, head + (size_t{1} << half), half);
      region->Set(half, (head >> half) + 1, upper);
      region->Set(half, head >> half, f);
      region->Set(half + 1, head >> (half + 1), nullptr);
      f->order = static_cast<uint8_t>(half);
      PushFree(region, upper);
    }
    return f;
  }
  return nullptr;
}

void Pool::FreeOne(Folio* f) {
  Region* region = IndexLookup(f->data);
  // A new life: nothing of the old one (dirty, referenced) carries over.
  f->flags.fetch_and(static_cast<uint32_t>(FolioFlag::kReserveMeta), std::memory_order_relaxed);
  const int cap = std::min(max_order_, region->order());
  while (f->order < cap) {
    const int o = f->order;
    const size_t head = HeadOf(region, f);
    const size_t buddy_head = head ^ (size_t{1} << o);
    Folio* buddy = region->At(o, buddy_head >> o);
    if (buddy == nullptr || !buddy->has_flag(FolioFlag::kFree)) break;
    Unlink(region, buddy);
    Folio* lower = head < buddy_head ? f : buddy;
    Folio* upper = head < buddy_head ? buddy : f;
    const size_t lower_head = std::min(head, buddy_head);
    region->Set(o + 1, lower_head >> (o + 1), lower);
    region->Set(o, head >> o, nullptr);
    region->Set(o, buddy_head >> o, nullptr);
    lower->order = static_cast<uint8_t>(o + 1);
    DeleteDescriptor(region, upper);
    f = lower;
  }
  PushFree(region, f);
}

absl::StatusOr<int> Pool::AllocateBatch(int order, Folio** out, int want) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  while (n < want) {
    Folio* f = TakeFree(order);
    if (f == nullptr) {
      if (n > 0) break;
      if (absl::Status st = Grow(order); !st.ok()) return st;
      continue;
    }
    out[n++] = f;
  }
  return n;
}

void Pool::FreeBatch(Folio* const* folios, int n) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < n; ++i) FreeOne(folios[i]);
  if (orphaned_.load(std::memory_order_relaxed) && Idle()) {
    // The allocator is gone and this was the last folio out: give the memory back, and
    // the backing with it (a device's descriptor). The pool object and its descriptor
    // slab stay, so a late stale reader of a descriptor still reads memory (and fails
    // its TryGet).
    for (auto& rec : extents_) Retire(*rec);
    extents_.clear();
    config_.backing.reset();
  }
}

void Pool::Orphan() {
  bool idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    orphaned_.store(true, std::memory_order_release);
    idle = Idle();
    // The observer belongs to whoever owned the allocator, which is going too: what
    // stays mapped for folios still out is no longer reported.
    if (!idle) observer_ = nullptr;
  }
  if (idle) {
    delete this;
    return;
  }
  // Folios are still out (pinned, mapped). The last one back gives the memory to the
  // kernel (FreeBatch); the small pool object stays here for good, so that neither a
  // late stale reader of a descriptor nor the final unlock meets freed memory.
  static std::mutex graveyard_mu;
  static auto* graveyard = new std::vector<Pool*>();
  std::lock_guard<std::mutex> lock(graveyard_mu);
  graveyard->push_back(this);
}

size_t Pool::Shrink() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t given = 0;
  for (auto it = extents_.begin(); it != extents_.end();) {
    ExtentRecord* rec = it->get();
    if (rec->free_pages != rec->usable_pages) {
      ++it;
      continue;
    }
    for (size_t i = 0; i < rec->regions.size(); ++i) {
      Region* region = rec->regions[i].get();
      size_t page = i == 0 ? rec->reserve_bytes / kPageSize4K : 0;
      while (page < (size_t{1} << region->order())) {
        Folio* f = region->Find(page);
        Unlink(region, f);
        region->Set(f->order, page >> f->order, nullptr);
        page += f->nr_pages();
        DeleteDescriptor(region, f);
      }
    }
    Retire(*rec);
    mapped_bytes_ -= rec->extent.size();
    given += rec->extent.size();
    it = extents_.erase(it);  // unmaps: the kernel has the pages back
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
  s.metadata_bytes = descriptors_.in_use() * sizeof(Folio);
  for (const auto& rec : extents_) {
    s.reserve_bytes += rec->reserve_bytes;
    s.reserve_descriptors += rec->reserve.in_use();
    for (const auto& region : rec->regions) {
      // The region's record and slots, and its slot in the address index.
      s.metadata_bytes += region->metadata_bytes() + sizeof(void*);
    }
  }
  s.free_by_order.assign(free_count_.begin(), free_count_.begin() + max_order_ + 1);
  return s;
}

void Pool::ReleaseFolio(Folio* folio) {
  if (config_.thread_cache && !orphaned_.load(std::memory_order_acquire) &&
      config_.caches->Push(this, folio)) {
    return;
  }
  FreeBatch(&folio, 1);
}

}  // namespace hugemm::alloc_internal
