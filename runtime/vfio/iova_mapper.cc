#include <algorithm>
#include <cstdio>
#include <iterator>
#include <mutex>
#include <new>
#include <optional>
#include <utility>

#include "hugemm/page_size.h"
#include "hugemm/vfio.h"
#include "runtime/api/kernel_pin_table.h"
#include "runtime/sys/status.h"
#include "runtime/util/format.h"

namespace hugemm {
namespace {

constexpr uint64_t k4KMask = kPageSize4K - 1;

uint64_t AlignUp(uint64_t x, uint64_t align) { return (x + align - 1) & ~(align - 1); }

// "[0x7f.., +2M) (hugetlb 2M pool extent)": the range, for messages.
std::string RangeName(const MemoryRange& r) {
  return hugemm::Format("[%p, +%s) (%s %s %s)", r.data, HumanBytes(r.length),
                        BackingKindName(r.backing), PageSizeName(r.page_size),
                        r.kind == MemoryRangeKind::kPoolExtent ? "pool extent" : "buffer");
}

}  // namespace

IovaMapper::IovaMapper(Runtime& rt, int container_fd, const IovaMapperOptions& options)
    : rt_(rt),
      os_(options.os != nullptr ? *options.os
                                : (rt.options().os != nullptr ? *rt.options().os : Os::Default())),
      container_fd_(container_fd),
      options_(options),
      next_iova_(options.iova_base) {}

absl::StatusOr<std::unique_ptr<IovaMapper>> IovaMapper::Attach(Runtime& rt, int container_fd,
                                                               const IovaMapperOptions& options) {
  if (container_fd < 0) {
    return absl::InvalidArgumentError(
        hugemm::Format("IOVA mapper: container descriptor %d", container_fd));
  }
  if (((options.iova_base | options.iova_limit) & k4KMask) != 0 ||
      options.iova_base >= options.iova_limit) {
    return absl::InvalidArgumentError(
        hugemm::Format("IOVA mapper: IOVA window [0x%x, 0x%x) is empty or not 4K-aligned",
                       options.iova_base, options.iova_limit));
  }
  if (rt.kernel_pin_table().InForkedChild()) {
    return absl::FailedPreconditionError(hugemm::Format(
        "IOVA mapper of VFIO container %d: this process is a fork() child of the one that "
        "opened the runtime and has none of its memory; open a runtime of its own",
        container_fd));
  }
  std::unique_ptr<IovaMapper> mapper(new IovaMapper(rt, container_fd, options));
  if (absl::Status st = mapper->os_.VfioCheckContainer(container_fd); !st.ok()) {
    return sys::Annotate(st, "IOVA mapper");
  }
  // Every map and unmap goes through a descriptor of the mapper's own, so they stay in
  // this container whatever becomes of the program's descriptor: closed, or its number
  // reused by another container.
  absl::StatusOr<int> held = mapper->os_.Duplicate(container_fd);
  if (!held.ok()) {
    return sys::Annotate(held.status(),
                         hugemm::Format("IOVA mapper of VFIO container %d", container_fd));
  }
  mapper->held_fd_ = *held;
  if (absl::Status st = rt.AddMemoryObserver(mapper.get()); !st.ok()) return st;
  mapper->observing_ = true;
  return mapper;
}

IovaMapper::~IovaMapper() {
  // In a child of fork() the container is its parent's as well (one kernel object, whose
  // mappings the parent's devices still use), and the runtime is inert there (runtime.h):
  // nothing changes but the child's copy of the descriptor, as the runtime leaves
  // everything to the child's exit.
  if (!rt_.kernel_pin_table().InForkedChild()) UnmapAll();
  // The container goes here if the program closed its descriptor already.
  if (held_fd_ >= 0) (void)os_.Close(held_fd_);
}

void IovaMapper::UnmapAll() {
  if (observing_) {
    if (absl::Status st = rt_.RemoveMemoryObserver(this); !st.ok()) {
      std::fprintf(stderr, "hugemm: IOVA mapper: %s\n", st.ToString().c_str());
    }
  }
  // No range comes or goes for this mapper any more: what it still maps is its own.
  std::map<uintptr_t, Mapping> left;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    left.swap(mapped_);
  }
  for (const auto& [start, m] : left) {
    if (absl::Status st = os_.VfioUnmapDma(held_fd_, m.iova, m.length); !st.ok()) {
      std::fprintf(stderr, "hugemm: IOVA mapper: unmapping [0x%lx, +%zu): %s\n", start, m.length,
                   st.ToString().c_str());
    }
  }
}

