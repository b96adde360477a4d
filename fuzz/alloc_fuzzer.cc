// The folio allocator over the fake machine (tests/fake_os.h) under random sequences of
// allocate, free, pin (a reference that outlives the handle), unpin, flush, shrink and
// the allocator's end, held against a model of what is in use.
//
// The model is the set of byte ranges handed out and not yet back: a folio is live while
// its handle or a pin holds it. After every step:
//   - no two live folios overlap, each is aligned to its size and FolioOf finds it;
//   - a folio handed out zeroed reads zero, wherever its memory was before (split from a
//     larger folio, merged from smaller ones, grown from the machine): every folio is
//     stamped on every 4K page when handed out, so a stamp seen by a later owner is
//     memory that reached it unzeroed;
//   - a pinned folio's stamps are intact until its last unpin (nothing reused it);
//   - each pool's free bytes, in-use bytes and descriptor reserve add up to what it
//     mapped, its free lists to its free bytes, and once its magazines are flushed every
//     native page nothing uses is one free folio again (the buddies merged);
//   - it ran out (ResourceExhausted) only with no free folio that large and no way to
//     grow: the pool limit, or no free page on the machine (or device) for it.
// At the end, with everything freed and the allocator gone, the machine has every huge
// page, mapping and descriptor back.
#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "fuzz/fuzz_input.h"
#include "hugemm/alloc.h"
#include "tests/fake_os.h"

namespace hugemm::fuzz {
namespace {

using Code = absl::StatusCode;
using testing::FakeMachine;
using testing::FakeOs;

constexpr int kMaxOps = 40;
constexpr int kMaxLive = 48;
constexpr int kDeviceBytes = 8 * kPageSize2M;

struct PoolChoice {
  const char* name;
  AllocOptions options;
  size_t page_size;  // the native page
};

const PoolChoice kPools[] = {
    {"hugetlb 2M", {}, kPageSize2M},
    {"hugetlb 2M node 0", {.node = 0}, kPageSize2M},
    {"hugetlb 2M node 1", {.node = 1}, kPageSize2M},
    {"hugetlb 1G", {.page_size = kPageSize1G}, kPageSize1G},
    {"hugetlbfs 2M", {.backing = BackingKind::kHugetlbfs}, kPageSize2M},
    {"anon", {.backing = BackingKind::kAnon, .page_size = 0}, kPageSize4K},
    {"devdax 2M",
     {.backing = BackingKind::kDevDax, .page_size = 0, .devdax_path = "/dev/dax0.0"},
     kPageSize2M},
};
constexpr size_t kNumPools = sizeof(kPools) / sizeof(kPools[0]);

struct Live {
  FolioHandle handle;  // empty once freed
  Folio* folio = nullptr;
  size_t pool = 0;
  int32_t pins = 0;  // PIN references held besides the handle
  uint64_t stamp = 0;
};

class Driver {
 public:
  explicit Driver(FuzzInput& in);
  void Run();

 private:
  uint64_t* PageWord(const Folio* f, size_t page) const {
    return reinterpret_cast<uint64_t*>(f->data + (page << kPageShift));
  }
  void Stamp(Live& l);
  void CheckStamps(const Live& l, const char* when) const;
  const PoolStats* StatsOf(const std::vector<PoolStats>& all, size_t pool) const;
  bool CouldGrow(size_t pool, int order, const std::vector<PoolStats>& stats) const;

  void OpAllocate();
  void OpFree();
  void OpPin();
  void OpUnpin();
  void OpFlush();
  void OpShrink();
  void Verify(bool flushed);
  void Finish();

