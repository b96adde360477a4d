// Address -> registered-buffer slot in O(1): which slot of the kernel pin table holds the
// bytes an I/O names.
//
// A radix over 2M granules of the address (three levels, 9 + 9 + 8 bits below 2^47)
// holds, per granule, the one slot whose buffer covers it. Every hugemm buffer but a 4K
// anon MapBuffer starts and ends on a 2M boundary, so a granule is covered by at most one
// slot and a lookup is three loads and a bounds check. A granule two buffers share (a 4K
// anon buffer's edge), and an address above 2^47, are "mixed": the lookup then searches
// an ordered map under a lock.
//
// Thread safety: Find is lock-free and may run at any time; Insert and Erase take a
// writer lock. A Find racing with the Erase of the buffer it asks about may see it or
// not (an I/O into memory being freed is the caller's race). Interior tables are freed
// only with the index.
#ifndef HUGEMM_RUNTIME_API_SLOT_INDEX_H_
#define HUGEMM_RUNTIME_API_SLOT_INDEX_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace hugemm::api_internal {

class SlotIndex {
 public:
  // Slots 0 .. capacity-1.
  explicit SlotIndex(unsigned capacity);
  ~SlotIndex();
  SlotIndex(const SlotIndex&) = delete;
  SlotIndex& operator=(const SlotIndex&) = delete;

  // `slot` (free, below capacity) now holds [start, start + length), which overlaps no
  // other slot's buffer.
  void Insert(unsigned slot, uintptr_t start, size_t length);
  // `slot` holds nothing any more. Never throws: it also undoes an Insert that threw.
  void Erase(unsigned slot);

  // The slot whose buffer holds all of [va, va + length) (length >= 1), or -1.
  int Find(uintptr_t va, size_t length) const {
    if (va >> kTopLimitShift != 0) return FindSlow(va, length);
    const Mid* mid = top_[va >> kTopShift].load(std::memory_order_acquire);
    if (mid == nullptr) return -1;
    const Leaf* leaf = mid->leaves[(va >> kMidShift) & kMidMask].load(std::memory_order_acquire);
    if (leaf == nullptr) return -1;
    const uint32_t e =
        leaf->entries[(va >> kGranuleShift) & kLeafMask].load(std::memory_order_acquire);
    if (e == 0) return -1;
    if (e == kMixed) return FindSlow(va, length);
    const unsigned slot = e - 1;
    const uintptr_t start = starts_[slot].load(std::memory_order_relaxed);
    const size_t len = lengths_[slot].load(std::memory_order_relaxed);
    return va >= start && length <= len && va - start <= len - length ? static_cast<int>(slot) : -1;
  }

  unsigned capacity() const { return capacity_; }

 private:
  static constexpr int kGranuleShift = 21;  // 2M
  static constexpr int kLeafBits = 8;
  static constexpr int kMidShift = kGranuleShift + kLeafBits;  // 512M per leaf
  static constexpr int kMidBits = 9;
  static constexpr int kTopShift = kMidShift + kMidBits;  // 256G per middle table
  static constexpr int kTopBits = 9;
  static constexpr int kTopLimitShift = kTopShift + kTopBits;  // 2^47
  static constexpr uintptr_t kLeafMask = (uintptr_t{1} << kLeafBits) - 1;
  static constexpr uintptr_t kMidMask = (uintptr_t{1} << kMidBits) - 1;
  static constexpr uint32_t kMixed = ~uint32_t{0};

  struct Leaf {
    std::atomic<uint32_t> entries[size_t{1} << kLeafBits];  // slot + 1, 0 or kMixed
  };
  struct Mid {
    std::atomic<Leaf*> leaves[size_t{1} << kMidBits];
  };

  int FindSlow(uintptr_t va, size_t length) const;
  // Granule `granule`'s entry; its tables are made if `make` (which may throw
  // std::bad_alloc, leaving every table it made published), else nullptr without them.
  std::atomic<uint32_t>* Entry(uintptr_t granule, bool make) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The entry granule `g` should hold, from the ordered map.
  uint32_t EntryFor(uintptr_t g) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the entries of the granules [start, start + length) meets from the ordered map.
  // Insert's makes the tables it needs; Erase's never allocates (and so never throws): a
  // granule without tables has held no buffer, and an entry of another buffer's is in
  // tables made by that buffer's Insert.
  void Refresh(uintptr_t start, size_t length, bool make) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const unsigned capacity_;
  std::unique_ptr<std::atomic<uintptr_t>[]> starts_;
  std::unique_ptr<std::atomic<size_t>[]> lengths_;
  std::atomic<Mid*> top_[size_t{1} << kTopBits] = {};
  mutable std::mutex mu_;  // std::mutex: visible to ThreadSanitizer
  std::map<uintptr_t, unsigned> by_start_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hugemm::api_internal

#endif  // HUGEMM_RUNTIME_API_SLOT_INDEX_H_
