// The runtime's kernel pin table: one io_uring instance whose sparse registered-buffer
// table holds every mapping the runtime has, a slot per pool extent and per MapBuffer
// buffer (per 1 GiB of one), never per allocation.
//
// Two jobs, one table:
//   - PFN stability. Registering a buffer pins its pages FOLL_LONGTERM, so the kernel
//     never migrates them (memory offlining, compaction for gigantic pages) while a
//     device may hold their PFNs. Device-DAX never moves; it is registered when the
//     kernel takes it, for the second job only.
//   - Fixed buffers. A program's ring can clone the table (IORING_REGISTER_CLONE_BUFFERS)
//     and use READ_FIXED / WRITE_FIXED on any hugemm memory, finding the slot of an
//     address with Find in O(1) (runtime/io).
//
// It is the runtime's first MemoryObserver: it assigns a slot when a range is added and
// clears it before the range is unmapped. Slots are assigned also when pinning is off
// (RuntimeOptions::kernel_pins = false: no ring), so programs can still register the
// same memory in their own rings at the same indexes.
//
// The kernel's limits, each an error that names it and what to do:
//   - 16384 slots (IORING_MAX_REG_BUFFERS) per table;
//   - 1 GiB per registered buffer: larger ranges take one slot per GiB (an I/O must not
//     cross such a boundary to use a fixed buffer);
//   - RLIMIT_MEMLOCK for processes without CAP_IPC_LOCK: pinned bytes count against it,
//     and so do those of every other ring of the same user, in any process (the kernel
//     keeps one count per user; a ring just closed gives its share back a moment later).
//
// fork(): a child process shares the ring (the same kernel object) but none of the
// memory (MADV_DONTFORK). Its copy of the table never changes the ring: it refuses new
// memory, and its removals and its end leave the parent's pins where they are.
//
// Thread safety: thread-safe. MemoryAdded and MemoryRemoving may run on many threads at
// once; Find is lock-free.
#ifndef HUGEMM_RUNTIME_API_KERNEL_PIN_TABLE_H_
#define HUGEMM_RUNTIME_API_KERNEL_PIN_TABLE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/memory_observer.h"
#include "hugemm/os.h"
#include "runtime/api/slot_index.h"
#include "runtime/sys/fork_watch.h"

namespace hugemm::api_internal {

class KernelPinTable final : public MemoryObserver {
 public:
  static constexpr unsigned kMaxSlots = 1u << 14;        // IORING_MAX_REG_BUFFERS
  static constexpr size_t kMaxBuffer = size_t{1} << 30;  // io_uring's per-buffer limit

  struct Options {
    unsigned slots = kMaxSlots;  // 1 .. kMaxSlots
    bool pin = true;             // hold the ring; false: slots only
  };

  // The ring and its sparse table, through `os`. InvalidArgument for a bad slot count;
  // Unavailable when io_uring is refused (EPERM: disabled by sysctl), ResourceExhausted
  // when the kernel has no memory for the table; a refusal keeps the kernel's errno
  // (ErrnoOf).
  static absl::StatusOr<std::unique_ptr<KernelPinTable>> Create(Os& os, const Options& options);
  // Unregisters the table and closes the ring: the kernel drops every pin it holds
  // (those a program's cloned table still references stay until that table goes).
  ~KernelPinTable() override;
  KernelPinTable(const KernelPinTable&) = delete;
  KernelPinTable& operator=(const KernelPinTable&) = delete;

  // A slot per GiB of the range, registered when pinning. ResourceExhausted when the
  // slots run out or RLIMIT_MEMLOCK is reached, InvalidArgument for memory the kernel
  // cannot find (EFAULT), FailedPrecondition for memory it will not pin, each naming the
  // limit and what to do, and for any memory in a child of fork() (see above).
  // Device-DAX the kernel refuses is accepted without a slot.
  absl::Status MemoryAdded(const MemoryRange& range) override;
  void MemoryRemoving(const MemoryRange& range) override;

  // The slot whose buffer holds all of [va, va + length), or -1. O(1), lock-free.
  int Find(const void* va, size_t length) const {
    return index_.Find(reinterpret_cast<uintptr_t>(va), length == 0 ? 1 : length);
  }
  // Why `va` has no slot, for an error message.
  std::string WhyNoSlot(const void* va, size_t length) const;

  struct Slot {
    unsigned index = 0;
    std::byte* data = nullptr;
    size_t length = 0;
    bool registered = false;  // held by the ring (false: pinning off)
  };
  // The slots of the range starting at `data` (empty if none).
  std::vector<Slot> SlotsOf(const void* data) const;
  // The same without the heap, for a range's removal: its slots from the `from`-th on,
  // as many as `out` holds, copied into `out`; returns how many the range has in all.
  size_t SlotsOf(const void* data, size_t from, absl::Span<Slot> out) const;
  // Every slot the ring holds a buffer in. Exact while no range comes or goes (inside
  // Runtime::AddMemoryObserver's `first`).
  std::vector<unsigned> RegisteredSlots() const;

  struct Stats {
    unsigned capacity = 0;
    unsigned used = 0;
    size_t bytes = 0;         // in used slots
    size_t pinned_bytes = 0;  // of which registered with the kernel
    int ring_fd = -1;
  };
  Stats stats() const;
  // This process is a child of fork() of the one that made the table (fork_watch.h).
  bool InForkedChild() const { return fork_.InChild(); }
  const ForkWatch& fork_watch() const { return fork_; }
  // The ring holding the table, or -1 when pinning is off.
  int ring_fd() const { return ring_fd_; }
  unsigned capacity() const { return index_.capacity(); }

 private:
  KernelPinTable(Os& os, unsigned slots);
  std::string Explain(const absl::Status& status, size_t bytes) const;
  // The ring is the process's that made it, not this one's (a child of fork()).
  bool RingOfParent() const { return ring_fd_ >= 0 && InForkedChild(); }
  unsigned TakeFree() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const unsigned slot = free_[free_head_];
    free_head_ = (free_head_ + 1) % free_.size();
    --free_count_;
    return slot;
  }
  void GiveBack(unsigned slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    free_[(free_head_ + free_count_) % free_.size()] = slot;
    ++free_count_;
  }

  Os& os_;
  const ForkWatch fork_;  // the process that made the ring
  int ring_fd_ = -1;
  SlotIndex index_;
  mutable std::mutex mu_;  // std::mutex: visible to ThreadSanitizer
  // The free slots, a queue in a ring of every slot (giving one back never allocates):
  // the slot handed out is the one freed longest ago, so the index of a buffer just freed
  // stays empty in the kernel's table (a stale I/O through it is -EFAULT) until every slot
  // free before it has been handed out, rather than going at once to the next buffer,
  // which mmap may well place at the same address.
  std::vector<unsigned> free_ ABSL_GUARDED_BY(mu_);
  size_t free_head_ ABSL_GUARDED_BY(mu_) = 0;
  size_t free_count_ ABSL_GUARDED_BY(mu_) = 0;
  struct Held {
    MemoryRange range;
    std::vector<Slot> slots;
    std::string why_none;  // a range without slots: why
  };
  std::map<uintptr_t, Held> ranges_ ABSL_GUARDED_BY(mu_);  // by range start
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pinned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace hugemm::api_internal

#endif  // HUGEMM_RUNTIME_API_KERNEL_PIN_TABLE_H_