  FuzzInput& in_;
  FakeMachine machine_;
  std::unique_ptr<FakeOs> os_;
  AllocatorOptions options_;
  std::unique_ptr<Allocator> alloc_;
  std::map<uintptr_t, Live> live_;  // by data address
  uint64_t next_stamp_ = 1;
  HugePagePool start2m_, start1g_;
  // HUGEMM_FUZZ_TRACE=1: each operation on stderr, to read a failing input.
  const bool trace_ = std::getenv("HUGEMM_FUZZ_TRACE") != nullptr;
};

Driver::Driver(FuzzInput& in) : in_(in) {
  machine_.nodes = in_.Bool() ? 2 : 1;
  machine_.pools = {{kPageSize2M, static_cast<int64_t>(2 + in_.Below(6))},
                    {kPageSize1G, static_cast<int64_t>(in_.Below(2))}};
  machine_.dax = {{.name = "dax0.0", .size = kDeviceBytes, .align = kPageSize2M}};
  os_ = std::make_unique<FakeOs>(machine_);
  static constexpr size_t kLimits[] = {0, 0, 2 * kPageSize2M, 4 * kPageSize2M, kPageSize1G};
  static constexpr size_t kReserves[] = {0, 0, 4096, 64 << 10};
  options_ = {.max_bytes_per_pool = kLimits[in_.Below(5)],
              .meta_reserve_bytes = kReserves[in_.Below(4)],
              .thread_cache = in_.Below(3) != 0,
              .os = os_.get()};
  absl::StatusOr<std::unique_ptr<Allocator>> a = Allocator::Create(options_);
  FUZZ_CHECK(a.ok(), std::string(a.status().message()));
  alloc_ = std::move(*a);
  start2m_ = os_->Pool(kPageSize2M);
  start1g_ = os_->Pool(kPageSize1G);
}

void Driver::Stamp(Live& l) {
  l.stamp = next_stamp_++;
  for (size_t p = 0; p < l.folio->nr_pages(); ++p) *PageWord(l.folio, p) = l.stamp << 20 | p;
}

void Driver::CheckStamps(const Live& l, const char* when) const {
  for (size_t p = 0; p < l.folio->nr_pages(); ++p) {
    FUZZ_CHECK(*PageWord(l.folio, p) == (l.stamp << 20 | p),
               absl::StrFormat("%s: page %u of the folio at %p was written by someone else", when,
                               p, l.folio->data));
  }
}

const PoolStats* Driver::StatsOf(const std::vector<PoolStats>& all, size_t pool) const {
  const PoolChoice& c = kPools[pool];
  for (const PoolStats& s : all) {
    const bool node_matches = c.options.backing == BackingKind::kDevDax || s.node == c.options.node;
    if (s.backing == c.options.backing && s.page_size == c.page_size && node_matches) return &s;
  }
  return nullptr;
}

// Whether the pool could have grown for a folio of `order`: within its limit, and with
// a native page (two, when the descriptor reserve takes the first's front) free on the
// machine or the device.
bool Driver::CouldGrow(size_t pool, int order, const std::vector<PoolStats>& stats) const {
  const PoolChoice& c = kPools[pool];
  const PoolStats* s = StatsOf(stats, pool);
  const bool reserve =
      options_.meta_reserve_bytes > 0 &&
      (c.options.backing == BackingKind::kDevDax || c.options.backing == BackingKind::kHugetlbfs);
  const size_t region = c.page_size == kPageSize4K ? kPageSize2M : c.page_size;
  const int region_order = PageOrder(region);
  const size_t need = std::max(region * (reserve && order == region_order ? 2 : 1), c.page_size);
  const size_t mapped = s != nullptr ? s->mapped_bytes : 0;
  if (options_.max_bytes_per_pool != 0 && mapped + need > options_.max_bytes_per_pool) {
    return false;
  }
  switch (c.options.backing) {
    case BackingKind::kAnon:
      return true;
    case BackingKind::kDevDax: {
      size_t mapped_dax = 0;
      for (const PoolStats& p : stats) {
        if (p.backing == BackingKind::kDevDax) mapped_dax += p.mapped_bytes;
      }
      return mapped_dax + need <= kDeviceBytes;
    }
    default: {
      const HugePagePool p = os_->Pool(c.page_size);
      const int64_t pages = static_cast<int64_t>(need / c.page_size);
      if (c.options.node < 0) return p.free - p.resv >= pages;
      for (const NodePool& n : p.nodes) {
        if (n.node == c.options.node) return n.free >= pages && p.free - p.resv >= pages;
      }
      return false;
    }
  }
}

void Driver::OpAllocate() {
  const size_t pool = in_.Below(kNumPools);
  const PoolChoice& c = kPools[pool];
  AllocOptions o = c.options;
  o.zero = in_.Below(4) != 0;
  const int max_order = PageOrder(c.page_size);
  // Up to 2M: a 1G folio would be a gigabyte to stamp.
  const int order_cap = std::min(max_order, 9);
  size_t bytes = 0;
  absl::StatusOr<FolioHandle> h;
  int order = 0;
  bool valid = true;
  if (in_.Bool()) {
    order = static_cast<int>(in_.Below(order_cap + 1));
    if (in_.Below(16) == 0) order = static_cast<int>(in_.Byte()) - 8;
    valid = order >= 0 && order <= max_order;
    if (order > order_cap) return;
    h = alloc_->AllocateOrder(order, o);
  } else {
    bytes = 1 + in_.Below(kPageSize4K << order_cap);
    if (in_.Below(16) == 0) bytes = in_.Bool() ? 0 : in_.U64();
    valid = bytes != 0 && bytes <= c.page_size;
    if (valid && bytes > (kPageSize4K << order_cap)) return;
    order = valid ? std::bit_width(((bytes + kPageSize4K - 1) >> kPageShift) - 1) : 0;
    h = alloc_->Allocate(bytes, o);
  }
  const std::string what = absl::StrFormat("allocate %s order %d (%u bytes)", c.name, order, bytes);
  if (trace_) std::fprintf(stderr, "%s: %s\n", what.c_str(), h.status().ToString().c_str());
  if (!h.ok()) {
    const Code code = h.status().code();
    FUZZ_CHECK(!h.status().message().empty(), what + ": an error without words");
    if (!valid) {
      FUZZ_CHECK(code == Code::kInvalidArgument, what + ": " + h.status().ToString());
      return;
    }
    if (c.options.node >= machine_.nodes) {
      FUZZ_CHECK(code == Code::kInvalidArgument || code == Code::kResourceExhausted ||
                     code == Code::kFailedPrecondition,
                 what + ": " + h.status().ToString());
      return;
    }
    FUZZ_CHECK(code == Code::kResourceExhausted, what + ": " + h.status().ToString());
    const std::vector<PoolStats> stats = alloc_->Stats();
    const PoolStats* s = StatsOf(stats, pool);
    for (int k = order; s != nullptr && k <= max_order; ++k) {
      FUZZ_CHECK(s->free_by_order[k] == 0,
                 absl::StrFormat("%s: ran out with a free folio of order %d", what, k));
    }
    FUZZ_CHECK(!CouldGrow(pool, order, stats),
               what + ": ran out though it could grow: " + h.status().ToString());
    return;
  }
  FUZZ_CHECK(valid, what + ": accepted");
  Folio* f = h->folio();
  const auto at = reinterpret_cast<uintptr_t>(f->data);
  FUZZ_CHECK(f->order == order && h->size() == kPageSize4K << order, what + ": wrong size");
  FUZZ_CHECK(at % f->size() == 0 || c.page_size == kPageSize4K, what + ": misaligned");
  FUZZ_CHECK(f->refcount() == 1 && f->pincount() == 0, what + ": counts");
  // No overlap with anything live.
  auto next = live_.lower_bound(at);
  FUZZ_CHECK(next == live_.end() || next->first >= at + f->size(),
             what + ": overlaps a live folio");
  if (next != live_.begin()) {
    auto prev = std::prev(next);
    FUZZ_CHECK(prev->first + prev->second.folio->size() <= at, what + ": overlaps a live folio");
  }
  FUZZ_CHECK(Allocator::FolioOf(f->data + in_.Below(f->size())) == f, what + ": FolioOf");
  if (o.zero) {
    for (size_t p = 0; p < f->nr_pages(); ++p) {
      FUZZ_CHECK(*PageWord(f, p) == 0,
                 absl::StrFormat("%s: page %u holds 0x%x, not zero", what, p, *PageWord(f, p)));
    }
  }
  if (live_.size() >= kMaxLive) return;  // dropped at once
  Live& l = live_[at];
  l.folio = f;
  l.pool = pool;
  l.handle = std::move(*h);
  Stamp(l);
}

void Driver::OpFree() {
  if (live_.empty()) return;
  auto it = std::next(live_.begin(), static_cast<ptrdiff_t>(in_.Below(live_.size())));
  Live& l = it->second;
  if (!l.handle) return;
  CheckStamps(l, "free");
  l.handle.Reset();
  if (l.pins == 0) live_.erase(it);
}

void Driver::OpPin() {
  if (live_.empty()) return;
  auto it = std::next(live_.begin(), static_cast<ptrdiff_t>(in_.Below(live_.size())));
  Live& l = it->second;
  if (!l.handle) return;  // only an owner may take a new reference
  const auto refs = static_cast<int32_t>(1 + in_.Below(l.folio->nr_pages()));
  FUZZ_CHECK(FolioTryGrab(l.folio, refs, RefKind::kPin).ok(), "pin a live folio");
  l.pins += refs;
}

void Driver::OpUnpin() {
  std::vector<uintptr_t> pinned;
  for (const auto& [at, l] : live_) {
    if (l.pins > 0) pinned.push_back(at);
  }
  if (pinned.empty()) return;
  auto it = live_.find(pinned[in_.Below(pinned.size())]);
  Live& l = it->second;
  CheckStamps(l, "unpin");
  FolioUngrab(l.folio, l.pins, RefKind::kPin, in_.Bool());
  l.pins = 0;
  if (!l.handle) live_.erase(it);  // the last reference: back to its pool
}

void Driver::OpFlush() {
  alloc_->FlushThreadCache();
  Verify(/*flushed=*/true);
}

void Driver::OpShrink() {
  const size_t given = alloc_->Shrink();
  const std::vector<PoolStats> stats = alloc_->Stats();
  for (size_t p = 0; p < kNumPools; ++p) {
    const PoolStats* s = StatsOf(stats, p);
    if (s == nullptr) continue;
    bool used = false;
    for (const auto& [at, l] : live_) used |= StatsOf(stats, l.pool) == s;
    if (!used) {
      FUZZ_CHECK(s->mapped_bytes == 0 && s->extents == 0,
                 absl::StrFormat("shrink left %u bytes mapped in the idle %s pool", s->mapped_bytes,
                                 kPools[p].name));
    }
  }
  (void)given;
  Verify(/*flushed=*/true);
}

void Driver::Verify(bool flushed) {
  const std::vector<PoolStats> stats = alloc_->Stats();
  std::map<const PoolStats*, size_t> in_use;
  for (const auto& [at, l] : live_) {
    FUZZ_CHECK(Allocator::FolioOf(l.folio->data) == l.folio, "FolioOf of a live folio");
    in_use[StatsOf(stats, l.pool)] += l.folio->size();
    const int32_t want = (l.handle ? 1 : 0) + (l.folio->large() ? l.pins : l.pins * kPinBias);
    FUZZ_CHECK(l.folio->refcount() == want, "refcount of a live folio");
  }
  for (const PoolStats& s : stats) {
    size_t listed = 0;
    for (size_t o = 0; o < s.free_by_order.size(); ++o) listed += s.free_by_order[o] << o;
    FUZZ_CHECK(listed * kPageSize4K == s.free_bytes,
               absl::StrFormat("%s: free lists hold %u bytes, free_bytes says %u", s.describe,
                               listed * kPageSize4K, s.free_bytes));
    const size_t accounted = s.free_bytes + in_use[&s] + s.reserve_bytes;
    // Folios in this thread's magazines count as in use but are no one's.
    FUZZ_CHECK(flushed || !options_.thread_cache ? accounted == s.mapped_bytes
                                                 : accounted <= s.mapped_bytes,
               absl::StrFormat("%s: %u free + %u in use + %u reserve, %u mapped", s.describe,
                               s.free_bytes, in_use[&s], s.reserve_bytes, s.mapped_bytes));
    if ((flushed || !options_.thread_cache) && s.reserve_bytes == 0 && !s.free_by_order.empty()) {
      // Every native page nothing uses is one free folio again.
      const size_t page = s.page_size == kPageSize4K ? kPageSize2M : s.page_size;
      std::map<uintptr_t, bool> used_pages;
      for (const auto& [at, l] : live_) {
        if (StatsOf(stats, l.pool) == &s) used_pages[at & ~(page - 1)] = true;
      }
      const size_t pages = s.mapped_bytes / page;
      const size_t whole = s.page_size == kPageSize4K ? 0 : s.free_by_order.back();
      if (s.page_size != kPageSize4K) {
        FUZZ_CHECK(whole == pages - used_pages.size(),
                   absl::StrFormat("%s: %u whole free pages, %u of %u unused", s.describe, whole,
                                   pages - used_pages.size(), pages));
      }
    }
  }
}

void Driver::Run() {
  for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
    const size_t pick = in_.Weighted({30, 18, 8, 8, 4, 4});
    if (trace_ && pick != 0) {
      static const char* const kNames[] = {"allocate", "free", "pin", "unpin", "flush", "shrink"};
      std::fprintf(stderr, "%s\n", kNames[pick]);
    }
    switch (pick) {
      case 0:
        OpAllocate();
        break;
      case 1:
        OpFree();
        break;
      case 2:
        OpPin();
        break;
      case 3:
        OpUnpin();
        break;
      case 4:
        OpFlush();
        break;
      default:
        OpShrink();
        break;
    }
    Verify(/*flushed=*/false);
  }
  Finish();
}

void Driver::Finish() {
  // Sometimes the allocator goes first: pinned folios keep their pages until unpinned.
  const bool early_end = in_.Bool();
  if (trace_) std::fprintf(stderr, "end%s\n", early_end ? ", the allocator first" : "");
  for (auto& [at, l] : live_) {
    CheckStamps(l, "end");
    l.handle.Reset();
  }
  if (early_end) alloc_.reset();
  for (auto& [at, l] : live_) {
    if (l.pins > 0) {
      CheckStamps(l, "last unpin");
      FolioUngrab(l.folio, l.pins, RefKind::kPin);
    }
  }
  live_.clear();
  alloc_.reset();
  const HugePagePool p2m = os_->Pool(kPageSize2M), p1g = os_->Pool(kPageSize1G);
  FUZZ_CHECK(p2m.free == start2m_.free && p2m.resv == start2m_.resv, "2M pages not given back");
  FUZZ_CHECK(p1g.free == start1g_.free && p1g.resv == start1g_.resv, "1G pages not given back");
  FUZZ_CHECK(os_->live_mappings() == 0, "a mapping was left");
  FUZZ_CHECK(os_->open_fds() == 0, "a descriptor was left open");
}

}  // namespace
}  // namespace hugemm::fuzz

HUGEMM_FUZZ_ENTRY_POINT(hugemm::fuzz::Driver)
