#include "runtime/api/memory_observers.h"

#include <algorithm>
#include <cstdio>

#include "runtime/util/format.h"

namespace hugemm::api_internal {

absl::Status MemoryObservers::MemoryAdded(const MemoryRange& range) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (closed_) return absl::OkStatus();
  // A refusal, or an exception (the heap ran out), takes the range back from every
  // observer that had it.
  size_t told = 0;
  try {
    for (; told < observers_.size(); ++told) {
      if (absl::Status st = observers_[told].observer->MemoryAdded(range); !st.ok()) {
        while (told-- > 0) observers_[told].observer->MemoryRemoving(range);
        return st;
      }
    }
    std::lock_guard<std::mutex> held(held_mu_);
    held_[reinterpret_cast<uintptr_t>(range.data)] = range;
  } catch (...) {
    while (told-- > 0) observers_[told].observer->MemoryRemoving(range);
    throw;
  }
  return absl::OkStatus();
}

void MemoryObservers::MemoryRemoving(const MemoryRange& range) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (closed_) return;
  uint64_t told_up_to = generation_;  // every observer, unless the removal was asked
  {
    std::lock_guard<std::mutex> held(held_mu_);
    held_.erase(reinterpret_cast<uintptr_t>(range.data));
    if (auto it = going_.find(reinterpret_cast<uintptr_t>(range.data)); it != going_.end()) {
      told_up_to = it->second;
      going_.erase(it);
    }
  }
  // Those that allowed it; one added since never heard of the range (Add). The memory
  // goes whatever an observer does: one that throws (the heap ran out inside it) is
  // reported, without the heap, and the others are still told.
  for (size_t i = observers_.size(); i-- > 0;) {
    if (observers_[i].added > told_up_to) continue;
    try {
      observers_[i].observer->MemoryRemoving(range);
    } catch (...) {
      std::fputs(
          "hugemm: a memory observer failed (out of memory) while a range was removed; "
          "what it holds for the range may stay until it is closed\n",
          stderr);
    }
  }
}

absl::Status MemoryObservers::MayRemove(const MemoryRange& range) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  if (closed_) return absl::OkStatus();
  for (size_t i = observers_.size(); i-- > 0;) {
    if (absl::Status st = observers_[i].observer->MayRemove(range); !st.ok()) return st;
  }
  std::lock_guard<std::mutex> held(held_mu_);
  going_[reinterpret_cast<uintptr_t>(range.data)] = generation_;
  return absl::OkStatus();
}

absl::Status MemoryObservers::Add(MemoryObserver* observer,
                                  absl::FunctionRef<absl::Status()> first) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  if (observer == nullptr) return absl::InvalidArgumentError("memory observer is null");
  if (closed_) return absl::FailedPreconditionError("the runtime is closing");
  if (std::find_if(observers_.begin(), observers_.end(),
                   [&](const Entry& e) { return e.observer == observer; }) != observers_.end()) {
    return absl::InvalidArgumentError(
        hugemm::Format("memory observer %p is an observer already", observer));
  }
  if (absl::Status st = first(); !st.ok()) return st;
  std::vector<MemoryRange> told;
  std::lock_guard<std::mutex> held(held_mu_);  // nothing changes while the list is exclusive
  for (const auto& [start, range] : held_) {
    // A range whose removal the observers allowed is going: not the new one's to hear of
    // (it was not asked, and may refuse the thread the removal comes from).
    if (going_.contains(start)) continue;
    if (absl::Status st = observer->MemoryAdded(range); !st.ok()) {
      for (auto it = told.rbegin(); it != told.rend(); ++it) observer->MemoryRemoving(*it);
      return st;
    }
    told.push_back(range);
  }
  observers_.push_back({observer, ++generation_});
  return absl::OkStatus();
}

absl::Status MemoryObservers::Remove(MemoryObserver* observer) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  auto it = std::find_if(observers_.begin(), observers_.end(),
                         [&](const Entry& e) { return e.observer == observer; });
  if (it == observers_.end()) {
    return absl::NotFoundError(hugemm::Format("%p is not a memory observer", observer));
  }
  observers_.erase(it);
  return absl::OkStatus();
}

void MemoryObservers::Close() {
  std::unique_lock<std::shared_mutex> lock(mu_);
  closed_ = true;
}

}  // namespace hugemm::api_internal
