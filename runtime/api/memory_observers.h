// The runtime's observers of its memory (memory_observer.h) behind one: the allocator's
// pools and the runtime's buffers report to it, it tells each observer in turn and keeps
// the ranges held, so an observer added late hears of them first.
//
// Thread safety: thread-safe. Reports take the observer list shared (ranges come and go
// on many threads at once); adding or removing an observer takes it exclusively, so an
// observer never misses a range nor hears of one twice.
#ifndef HUGEMM_RUNTIME_API_MEMORY_OBSERVERS_H_
#define HUGEMM_RUNTIME_API_MEMORY_OBSERVERS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "hugemm/memory_observer.h"

namespace hugemm::api_internal {

class MemoryObservers final : public MemoryObserver {
 public:
  // Tells every observer in order; when one refuses, those told before hear
  // MemoryRemoving (in reverse) and its error is returned.
  absl::Status MemoryAdded(const MemoryRange& range) override;
  // Tells every observer, the last added first.
  void MemoryRemoving(const MemoryRange& range) override;
  // Asks every observer, the last added first; the first refusal is returned. Once all
  // allowed it, the range is going: an observer added before its MemoryRemoving neither
  // hears of it then nor of its removal, which goes to the observers that were asked.
  absl::Status MayRemove(const MemoryRange& range) override;

  // Runs `first` (its error is returned, nothing added), then tells `observer` of every
  // range held and adds it, all while no range comes or goes. If it refuses one, it hears
  // MemoryRemoving for those it took, is not added, and its error is returned.
  // InvalidArgument for null or an observer already added; FailedPrecondition once closed.
  absl::Status Add(
      MemoryObserver* observer,
      absl::FunctionRef<absl::Status()> first = [] { return absl::OkStatus(); });
  // Removes it (without telling it anything); NotFound when it is not an observer.
  absl::Status Remove(MemoryObserver* observer);
  // From now on reports are ignored: the runtime is going, and memory that outlives it
  // (folios still pinned) is reported to nobody.
  void Close();

 private:
  struct Entry {
    MemoryObserver* observer;
    uint64_t added;  // generation_ when it was added
  };
  std::shared_mutex mu_;  // the list; std::shared_mutex is visible to ThreadSanitizer
  std::vector<Entry> observers_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // of the last observer added
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::mutex held_mu_;  // under mu_, shared or exclusive
  std::map<uintptr_t, MemoryRange> held_ ABSL_GUARDED_BY(held_mu_);
  // Ranges whose removal MayRemove allowed, until their MemoryRemoving: the generation of
  // the last observer asked.
  std::map<uintptr_t, uint64_t> going_ ABSL_GUARDED_BY(held_mu_);
};

}  // namespace hugemm::api_internal

#endif  // HUGEMM_RUNTIME_API_MEMORY_OBSERVERS_H_
