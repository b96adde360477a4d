// The allocator's front: pool lookup (lock-free once the pool exists), the hot path
// through the thread's magazine, zeroing, and the handle.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "hugemm/alloc.h"
#include "runtime/alloc/address_index.h"
#include "runtime/alloc/pool.h"
#include "runtime/alloc/thread_cache.h"
#include "runtime/alloc/zero.h"
#include "runtime/sys/fork_watch.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/status.h"

namespace hugemm {

using alloc_internal::Pool;
using alloc_internal::PoolConfig;

namespace {

constexpr int kMaxPools = 64;

// The pool key's page size: the kind's default made explicit, except for devdax whose
// page size is the device's alignment (0 = whatever it is).
size_t NormalisedPageSize(const AllocOptions& o) {
  if (o.page_size != 0) return o.page_size;
  switch (o.backing) {
    case BackingKind::kHugetlb:
    case BackingKind::kHugetlbfs:
      return kPageSize2M;
    case BackingKind::kAnon:
      return kPageSize4K;
    case BackingKind::kDevDax:
      return 0;
  }
  return 0;
}

std::string PoolName(const AllocOptions& o) {
  const size_t page_size = NormalisedPageSize(o);
  return absl::StrCat(BackingKindName(o.backing), " ",
                      page_size ? PageSizeName(page_size) : std::string("default"),
                      " pool on node ", o.node < 0 ? std::string("any") : absl::StrCat(o.node));
}

}  // namespace

class Allocator::Impl {
 public:
  explicit Impl(const AllocatorOptions& options) : options_(options) {}

  ~Impl() {
    // Another thread may drop a folio's last reference while this runs (alloc.h allows
    // it): its release may be on its way into the thread caches. Closing them waits for
    // such a release, or sends it to the pool, and brings every magazine back first.
    caches_->Close();
    bool all_idle = true;
    const int n = npools_.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) all_idle &= pools_[i].load(std::memory_order_relaxed)->Orphan();
    // A pool kept for folios still out names the set, and their releases look at it (and
    // find it closed): it stays with them, drained, for good.
    if (!all_idle) (void)caches_.release();
  }

  absl::StatusOr<Pool*> FindPool(const AllocOptions& o) {
    const size_t page_size = NormalisedPageSize(o);
    const int n = npools_.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) {
      Pool* p = pools_[i].load(std::memory_order_relaxed);
      if (p->key().Matches(o, page_size)) return p;
    }
    return CreatePool(o, page_size);
  }

  absl::StatusOr<Folio*> Take(Pool* pool, int order) {
    if (options_.thread_cache) return caches_->Take(pool, order);
    Folio* f = nullptr;
    absl::StatusOr<int> n = pool->AllocateBatch(order, &f, 1);
    if (!n.ok()) return n.status();
    return f;
  }

  void Flush() { caches_->FlushThisThread(); }
  void DrainIdle() { caches_->DrainIdle(nullptr); }

  // A child of fork() of the process that made this allocator: the pools' extents are
  // MADV_DONTFORK, so none of their memory is the child's.
  bool InForkedChild() const { return fork_.InChild(); }

  std::vector<Pool*> pools() const {
    std::vector<Pool*> out;
    const int n = npools_.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i) out.push_back(pools_[i].load(std::memory_order_relaxed));
    return out;
  }

 private:
  absl::StatusOr<Pool*> CreatePool(const AllocOptions& o, size_t page_size) {
    std::lock_guard<std::mutex> lock(mu_);
    const int n = npools_.load(std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) {  // another thread may have made it meanwhile
      Pool* p = pools_[i].load(std::memory_order_relaxed);
      if (p->key().Matches(o, page_size)) return p;
    }
    if (o.node < -1) {
      return absl::InvalidArgumentError(absl::StrCat(PoolName(o), ": bad NUMA node ", o.node));
    }
    if (o.node >= 0 && o.backing != BackingKind::kDevDax) {
      // Refused before a pool exists: a pool made for a node the backing can never map on
      // would hold one of the allocator's few pool slots for nothing.
      if (absl::Status st = CheckNodeOnline(o); !st.ok()) return st;
    }
    if (n == kMaxPools) {
      return absl::ResourceExhaustedError(
          absl::StrCat(PoolName(o), ": too many pools (", kMaxPools, ") in one allocator"));
    }
    absl::StatusOr<std::shared_ptr<Backing>> backing =
        Backing::Create({.kind = o.backing,
                         .page_size = page_size,
                         .hugetlbfs_mount = o.hugetlbfs_mount,
                         .devdax_path = o.devdax_path,
                         .os = options_.os});
    if (!backing.ok()) {
      return sys::Annotate(backing.status(), PoolName(o));  // keeps the errno (ErrnoOf)
    }
    const int order = PageOrder((*backing)->page_size());
    if (order != 0 && order != 9 && order != 18) {
      return absl::UnimplementedError(absl::StrCat((*backing)->Describe(),
                                                   ": only 4K, 2M and 1G pages are supported, not ",
                                                   PageSizeName((*backing)->page_size())));
    }
    PoolConfig config;
    config.key.backing = o.backing;
    config.key.page_size = (*backing)->page_size();
    config.key.node = o.backing == BackingKind::kDevDax ? -1 : o.node;
    config.key.path = o.backing == BackingKind::kDevDax      ? o.devdax_path
                      : o.backing == BackingKind::kHugetlbfs ? o.hugetlbfs_mount
                                                             : "";
    config.backing = std::move(*backing);
    config.limit_bytes = options_.max_bytes_per_pool;
    config.reserve_bytes = options_.meta_reserve_bytes;
    config.thread_cache = options_.thread_cache;
    config.caches = caches_.get();
    config.index = n;
    config.observer = options_.observer;
    if (o.backing == BackingKind::kDevDax) {
      // Read once: the pool serves every request for its device, whatever node they name.
      absl::StatusOr<DaxDeviceInfo> info =
          ReadDaxDevice(o.devdax_path, "/sys", config.backing->os());
      if (info.ok()) config.device_node = info->numa_node;
    }
    Pool* pool = new Pool(std::move(config));
    pools_[n].store(pool, std::memory_order_relaxed);
    npools_.store(n + 1, std::memory_order_release);
    return pool;
  }

  absl::Status CheckNodeOnline(const AllocOptions& o) const {
    Os& os = options_.os != nullptr ? *options_.os : Os::Default();
    absl::StatusOr<std::vector<int>> nodes = sys::OnlineNodes(os, "/sys");
    if (!nodes.ok()) {
      return sys::Annotate(nodes.status(), PoolName(o));
    }
    if (std::find(nodes->begin(), nodes->end(), o.node) == nodes->end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(PoolName(o), ": NUMA node ", o.node, " is not online"));
    }
    return absl::OkStatus();
  }

  const AllocatorOptions options_;
  const ForkWatch fork_;
  std::unique_ptr<alloc_internal::ThreadCacheSet> caches_ =
      std::make_unique<alloc_internal::ThreadCacheSet>();
  std::mutex mu_;  // pool creation
  std::array<std::atomic<Pool*>, kMaxPools> pools_{};
  std::atomic<int> npools_{0};
};

