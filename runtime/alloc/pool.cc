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
  for (auto& rec : extents_) Retire(std::move(rec));
  extents_.clear();
}

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

MemoryRange Pool::RangeOf(const Extent& extent) const {
  return {.data = extent.data(),
          .length = extent.size(),
          .page_size = extent.page_size(),
          .node = extent.node(),
          .backing = config_.key.backing,
          .kind = MemoryRangeKind::kPoolExtent};
}

void Pool::Retire(std::unique_ptr<ExtentRecord> rec) {
  if (observer_ != nullptr) observer_->MemoryRemoving(RangeOf(rec->extent));
  { Extent gone = std::move(rec->extent); }  // the kernel has the pages back now
  PutHeads(rec->heads);
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

Folio* Pool::NewFolio(ExtentRecord* rec, size_t i, size_t head, int order) {
  Folio* f = nullptr;
  bool in_reserve = false;
  if (head == 0) {
    f = &rec->heads[i];
  } else {
    f = rec->reserve != nullptr ? rec->reserve->Get() : nullptr;
    in_reserve = f != nullptr;
    if (f == nullptr) f = descriptors_.Get();
  }
  f->counts.store(Folio::CountsWord(0, 0), std::memory_order_relaxed);
  f->flags.store(in_reserve ? static_cast<uint32_t>(FolioFlag::kReserveMeta) : 0u,
                 std::memory_order_relaxed);
  f->order = static_cast<uint8_t>(order);
  f->backing = config_.key.backing;
  f->node = static_cast<int16_t>(rec->extent.node());
  if (page_size_ == kPageSize4K) {
    // Contiguous only page by page: a larger folio of a 4K backing has no single PFN.
    f->head_pfn = order == 0 ? rec->extent.pfn(FirstNative(i) + head) : kUnknownPfn;
  } else if (head != 0) {
    // The region's PFN lives in its head descriptor (set at Grow), not in the extent.
    const uint64_t pfn = rec->heads[i].head_pfn;
    f->head_pfn = pfn == kUnknownPfn ? kUnknownPfn : pfn + head;
  }
  f->data = rec->RegionBase(i) + (head << kPageShift);
  f->owner = this;
  f->owner_private[0] = f->owner_private[1] = 0;
  ++total_folios_;
  return f;
}

void Pool::DeleteDescriptor(ExtentRecord* rec, Folio* folio) {
  --total_folios_;
  if (rec->IsHead(folio)) return;  // the slot stays the region's
  if (folio->has_flag(FolioFlag::kReserveMeta)) {
    rec->reserve->Put(folio);
  } else {
    descriptors_.Put(folio);
  }
}

void Pool::PushFree(ExtentRecord* rec, Folio* f) {
  f->set_flag(FolioFlag::kFree);
  Folio* head = free_[f->order];
  SetNext(f, head);
  SetPrev(f, nullptr);
  if (head != nullptr) SetPrev(head, f);
  free_[f->order] = f;
  ++free_count_[f->order];
  ++free_folios_;
  free_bytes_ += f->size();
  rec->free_pages += f->nr_pages();
}

void Pool::Unlink(ExtentRecord* rec, Folio* f) {
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
  rec->free_pages -= f->nr_pages();
}

void Pool::AddFreeRange(ExtentRecord* rec, size_t i, size_t begin, size_t end) {
  Region* region = rec->SplitRecord(i);  // set when the region starts out split
  while (begin < end) {
    int o = std::min(max_order_, region_order_);
    while ((begin & ((size_t{1} << o) - 1)) != 0 || begin + (size_t{1} << o) > end) --o;
    Folio* f = NewFolio(rec, i, begin, o);
    if (region != nullptr) region->Set(o, begin >> o, f);
    PushFree(rec, f);
    begin += size_t{1} << o;
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
  if (!extent.ok()) return Exhausted(order, extent.status().message());

  const size_t n = extent->size() / region_size;
  Folio* heads = TakeHeads(n);
  if (page_size_ != kPageSize4K) {
    // A huge page's PFN goes into its region's head descriptor, which keeps it for the
    // extent's life, so the extent's own list of them can go.
    for (size_t i = 0; i < n; ++i) heads[i].head_pfn = extent->pfn(FirstNative(i));
    extent->ForgetPfns();
  }
  auto rec = std::make_unique<ExtentRecord>(std::move(*extent), region_order_, heads);
  if (reserve) {
    rec->reserve_bytes =
        std::min((config_.reserve_bytes + kPageSize4K - 1) & ~(kPageSize4K - 1), region_size / 2);
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
  const size_t pages_per_region = size_t{1} << region_order_;
  rec->usable_pages = n * pages_per_region - rec->reserve_bytes / kPageSize4K;
  for (size_t i = 0; i < n; ++i) {
    AddFreeRange(rec.get(), i, i == 0 ? rec->reserve_bytes / kPageSize4K : 0, pages_per_region);
  }
  mapped_bytes_ += rec->size;
  extents_.push_back(std::move(rec));
  return absl::OkStatus();
}

Folio* Pool::TakeFree(int order) {
  for (int o = order; o <= max_order_; ++o) {
    if (free_[o] == nullptr) continue;
    Folio* f = free_[o];
    ExtentRecord* rec;
    {
      IndexReader reader;  // the record is this pool's: it outlives the reader
      rec = reader.Lookup(f->data);
    }
    Unlink(rec, f);
    if (f->order == order) return f;
    const size_t i = rec->RegionOf(f->data);
    // An unsplit region's folio is its head slot; its split record starts with it.
    Region* region = rec->MakeSplitRecord(i, FirstNative(i), f);
    while (f->order > order) {
      // Split: f keeps the lower half, a new descriptor takes the upper one. The new
      // slots go in before the old one goes, so a lock-free reader always finds one.
      const int half = f->order - 1;
      const size_t head = HeadOf(region, f);
      Folio* upper = NewFolio(rec, i, head + (size_t{1} << half), half);
      region->Set(half, (head >> half) + 1, upper);
      region->Set(half, head >> half, f);
      region->Set(half + 1, head >> (half + 1), nullptr);
      f->order = static_cast<uint8_t>(half);
      PushFree(rec, upper);
    }
    return f;
  }
  return nullptr;
}

void Pool::FreeOne(Folio* f) {
  ExtentRecord* rec;
  {
    IndexReader reader;
    rec = reader.Lookup(f->data);
  }
  // A new life: nothing of the old one (dirty, referenced) carries over.
  f->flags.fetch_and(static_cast<uint32_t>(FolioFlag::kReserveMeta), std::memory_order_relaxed);
  const int cap = std::min(max_order_, region_order_);
  // A folio smaller than its region comes from a split, so the region has a record.
  Region* region = f->order < cap ? rec->SplitRecord(rec->RegionOf(f->data)) : nullptr;
  while (f->order < cap) {
    const int o = f->order;
    const size_t head = HeadOf(region, f);
    const size_t buddy_head = head ^ (size_t{1} << o);
    Folio* buddy = region->At(o, buddy_head >> o);
    if (buddy == nullptr || !buddy->has_flag(FolioFlag::kFree)) break;
    Unlink(rec, buddy);
    Folio* lower = head < buddy_head ? f : buddy;
    Folio* upper = head < buddy_head ? buddy : f;
    const size_t lower_head = std::min(head, buddy_head);
    region->Set(o + 1, lower_head >> (o + 1), lower);
    region->Set(o, head >> o, nullptr);
    region->Set(o, buddy_head >> o, nullptr);
    lower->order = static_cast<uint8_t>(o + 1);
    DeleteDescriptor(rec, upper);
    f = lower;
  }
  PushFree(rec, f);
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
    for (auto& rec : extents_) Retire(std::move(rec));
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
  for (const HeadArray& a : heads_) s.metadata_bytes += a.n * sizeof(Folio);
  for (const auto& rec : extents_) {
    s.reserve_bytes += rec->reserve_bytes;
    if (rec->reserve != nullptr) s.reserve_descriptors += rec->reserve->in_use();
    s.metadata_bytes += rec->metadata_bytes() + kIndexEntryBytes + sizeof(void*);
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
