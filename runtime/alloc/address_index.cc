#include "runtime/alloc/address_index.h"

#include <atomic>
#include <cstdint>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace hugemm::alloc_internal {
namespace {

constexpr int kBits = 9;
constexpr uintptr_t kFanout = uintptr_t{1} << kBits;
constexpr int kLeafShift = 21;  // 2M
constexpr int kMidShift = 30;   // 1G
constexpr int kTopShift = 39;   // 512G
constexpr uintptr_t kLimit = uintptr_t{1} << 48;
constexpr uintptr_t kRegionTag = 1;  // a middle slot holding a 1G region, not a leaf

struct Leaf {
  std::atomic<Region*> slots[kFanout];
};
struct Mid {
  std::atomic<uintptr_t> slots[kFanout];  // Leaf* or (Region* | kRegionTag)
};

std::atomic<Mid*> g_top[kFanout];
std::mutex g_mu;

size_t Index(uintptr_t a, int shift) { return (a >> shift) & (kFanout - 1); }

}  // namespace

absl::Status IndexInsert(Region* region) {
  const auto a = reinterpret_cast<uintptr_t>(region->base());
  const int order = region->order();
  if ((order != 9 && order != 18) || a % region->size() != 0 || a + region->size() > kLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot index a region of order ", order, " at ", absl::Hex(a)));
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::atomic<Mid*>& top = g_top[Index(a, kTopShift)];
  Mid* mid = top.load(std::memory_order_relaxed);
  if (mid == nullptr) {
    mid = new Mid();
    top.store(mid, std::memory_order_release);
  }
  std::atomic<uintptr_t>& ms = mid->slots[Index(a, kMidShift)];
  uintptr_t m = ms.load(std::memory_order_relaxed);
  if (order == 18) {
    if (m & kRegionTag) return absl::AlreadyExistsError("1G region already indexed");
    // A leaf left behind by earlier 2M regions is abandoned (still readable, empty).
    ms.store(reinterpret_cast<uintptr_t>(region) | kRegionTag, std::memory_order_release);
    return absl::OkStatus();
  }
  if (m & kRegionTag) m = 0;  // a 1G region that was here has gone
  if (m == 0) {
    m = reinterpret_cast<uintptr_t>(new Leaf());
    ms.store(m, std::memory_order_release);
  }
  reinterpret_cast<Leaf*>(m)->slots[Index(a, kLeafShift)].store(region, std::memory_order_release);
  return absl::OkStatus();
}

void IndexErase(Region* region) {
  const auto a = reinterpret_cast<uintptr_t>(region->base());
  std::lock_guard<std::mutex> lock(g_mu);
  Mid* mid = g_top[Index(a, kTopShift)].load(std::memory_order_relaxed);
  if (mid == nullptr) return;
  std::atomic<uintptr_t>& ms = mid->slots[Index(a, kMidShift)];
  const uintptr_t m = ms.load(std::memory_order_relaxed);
  if (m & kRegionTag) {
    if (m == (reinterpret_cast<uintptr_t>(region) | kRegionTag)) {
      ms.store(0, std::memory_order_release);
    }
    return;
  }
  if (m == 0) return;
  std::atomic<Region*>& slot = reinterpret_cast<Leaf*>(m)->slots[Index(a, kLeafShift)];
  if (slot.load(std::memory_order_relaxed) == region)
    slot.store(nullptr, std::memory_order_release);
}

Region* IndexLookup(const void* addr) {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  if (a >= kLimit) return nullptr;
  Mid* mid = g_top[Index(a, kTopShift)].load(std::memory_order_acquire);
  if (mid == nullptr) return nullptr;
  const uintptr_t m = mid->slots[Index(a, kMidShift)].load(std::memory_order_acquire);
  if (m & kRegionTag) return reinterpret_cast<Region*>(m & ~kRegionTag);
  if (m == 0) return nullptr;
  return reinterpret_cast<Leaf*>(m)->slots[Index(a, kLeafShift)].load(std::memory_order_acquire);
}

}  // namespace hugemm::alloc_internal