absl::StatusOr<std::unique_ptr<Allocator>> Allocator::Create(const AllocatorOptions& options) {
  return std::unique_ptr<Allocator>(new Allocator(options));
}

Allocator::Allocator(const AllocatorOptions& options)
    : options_(options), impl_(std::make_unique<Impl>(options)) {}

Allocator::~Allocator() {
  // In a child of fork() the extents are holes the child may have mapped something of its
  // own into since: unmapping them could take that. Everything is left to its exit.
  if (impl_->InForkedChild()) [[unlikely]]
    (void)impl_.release();
}

absl::StatusOr<FolioHandle> Allocator::AllocateOrder(int order, const AllocOptions& options) {
  // A folio from the pools (a free one, or one in a magazine the child inherited) would be
  // memory the child does not have: zeroing it, or the caller's first touch, would fault.
  if (impl_->InForkedChild()) [[unlikely]] {
    return absl::FailedPreconditionError(
        absl::StrCat(PoolName(options),
                     ": this process is a fork() child of the one that made the allocator and "
                     "has none of its pools' memory (MADV_DONTFORK); make an allocator of its "
                     "own"));
  }
  // Refused before a pool exists, as a bad size is: a bad request costs no pool slot.
  const size_t page_size = NormalisedPageSize(options);
  const int most = page_size == kPageSize4K || page_size == kPageSize2M ? PageOrder(page_size)
                                                                        : PageOrder(kPageSize1G);
  if (order < 0 || order > most) {
    return absl::InvalidArgumentError(
        absl::StrCat(PoolName(options), ": order ", order, " is outside 0..", most));
  }
  absl::StatusOr<Pool*> pool = impl_->FindPool(options);
  if (!pool.ok()) return pool.status();
  if (options.node != -1 && options.backing == BackingKind::kDevDax) {
    // One pool per device, whatever node a request names: the device's memory sits on
    // its own node, as Backing::Map says of a devdax mapping.
    const int device_node = (*pool)->device_node();
    if (options.node < -1) {
      return absl::InvalidArgumentError(
          absl::StrCat((*pool)->Describe(), ": bad NUMA node ", options.node));
    }
    if (device_node >= 0 && options.node != device_node) {
      return absl::InvalidArgumentError(absl::StrCat((*pool)->Describe(),
                                                     ": the memory sits on node ", device_node,
                                                     ", not node ", options.node));
    }
  }
  if (order < 0 || order > (*pool)->max_order()) {
    return absl::InvalidArgumentError(absl::StrCat((*pool)->Describe(), ": order ", order,
                                                   " is outside 0..", (*pool)->max_order()));
  }
  absl::StatusOr<Folio*> folio = impl_->Take(*pool, order);
  if (!folio.ok()) return folio.status();
  Folio* f = *folio;
  if (options.zero) alloc_internal::ZeroFolioMemory(f->data, f->size());
  // Release: the zeroes and the descriptor are visible to whoever gets a reference.
  f->counts.store(Folio::CountsWord(1, 0), std::memory_order_release);
  return FolioHandle(f);
}

