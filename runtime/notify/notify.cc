// The notifier registry and the range subscription with its sequence word.
#include "hugemm/notify.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace hugemm {

absl::string_view InvalidateReasonName(InvalidateReason reason) {
  switch (reason) {
    case InvalidateReason::kUnmap:
      return "unmap";
    case InvalidateReason::kSplit:
      return "split";
    case InvalidateReason::kProtect:
      return "protect";
    case InvalidateReason::kExclusive:
      return "device-exclusive";
    case InvalidateReason::kRestore:
      return "restore";
  }
  return "?";
}

// ---- NotifierRegistry -------------------------------------------------------------------

uint64_t NotifierRegistry::Subscribe(const void* va, size_t length, NotifierCallbacks callbacks,
                                     const void* owner) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  const Subscription& s = subscriptions_
                              .emplace(id, Subscription{reinterpret_cast<uintptr_t>(va), length,
                                                        std::move(callbacks), owner})
                              .first->second;
  // Its end will reach this subscription: so must its start, or a sequence word read now
  // would look stable while the mapping is mid-change. A start that throws leaves no
  // subscription behind (its owner never learns the id).
  try {
    for (const Invalidation& inv : under_way_) {
      if (Hears(s, inv) && s.callbacks.invalidate_start) s.callbacks.invalidate_start(inv);
    }
  } catch (...) {
    subscriptions_.erase(id);
    throw;
  }
  return id;
}

absl::Status NotifierRegistry::Unsubscribe(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (subscriptions_.erase(id) == 0) {
    return absl::NotFoundError(absl::StrCat("no subscription ", id));
  }
  return absl::OkStatus();
}

// Room for the changes under way of a few threads at once: a change (an unmap, a free)
// then records itself without the heap, which may be what ran out when it is undone.
NotifierRegistry::NotifierRegistry() { under_way_.reserve(8); }

void NotifierRegistry::InvalidateStart(const Invalidation& inv) { Announce(true, inv); }

void NotifierRegistry::InvalidateEnd(const Invalidation& inv) { Announce(false, inv); }

namespace {

// The end of [va, va + length), saturated at the top of the address space: a length that
// would wrap means "to the end", never a range that ends below its start.
uintptr_t EndOf(uintptr_t va, size_t length) {
  return length > std::numeric_limits<uintptr_t>::max() - va ? std::numeric_limits<uintptr_t>::max()
                                                             : va + length;
}

}  // namespace

bool NotifierRegistry::Hears(const Subscription& s, const Invalidation& inv) {
  // An empty range overlaps nothing, not even a change around it.
  if (s.length == 0 || inv.length == 0) return false;
  if (s.va >= EndOf(inv.va, inv.length) || inv.va >= EndOf(s.va, s.length)) return false;
  return inv.owner == nullptr || s.owner != inv.owner;
}

void NotifierRegistry::Announce(bool start, const Invalidation& inv) {
  std::lock_guard<std::mutex> lock(mu_);
  if (start) {
    under_way_.push_back(inv);
  } else {
    auto same = [&inv](const Invalidation& u) {
      return u.va == inv.va && u.length == inv.length && u.reason == inv.reason &&
             u.owner == inv.owner;
    };
    auto it = std::find_if(under_way_.begin(), under_way_.end(), same);
    if (it != under_way_.end()) under_way_.erase(it);
  }
  for (const auto& [id, s] : subscriptions_) {
    if (!Hears(s, inv)) continue;
    const auto& cb = start ? s.callbacks.invalidate_start : s.callbacks.invalidate_end;
    if (cb) cb(inv);
  }
}

// ---- RangeSubscription ------------------------------------------------------------------

RangeSubscription::RangeSubscription(NotifierRegistry& registry, const void* va, size_t length,
                                     NotifierCallbacks callbacks, const void* owner)
    : registry_(registry),
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
    // The registry replays the start of a change under way to a new subscription, so an
    // end always follows a start here; the check keeps the count from ever borrowing
    // from the generation all the same.
    uint64_t seq = seq_.load(std::memory_order_relaxed);
    if (Stable(seq)) return;
    if (user_.invalidate_end) user_.invalidate_end(inv);
    while (!seq_.compare_exchange_weak(seq, seq - 1, std::memory_order_release,
                                       std::memory_order_relaxed)) {
    }
  };
  id_ = registry_.Subscribe(va, length, std::move(ours), owner);
}

RangeSubscription::~RangeSubscription() {
  // The registry announces under its lock, which Unsubscribe takes too.
  (void)registry_.Unsubscribe(id_);
}

}  // namespace hugemm
