// Range notifiers: registration caches (an RDMA MR cache, an IOMMU mapper) subscribe to
// an address range and hear invalidate-start / invalidate-end around every change of a
// mapping in it, as the kernel's mmu interval notifiers do; a sequence word lets them
// check a registration's validity without a call.
//
//   hugemm::RangeSubscription sub(table.notifiers(), buf, len, {.invalidate_start = drop_mr});
//   uint64_t seq = sub.sequence().load(std::memory_order_acquire);
//   if (hugemm::RangeSubscription::Stable(seq)) { build the registration; remember seq; }
//   ...
//   bool valid = sub.sequence().load(std::memory_order_acquire) == remembered;
//
// This layer knows nothing of page tables: a NotifierRegistry holds subscriptions, and
// whoever changes a mapping (the shadow table owns one registry) announces the change
// with InvalidateStart before it and InvalidateEnd after it. Only what goes through the
// table is heard: a change the kernel makes to the program's own memory (munmap, madvise,
// a punched hole) reaches no subscriber.
#ifndef HUGEMM_NOTIFY_H_
#define HUGEMM_NOTIFY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace hugemm {

// Why a mapping changes. The values are the C API's HUGEMM_INVALIDATE_* ones.
enum class InvalidateReason { kUnmap, kSplit, kProtect, kExclusive, kRestore };
// "unmap", "split", "protect", "device-exclusive", "restore".
absl::string_view InvalidateReasonName(InvalidateReason reason);

// One change of the mappings of [va, va + length).
struct Invalidation {
  uintptr_t va = 0;
  size_t length = 0;
  InvalidateReason reason = InvalidateReason::kUnmap;
  const void* owner = nullptr;  // kExclusive / kRestore: the device that asked
};

// Either callback may be empty.
struct NotifierCallbacks {
  std::function<void(const Invalidation&)> invalidate_start;
  std::function<void(const Invalidation&)> invalidate_end;
};

// The subscriptions of one address space. A subscription hears every announced change
// whose range overlaps its own, except changes made on behalf of its own owner (a device
// does not hear of the device-exclusive entries it asked for). A subscription made while
// such a change is under way (started, not ended) hears its start at once, from Subscribe
// on the subscribing thread, and its end when it ends: no subscriber ever sees the end of
// a change without its start, so none takes a mapping read mid-change for a stable one.
//
// Thread safety: thread-safe. Announcements run one at a time under the registry's lock,
// which Subscribe, Unsubscribe and every announcement take: a callback may not subscribe,
// unsubscribe or change a mapping whose changes this registry announces (for a table's
// registry: no unmap, free, protection change or split of that table; it would
// deadlock), and once Unsubscribe returns none of that subscription's callbacks runs. It
// may translate, pin and unpin. (The C API refuses or defers those calls for its
// callbacks: hugemm.h.)
class NotifierRegistry {
 public:
  NotifierRegistry();
  NotifierRegistry(const NotifierRegistry&) = delete;
  NotifierRegistry& operator=(const NotifierRegistry&) = delete;

  // Subscribes to [va, va + length) and returns the subscription's id (never 0). Calls
  // `callbacks.invalidate_start` for each change of the range already under way. A length
  // past the end of the address space means to its end; an empty range hears nothing.
  [[nodiscard]] uint64_t Subscribe(const void* va, size_t length, NotifierCallbacks callbacks,
                                   const void* owner = nullptr);
  // Ends a subscription. NotFound when `id` names none (never made, or already ended).
  [[nodiscard]] absl::Status Unsubscribe(uint64_t id);

  // Called by whoever changes the mappings of inv's range: before the change, and after
  // it. Each calls the matching callback of every subscription that hears the change.
  void InvalidateStart(const Invalidation& inv);
  void InvalidateEnd(const Invalidation& inv);

 private:
  struct Subscription {
    uintptr_t va;
    size_t length;
    NotifierCallbacks callbacks;
    const void* owner;
  };
  void Announce(bool start, const Invalidation& inv);
  static bool Hears(const Subscription& s, const Invalidation& inv);

  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer (the system abseil is not)
  std::map<uint64_t, Subscription> subscriptions_ ABSL_GUARDED_BY(mu_);
  // The changes started and not yet ended, for subscriptions made meanwhile.
  std::vector<Invalidation> under_way_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// A subscription with a sequence word for lock-free validity checks. Subscribes when
// made, unsubscribes when destroyed; the registry must outlive it.
//
// The sequence word packs a generation (bumped at every invalidate-start) over a count
// of invalidations in progress (up at start, down at end). A registration built from a
// stable word (none in progress) stays valid exactly while the word is unchanged: any
// later change bumps the generation. One counter bumped only at start would not do: a
// registration built between start and end would record the bumped value and look valid
// after the change completed, though it read the mapping mid-change; here it records a
// word with the in-progress count set, which Stable() rejects. (The kernel's
// mmu_interval_notifier keeps an odd/even sequence for the same reason.) A subscription
// made during a change starts with that change counted (the registry replays its start),
// so a word read right after subscribing is stable only when nothing is under way.
//
// Thread safety: sequence() and the accessors may be read from any thread at any time;
// the callbacks run on the thread that changes the mapping.
class RangeSubscription {
 public:
  static constexpr int kInProgressBits = 16;

  // Subscribes to [va, va + length) of `registry`. `callbacks` (either may be empty) run
  // after the sequence is bumped at start and before it drops at end, under the rules of
  // NotifierRegistry. `owner`: changes made on behalf of this owner (device-exclusive
  // entries it asked for) are not reported to it.
  RangeSubscription(NotifierRegistry& registry, const void* va, size_t length,
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
  NotifierRegistry& registry_;
  uintptr_t va_;
  size_t length_;
  NotifierCallbacks user_;
  std::atomic<uint64_t> seq_{0};
  uint64_t id_ = 0;
};

}  // namespace hugemm

#endif  // HUGEMM_NOTIFY_H_
