#include "runtime/alloc/pool.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "runtime/alloc/address_index.h"
#include "runtime/alloc/thread_cache.h"
#include "runtime/sys/hugepages.h"

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

MemoryRange Pool::RangeOf(const Extent& extent) const {
  return {.data = extent.data(),
          .length = extent.size(),
          .page_size = extent.page_size(),
          .node = extent.node(),
          .backing = config_.key.backing,
          .kind = MemoryRangeKind::kPoolExtent};
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
  if (order == 0) {
    // Its page's place in the region's run (page 0: the region head's descriptor).
    Region* region = rec->SplitRecord(i);
    f = region->SmallDescriptor(head, &in_reserve);
    if (f == nullptr) {
      Folio* run = rec->reserve != nullptr ? rec->reserve->GetRun(Region::kSmallRun) : nullptr;
      const bool run_in_reserve = run != nullptr;
      if (run == nullptr) run = descriptors_.GetRun();
      region->AddSmallRun(head, run, run_in_reserve);
      f = region->SmallDescriptor(head, &in_reserve);
    }
  } else if (head == 0) {
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
  if (folio->order == 0) return;   // its place in the region's run stays
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
      if (half == 0) {
        // An order-0 folio lives at its page's place in the run: the lower half moves
        // there, and f (free, unreferenced) goes back to where it came from. The region
        // head stays itself (and is counted once).
        Folio* lower = NewFolio(rec, i, head, 0);
        region->Set(0, head, lower);
        region->Set(1, head >> 1, nullptr);
        DeleteDescriptor(rec, f);
        f = lower;
      } else {
        region->Set(half, head >> half, f);
        region->Set(half + 1, head >> (half + 1), nullptr);
        f->order = static_cast<uint8_t>(half);
      }
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
    if (o == 0 && !rec->IsHead(lower)) {
      // An order-1 folio does not live in a run: the merged folio takes a descriptor of
      // its own, and both runs' places simply stop being live.
      Folio* merged = NewFolio(rec, rec->RegionOf(lower->data), lower_head, 1);
      region->Set(1, lower_head >> 1, merged);
      region->Set(0, head, nullptr);
      region->Set(0, buddy_head, nullptr);
      DeleteDescriptor(rec, lower);
      DeleteDescriptor(rec, upper);
      f = merged;
      continue;
    }
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
  // A child of fork() has none of the pool's memory, which its allocator never hands out
  // there, and the index may map those addresses to an extent of the child's own: the
  // folios are left as they are. No lock: a thread that held it at the fork is gone.
  if (made_by_.InChild()) [[unlikely]]
    return;
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

bool Pool::Orphan() {
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
    return true;
  }
  // Folios are still out (pinned, mapped). The last one back gives the memory to the
  // kernel (FreeBatch); the small pool object stays here for good, so that neither a
  // late stale reader of a descriptor nor the final unlock meets freed memory.
  static std::mutex graveyard_mu;
  static auto* graveyard = new std::vector<Pool*>();
  std::lock_guard<std::mutex> lock(graveyard_mu);
  graveyard->push_back(this);
  return false;
}

void Pool::ReleaseFolio(Folio* folio) {
  // A new life: nothing of the old one (dirty, referenced) carries over, through a
  // thread's cache either (FreeOne does the same for the pool's lists). The last
  // reference is gone, so no one else changes the flags now: a plain store will do.
  folio->flags.store(
      folio->flags.load(std::memory_order_relaxed) & static_cast<uint32_t>(FolioFlag::kReserveMeta),
      std::memory_order_relaxed);
  if (config_.thread_cache && !orphaned_.load(std::memory_order_acquire) &&
      config_.caches->Push(this, folio)) {
    return;
  }
  FreeBatch(&folio, 1);
}

}  // namespace hugemm::alloc_internal
