// The soak's insides: the slots the threads share and one thread's work on them.
#ifndef HUGEMM_SOAK_STRESS_WORKER_H_
#define HUGEMM_SOAK_STRESS_WORKER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "hugemm/gup.h"
#include "hugemm/runtime.h"
#include "soak/stress.h"

namespace hugemm::soak::stress_internal {

enum class SlotKind { kEmpty, kMapped, kAllocated, kExternal };
enum class Output { kPages, kSpans, kSegments, kHandle };

struct PinRecord {
  Output output = Output::kPages;
  RefKind kind = RefKind::kPin;
  size_t slot = 0;
  uint64_t generation = 0;  // the slot's when pinned
  uintptr_t start = 0;      // the pinned pages: [start, start + pages * 4K)
  size_t pages = 0;
  uintptr_t asked = 0;  // the range asked for (kSegments: what UnpinRange takes)
  size_t asked_length = 0;
  std::vector<PageRef> refs;
  std::vector<FolioSpan> spans;
  PinnedRange handle;
};

// A buffer, or a region the soak mapped itself and registers as external memory.
struct Slot {
  // Shared: anything that uses the memory (pin, unpin, split, protect, translate).
  // Exclusive: what changes what the slot is (create, free, register, unregister) or
  // needs it still (the audit).
  std::shared_mutex mu;
  SlotKind kind = SlotKind::kEmpty;
  uint64_t generation = 0;
  std::byte* data = nullptr;
  size_t size = 0;
  bool registered = false;  // kExternal
  uint64_t external_id = 0;
  std::mutex pins_mu;  // the pins of the current generation, whoever holds them
  std::set<const PinRecord*> pins;
};

struct Shared {
  Shared(Runtime& runtime, const StressConfig& c) : rt(runtime), config(c) {}
  // Records a broken promise (the first kMaxViolations of them).
  void Violation(const std::string& what);

  Runtime& rt;
  const StressConfig& config;
  std::vector<std::unique_ptr<Slot>> slots;  // buffers first, then external regions
  size_t buffer_slots = 0;
  // Whether the kernel shows this process PFNs (CAP_SYS_ADMIN). Without them DMA segments
  // and registering external memory are refused, as documented.
  bool pfns_known = true;
  std::atomic<size_t> buffer_bytes{0};
  std::atomic<bool> stop{false};
  // A worker's own records (canaries, pins) could not grow: the run cannot be done.
  std::atomic<bool> out_of_memory{false};
  std::mutex violations_mu;
  std::vector<std::string> violations;
};

class Worker {
 public:
  Worker(Shared& shared, int thread);
  // Until shared.stop, then releases every pin it holds. When its own records cannot
  // grow (std::bad_alloc) it sets shared.out_of_memory and shared.stop.
  void Run();

  std::map<std::string, uint64_t> by_kind;
  std::map<std::string, uint64_t> refusals;
  uint64_t canaries_checked = 0;
  uint64_t audits = 0;

 private:
  void Loop();
  size_t Below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }
  Slot& PickSlot(size_t* index);
  // An expected refusal is counted; anything else is a violation.
  void Refused(const char* op, const absl::Status& st, std::initializer_list<absl::StatusCode> ok);

  void Create(size_t i, Slot& s);
  void Free(size_t i, Slot& s);
  void Pin(size_t i, Slot& s);
  void Unpin();
  void Split(Slot& s);
  void Protect(Slot& s);
  void Translate(Slot& s);
  void Subscribe(Slot& s);
  void Audit(size_t i, Slot& s);
  void Register(size_t i, Slot& s);
  // The allocator's Shrink: every idle thread's cache back to its pool, and the pools'
  // wholly free extents back to the kernel, while the other threads work on.
  void Trim();

  // Canaries: this thread's word in each page it pinned, the last one it wrote there.
  void WriteCanaries(const PinRecord& p);
  void CheckCanaries(const PinRecord& p);
  uint64_t* CanaryAt(uintptr_t page) const { return reinterpret_cast<uint64_t*>(page) + thread_; }

  Shared& s_;
  const int thread_;
  std::mt19937_64 rng_;
  uint64_t next_canary_ = 1;
  std::map<uintptr_t, std::pair<uint64_t, int>> canaries_;  // page -> last word, pins on it
  std::vector<std::unique_ptr<PinRecord>> pins_;
  std::unique_ptr<RangeSubscription> sub_;
  int sub_ops_ = 0;
  std::atomic<int64_t> starts_{0}, ends_{0};
};

}  // namespace hugemm::soak::stress_internal

#endif  // HUGEMM_SOAK_STRESS_WORKER_H_
