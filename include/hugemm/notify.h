// Range subscriptions for registration caches (an RDMA MR cache, an IOMMU mapper): hear
// invalidate-start / invalidate-end when a mapping in the range changes (unmap, split,
// protection change, device-exclusive), and check validity without a call.
//
//   hugemm::RangeSubscription sub(table, buf, len, {.invalidate_start = drop_mr});
//   uint64_t seq = sub.sequence().load(std::memory_order_acquire);
//   if (hugemm::RangeSubscription::Stable(seq)) { build the registration; remember seq; }
//   ...
//   bool valid = sub.sequence().load(std::memory_order_acquire) == remembered;
//
// The sequence word packs a generation (bumped at every invalidate-start) over a count
// of invalidations in progress (up at start, down at end). A registration built from a
// stable word (none in progress) stays valid exactly while the word is unchanged: any
// later change bumps the generation. One counter bumped only at start would not do: a
// registration built between start and end would record the bumped value and look valid
// after the change completed, though it read the mapping mid-change; here it records a
// word with the in-progress count set, which Stable() rejects. (The kernel's
// mmu_interval_notifier keeps an odd/even sequence for the same reason.)
#ifndef HUGEMM_NOTIFY_H_
#define HUGEMM_NOTIFY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "hugemm/pgtable.h"

namespace hugemm {

class RangeSubscription {
 public:
  static constexpr int kInProgressBits = 16;

  // Subscribes to [va, va + length). `callbacks` (either may be empty) run after the
  // sequence is bumped at start and before it drops at end; they run without table locks
  // and must not subscribe or unsubscribe. `owner`: changes made on behalf of this owner
  // (device-exclusive entries it asked for) are not reported to it.
  RangeSubscription(PageTable& table, const void* va, size_t length,
                    NotifierCallbacks callbacks = {}, const void* owner = nullptr);
  // Unsubscribes: once the destructor returns no callback runs.
  ~RangeSubscription();
  RangeSubscription(const RangeSubscription&) = delete;
  RangeSubscription& operator=(const RangeSubscription&) = delete;

  // The word to read without a call.
  const std::atomic<uint64_t>& sequence() const { return seq_; }
  static uint64_t GenerationOf(uint64_t seq) { return seq >> kInProgressBits; }
  static bool Stable(uint64_t seq) { return (seq & ((uint64_t{1} << kInProgressBits) - 1)) == 0; }

  uint64_t generation() const { return GenerationOf(seq_.load(std::memory_order_acquire)); }
  bool invalidating() const { return !Stable(seq_.load(std::memory_order_acquire)); }
  const void* va() const { return reinterpret_cast<const void*>(va_); }
  size_t length() const { return length_; }

 private:
  PageTable& table_;
  uintptr_t va_;
  size_t length_;
  NotifierCallbacks user_;
  std::atomic<uint64_t> seq_{0};
  uint64_t id_ = 0;
};

}  // namespace hugemm

#endif  // HUGEMM_NOTIFY_H_