std::optional<uint64_t> IovaMapper::TakeFreshIova(size_t length, size_t align) {
  const uint64_t start = AlignUp(next_iova_, align);
  if (start < next_iova_ || start > options_.iova_limit || options_.iova_limit - start < length) {
    return std::nullopt;
  }
  // The alignment's gap is a hole, joined to a freed range that ends where it starts.
  if (start > next_iova_) GiveIova(next_iova_, start - next_iova_);
  next_iova_ = start + length;
  return start;
}

absl::StatusOr<uint64_t> IovaMapper::TakeIova(size_t length, size_t align) {
  // IOVAs never handed out come first: a device given a stale IOVA of freed memory then
  // meets an IOMMU fault, not whatever memory came next, until the window runs out.
  if (std::optional<uint64_t> fresh = TakeFreshIova(length, align)) return *fresh;
  if (!holes_.empty()) {
    // A freed range just below the fresh part joins it.
    auto last = std::prev(holes_.end());
    if (last->first + last->second == next_iova_) {
      next_iova_ = last->first;
      holes_.erase(last);
      if (std::optional<uint64_t> fresh = TakeFreshIova(length, align)) return *fresh;
    }
  }
  for (auto it = holes_.begin(); it != holes_.end(); ++it) {
    const uint64_t start = AlignUp(it->first, align);
    const uint64_t end = it->first + it->second;
    if (start < it->first || start > end || end - start < length) continue;
    const uint64_t hole = it->first;
    holes_.erase(it);
    if (start > hole) holes_[hole] = start - hole;
    if (start + length < end) holes_[start + length] = end - (start + length);
    return start;
  }
  return absl::ResourceExhaustedError(
      hugemm::Format("no room for %s aligned to %s below IOVA 0x%x (%s mapped)", HumanBytes(length),
                     HumanBytes(align), options_.iova_limit, HumanBytes(stats_.bytes)));
}

void IovaMapper::GiveIova(uint64_t iova, size_t length) {
  uint64_t start = iova, end = iova + length;
  auto next = holes_.lower_bound(start);
  if (next != holes_.end() && next->first == end) {
    end += next->second;
    next = holes_.erase(next);
  }
  if (next != holes_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      holes_.erase(prev);
    }
  }
  // A hole even at the top of what was handed out: the fresh part below iova_limit
  // goes first (TakeIova).
  holes_[start] = end - start;
}

void IovaMapper::GiveIovaOrDrop(uint64_t iova, size_t length) {
  try {
    GiveIova(iova, length);
  } catch (const std::bad_alloc&) {
    // No room to record the hole: its IOVAs are never handed out again, as after a
    // refused unmap. The window is smaller by them; nothing is mapped twice.
  }
}

