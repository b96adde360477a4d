// A range subscription: the table's notifier plus a sequence word for lock-free checks.
#include "hugemm/notify.h"

#include <utility>

namespace hugemm {

RangeSubscription::RangeSubscription(PageTable& table, const void* va, size_t length,
                                     NotifierCallbacks callbacks, const void* owner)
    : table_(table),
      va_(reinterpret_cast<uintptr_t>(va)),
      length_(length),
      user_(std::move(callbacks)) {
  NotifierCallbacks ours;
  ours.invalidate_start = [this](const Invalidation& inv) {
    // Before the user hears of it and before the mapping changes: a check that races
    // with the change already sees a new word.
    seq_.fetch_add((uint64_t{1} << kInProgressBits) + 1, std::memory_order_acq_rel);
    if (user_.invalidate_start) user_.invalidate_start(inv);
  };
  ours.invalidate_end = [this](const Invalidation& inv) {
    // A subscription made between another writer's start and end hears only the end:
    // nothing of ours is in progress then, and the count must not borrow from the
    // generation.
    uint64_t seq = seq_.load(std::memory_order_relaxed);
    if (Stable(seq)) return;
    if (user_.invalidate_end) user_.invalidate_end(inv);
    while (!seq_.compare_exchange_weak(seq, seq - 1, std::memory_order_release,
                                       std::memory_order_relaxed)) {
    }
  };
  id_ = table_.Subscribe(va, length, std::move(ours), owner);
}

RangeSubscription::~RangeSubscription() {
  // The table calls subscribers under its notifier lock, which Unsubscribe takes too.
  (void)table_.Unsubscribe(id_);
}

}  // namespace hugemm