absl::StatusOr<FolioHandle> Allocator::Allocate(size_t bytes, const AllocOptions& options) {
  if (bytes == 0) return absl::InvalidArgumentError(PoolName(options) + ": allocate 0 bytes");
  const size_t page_size = NormalisedPageSize(options);
  // A page size no backing has (not a power of two of at least 4K) is the backing's to
  // refuse, by name: measured against it, any request would read as too large.
  const bool real_page = page_size >= kPageSize4K && std::has_single_bit(page_size);
  if (bytes > kPageSize1G || (real_page && bytes > page_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        PoolName(options), ": ", bytes, " bytes do not fit in one ",
        PageSizeName(page_size ? page_size : kPageSize1G), " page (folios never span pages)"));
  }
  const size_t pages = (bytes + kPageSize4K - 1) >> kPageShift;
  return AllocateOrder(static_cast<int>(std::bit_width(pages - 1)), options);
}

void Allocator::FlushThreadCache() {
  if (options_.thread_cache) impl_->Flush();
}

size_t Allocator::Shrink() {
  if (impl_->InForkedChild()) [[unlikely]]
    return 0;  // the extents are not the child's to unmap (see ~Allocator)
  FlushThreadCache();
  if (options_.thread_cache) impl_->DrainIdle();  // and what idle threads hold
  size_t given = 0;
  for (Pool* p : impl_->pools()) given += p->Shrink();
  return given;
}

std::vector<PoolStats> Allocator::Stats() const {
  std::vector<PoolStats> out;
  for (Pool* p : impl_->pools()) out.push_back(p->Stats());
  return out;
}

Folio* Allocator::FolioOf(const void* addr) {
  alloc_internal::IndexReader reader;
  alloc_internal::ExtentRecord* rec = reader.Lookup(addr);
  return rec == nullptr ? nullptr : rec->Find(addr);
}

absl::StatusOr<MetadataCost> FolioMetadataCost(size_t folio_size, size_t page_size) {
  using alloc_internal::ExtentRecord;
  using alloc_internal::Region;
  // Anything else has no pool to model (and would divide by zero or never reach 1 GiB).
  if (page_size != kPageSize4K && page_size != kPageSize2M && page_size != kPageSize1G) {
    return absl::InvalidArgumentError(
        absl::StrCat("folio metadata: pools have 4K, 2M or 1G pages, not ", page_size, " bytes"));
  }
  if (folio_size < kPageSize4K || !std::has_single_bit(folio_size) || folio_size > page_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "folio metadata: a folio of ", folio_size,
        " bytes is not a power of two from 4K up to its page (", PageSizeName(page_size), ")"));
  }
  MetadataCost c;
  c.folio_size = folio_size;
  c.page_size = page_size;
  const int order = PageOrder(folio_size);
  const int region_order = PageOrder(page_size) == 0 ? 9 : PageOrder(page_size);
  const size_t region_size = kPageSize4K << region_order;
  const uint64_t folios = kPageSize1G / folio_size;
  // A pool grown from empty to 1 GiB by the pool's own rule, carved into these folios:
  // per extent its record, PFN list, index entry, extents_ slot and head array, and for
  // split regions the directory and the records; the other descriptors in the slab (for
  // 4K folios: in runs, one per 64 pages, beside one chunk the splits passed through).
  uint64_t bytes = 0;
  size_t mapped = 0;
  while (mapped < kPageSize1G) {
    const size_t length = alloc_internal::GrowLength(mapped, std::max(region_size, page_size),
                                                     region_size, page_size, kPageSize1G);
    const uint64_t regions = length / region_size;
    // A 4K backing keeps the extent's PFN list (every page has its own); huge pages
    // keep theirs in the region-head descriptors.
    const uint64_t pfn_list =
        page_size == kPageSize4K ? (length / page_size) * sizeof(uint64_t) : 0;
    bytes += sizeof(ExtentRecord) + pfn_list + alloc_internal::kIndexEntryBytes + sizeof(void*) +
             sizeof(alloc_internal::HeadArray) + regions * sizeof(Folio);
    if (order < region_order) {
      bytes += regions *
               (sizeof(void*) + Region::RecordBytes() + Region::SlotBytes(region_order, order));
    }
    mapped += length;
  }
  using alloc_internal::SystemDescriptors;
  if (order == 0) {
    bytes += folios / SystemDescriptors::kRun * SystemDescriptors::kRunBytes +
             SystemDescriptors::kChunkBytes;
  } else {
    const uint64_t slab = folios - std::min<uint64_t>(folios, kPageSize1G / region_size);
    bytes += (slab + SystemDescriptors::kPerChunk - 1) / SystemDescriptors::kPerChunk *
             SystemDescriptors::kChunkBytes;
  }
  c.bytes_per_gib = bytes;
  c.kernel_bytes_per_gib = (kPageSize1G / kPageSize4K) * 64;
  // With the vmemmap optimisation a huge folio keeps one 4K page of struct pages.
  c.kernel_hvo_bytes_per_gib = folio_size >= kPageSize2M ? folios * 4096 : c.kernel_bytes_per_gib;
  return c;
}

}  // namespace hugemm