absl::Status IovaMapper::MemoryAdded(const MemoryRange& range) {
  const auto start = reinterpret_cast<uintptr_t>(range.data);
  if (((start | range.length) & k4KMask) != 0 || range.length == 0) {
    return absl::InvalidArgumentError(
        hugemm::Format("IOVA mapping of %s: not whole 4K pages", RangeName(range)));
  }
  const size_t align = std::max<size_t>(range.page_size, kPageSize4K);
  // The record's node is made before the map: once the container maps the range, keeping
  // the record needs no heap, so nothing it maps is ever left unrecorded (where the mapper
  // would never unmap it, and the device would keep the pages after they are freed).
  std::map<uintptr_t, Mapping> record;
  record.emplace(start, Mapping{range.length, 0});
  uint64_t iova = 0;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    absl::StatusOr<uint64_t> taken = TakeIova(range.length, align);
    if (!taken.ok()) {
      return sys::Annotate(taken.status(), hugemm::Format("IOVA mapping of %s", RangeName(range)));
    }
    iova = *taken;
  }
  // The kernel pins and maps the pages here, which may take a while for a large range:
  // pins of other memory go on meanwhile.
  if (absl::Status st = os_.VfioMapDma(held_fd_, range.data, range.length, iova); !st.ok()) {
    {
      std::unique_lock<std::shared_mutex> lock(mu_);
      GiveIovaOrDrop(iova, range.length);
    }
    return sys::Annotate(st, hugemm::Format("IOVA mapping of %s into VFIO container %d",
                                            RangeName(range), container_fd_));
  }
  record.begin()->second.iova = iova;
  std::unique_lock<std::shared_mutex> lock(mu_);
  mapped_.insert(record.extract(record.begin()));
  ++stats_.mappings;
  stats_.bytes += range.length;
  ++stats_.maps;
  return absl::OkStatus();
}

void IovaMapper::MemoryRemoving(const MemoryRange& range) {
  Mapping m;
  {
    std::unique_lock<std::shared_mutex> lock(mu_);
    auto it = mapped_.find(reinterpret_cast<uintptr_t>(range.data));
    if (it == mapped_.end()) return;
    m = it->second;
    mapped_.erase(it);
    --stats_.mappings;
    stats_.bytes -= m.length;
  }
  absl::Status st = os_.VfioUnmapDma(held_fd_, m.iova, m.length);
  std::unique_lock<std::shared_mutex> lock(mu_);
  if (st.ok()) {
    ++stats_.unmaps;
    GiveIovaOrDrop(m.iova, m.length);
    return;
  }
  // The device may still reach the old pages there: never hand those IOVAs out again.
  ++stats_.unmap_failures;
  std::fprintf(stderr, "hugemm: IOVA mapper: unmapping %s at IOVA 0x%llx: %s\n",
               RangeName(range).c_str(), static_cast<unsigned long long>(m.iova),
               st.ToString().c_str());
}

bool IovaMapper::DeviceAddress(uintptr_t va, uint64_t* addr, uint64_t* contiguous) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  auto it = mapped_.upper_bound(va);
  if (it == mapped_.begin()) return false;
  --it;
  const uintptr_t offset = va - it->first;
  if (offset >= it->second.length) return false;
  *addr = it->second.iova + offset;
  *contiguous = it->second.length - offset;
  return true;
}

std::optional<uint64_t> IovaMapper::Iova(const void* va) const {
  uint64_t addr = 0, run = 0;
  if (!DeviceAddress(reinterpret_cast<uintptr_t>(va), &addr, &run)) return std::nullopt;
  return addr;
}

absl::StatusOr<size_t> IovaMapper::PinSegments(const void* va, size_t length, GupFlags flags,
                                               uint64_t max_segment,
                                               absl::Span<DmaSegment> segments,
                                               std::vector<FolioSpan>* pinned) {
  absl::StatusOr<size_t> n =
      rt_.pinner().PinSegments(va, length, flags, max_segment, segments, pinned, this);
  if (!n.ok()) {
    return sys::Annotate(n.status(),
                         hugemm::Format("IOVA segments in VFIO container %d", container_fd_));
  }
  return n;
}

absl::StatusOr<std::vector<DmaSegment>> IovaMapper::Segments(const PinnedRange& pin,
                                                             uint64_t max_segment) const {
  absl::StatusOr<std::vector<DmaSegment>> out = pin.Segments(max_segment, this);
  if (!out.ok()) {
    return sys::Annotate(out.status(),
                         hugemm::Format("IOVA segments in VFIO container %d", container_fd_));
  }
  return out;
}

IovaMapperStats IovaMapper::stats() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  return stats_;
}

}  // namespace hugemm
