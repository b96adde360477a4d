// The kernel pin table: slots assigned per range, registered through the Os.
#include "runtime/api/kernel_pin_table.h"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "hugemm/page_size.h"
#include "runtime/sys/files.h"
#include "runtime/sys/status.h"
#include "runtime/util/format.h"

namespace hugemm::api_internal {
namespace {

constexpr const char* kTurnOff = "or open the runtime with kernel_pins off";

// RLIMIT_MEMLOCK's soft limit as /proc/self/limits gives it: "8 MiB", "unlimited", or ""
// when it cannot be read.
std::string MemlockLimit(Os& os) {
  absl::StatusOr<std::string> limits = os.ReadFile("/proc/self/limits");
  if (!limits.ok()) return "";
  for (absl::string_view line : absl::StrSplit(*limits, '\n')) {
    if (!absl::ConsumePrefix(&line, "Max locked memory")) continue;
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (words.empty()) return "";
    uint64_t bytes = 0;
    if (words[0] == "unlimited") return "unlimited";
    return absl::SimpleAtoi(words[0], &bytes) ? HumanBytes(bytes) : "";
  }
  return "";
}

// What this process has pinned (VmPin in /proc/self/status: its io_uring buffers among
// others), or "" when it cannot be read.
std::string ProcessPinned(Os& os) {
  absl::StatusOr<uint64_t> bytes = sys::ReadKibField(os, "/proc/self/status", "VmPin");
  return bytes.ok() ? HumanBytes(*bytes) : "";
}

}  // namespace

KernelPinTable::KernelPinTable(Os& os, unsigned slots) : os_(os), index_(slots) {}

absl::StatusOr<std::unique_ptr<KernelPinTable>> KernelPinTable::Create(Os& os,
                                                                       const Options& options) {
  if (options.slots == 0 || options.slots > kMaxSlots) {
    return absl::InvalidArgumentError(absl::StrCat("kernel pin table of ", options.slots,
                                                   " slots: the kernel allows 1 to ", kMaxSlots,
                                                   " registered buffers per ring"));
  }
  std::unique_ptr<KernelPinTable> t(new KernelPinTable(os, options.slots));
  {
    std::lock_guard<std::mutex> lock(t->mu_);
    t->free_.resize(options.slots);
    for (unsigned i = 0; i < options.slots; ++i) t->GiveBack(i);
  }
  if (!options.pin) return t;
  // The statuses keep the kernel's errno (ErrnoOf) under their own codes: the C API
  // answers with it.
  absl::StatusOr<int> ring = os.IoUringSetup(1);
  if (!ring.ok()) {
    return sys::WithErrno(
        absl::UnavailableError(absl::StrCat("kernel pin table: ", t->Explain(ring.status(), 0))),
        ErrnoOf(ring.status()));
  }
  if (absl::Status st = os.IoUringRegisterSparseBuffers(*ring, options.slots); !st.ok()) {
    (void)os.Close(*ring);
    const int err = ErrnoOf(st);
    return sys::WithErrno(absl::Status(err == ENOMEM  ? absl::StatusCode::kResourceExhausted
                                       : err == EPERM ? absl::StatusCode::kUnavailable
                                                      : absl::StatusCode::kFailedPrecondition,
                                       absl::StrCat("kernel pin table: ", t->Explain(st, 0))),
                          err);
  }
  t->ring_fd_ = *ring;
  return t;
}

KernelPinTable::~KernelPinTable() {
  if (ring_fd_ < 0) return;
  if (RingOfParent()) {
    // Unregistering would drop the parent's pins: only this process's descriptor goes.
    (void)os_.Close(ring_fd_);
    return;
  }
  // Closing the ring would drop the pins too; unregistering first makes it immediate
  // rather than whenever the ring's last reference goes.
  (void)os_.IoUringUnregisterBuffers(ring_fd_);
  (void)os_.Close(ring_fd_);
}

std::string KernelPinTable::Explain(const absl::Status& status, size_t bytes) const {
  std::string why;
  switch (ErrnoOf(status)) {
    case EPERM:
      why = absl::StrCat(
          "; io_uring is disabled for this process (sysctl kernel.io_uring_disabled): "
          "enable it, ",
          kTurnOff);
      break;
    case ENOMEM: {
      const std::string limit = MemlockLimit(os_);
      const std::string process = bytes == 0 ? "" : ProcessPinned(os_);
      std::lock_guard<std::mutex> lock(mu_);
      // Nothing to pin yet: the ring's own memory counts against the limit too. The kernel
      // checks the limit against what all of the user's rings hold, not this runtime's.
      const std::string what =
          bytes == 0
              ? std::string(" is too low for the io_uring ring that holds the pins")
              : absl::StrCat(" is too low to pin ", HumanBytes(bytes), " more beside the ",
                             HumanBytes(pinned_bytes_),
                             " pinned by this runtime; io_uring counts the buffers of every "
                             "ring of this user, in any process",
                             process.empty()
                                 ? ""
                                 : absl::StrCat(" (this process has ", process, " pinned, VmPin)"));
      why = absl::StrCat("; RLIMIT_MEMLOCK", limit.empty() ? "" : absl::StrCat(" (", limit, ")"),
                         what,
                         ": raise it (ulimit -l, systemd's LimitMEMLOCK=) or grant "
                         "CAP_IPC_LOCK, ",
                         kTurnOff);
      break;
    }
    case EFAULT:
      why = "; part of the memory is not mapped";
      break;
    case EOPNOTSUPP:
      why = "; the kernel will not long-term pin this kind of memory";
      break;
  }
  return absl::StrCat(status.message(), why);
}

absl::Status KernelPinTable::MemoryAdded(const MemoryRange& range) {
  const auto start = reinterpret_cast<uintptr_t>(range.data);
  if (range.data == nullptr || range.length == 0 || start % kPageSize4K != 0 ||
      range.length % kPageSize4K != 0) {
    return absl::InvalidArgumentError(hugemm::Format(
        "kernel pin of [0x%x, +%u): not a non-empty page-aligned range", start, range.length));
  }
  if (RingOfParent()) {
    return absl::FailedPreconditionError(hugemm::Format(
        "kernel pin of [0x%x, +%u): the kernel pin table's ring belongs to process %d, of "
        "which this process is a fork() child; a child must open a runtime of its own",
        start, range.length, fork_.pid()));
  }
  const size_t pieces = (range.length + kMaxBuffer - 1) / kMaxBuffer;
  Held held{.range = range};
  held.slots.reserve(pieces);  // no allocation while slots are out of the queue
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ranges_.count(start) != 0) {
      return absl::AlreadyExistsError(
          hugemm::Format("kernel pin table: 0x%x is held already", start));
    }
    if (free_count_ < pieces) {
      const std::string why = hugemm::Format(
          "kernel pin table full: %u of %u io_uring registered-buffer slots in use, %u more "
          "needed for %s at 0x%x (the kernel allows %u per ring; each MapBuffer buffer and "
          "each pool extent takes one per GiB or part of one, however small): free "
          "buffers, call Allocator::Shrink, or map fewer, larger buffers",
          capacity() - free_count_, capacity(), pieces, HumanBytes(range.length), start, kMaxSlots);
      if (ring_fd_ >= 0) return absl::ResourceExhaustedError(absl::StrCat(why, ", ", kTurnOff));
      // Nothing is pinned: the memory is fine without a slot, only not a fixed buffer.
      held.why_none = why;
      ranges_.emplace(start, std::move(held));
      return absl::OkStatus();
    }
    for (size_t i = 0; i < pieces; ++i) {
      const size_t off = i * kMaxBuffer;
      held.slots.push_back(Slot{.index = TakeFree(),
                                .data = range.data + off,
                                .length = std::min(kMaxBuffer, range.length - off)});
    }
  }
  // From here the slots taken are given back on every way out, a throw's too (the heap
  // ran out): emptied in the ring, out of the index, back in the queue.
  size_t inserted = 0;
  try {
    // The system calls outside the lock: other ranges come and go meanwhile.
    absl::Status failed;
    size_t done = 0;
    if (ring_fd_ >= 0) {
      for (; done < held.slots.size(); ++done) {
        const Slot& s = held.slots[done];
        const iovec iov{s.data, s.length};
        failed = os_.IoUringUpdateBuffers(ring_fd_, s.index, {&iov, 1});
        if (!failed.ok()) break;
      }
    }
    if (!failed.ok()) {
      for (size_t i = 0; i < done; ++i) {
        const iovec empty{nullptr, 0};
        (void)os_.IoUringUpdateBuffers(ring_fd_, held.slots[i].index, {&empty, 1});
      }
      const std::string why = Explain(failed, range.length);
      std::lock_guard<std::mutex> lock(mu_);
      for (const Slot& s : held.slots) GiveBack(s.index);
      held.slots.clear();
      if (range.backing == BackingKind::kDevDax) {
        // Device memory never moves and needs no kernel pin: it is only no fixed buffer.
        held.why_none = absl::StrCat("the kernel did not register it: ", why);
        ranges_.emplace(start, std::move(held));
        return absl::OkStatus();
      }
      const int err = ErrnoOf(failed);
      const absl::StatusCode code = err == ENOMEM || err == EAGAIN
                                        ? absl::StatusCode::kResourceExhausted
                                    : err == EFAULT ? absl::StatusCode::kInvalidArgument
                                                    : absl::StatusCode::kFailedPrecondition;
      return absl::Status(
          code, hugemm::Format("kernel pin of %s at 0x%x (%s pages): %s", HumanBytes(range.length),
                               start, PageSizeName(range.page_size), why));
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (Slot& s : held.slots) {
      s.registered = ring_fd_ >= 0;
      ++inserted;
      index_.Insert(s.index, reinterpret_cast<uintptr_t>(s.data), s.length);
    }
    ranges_.emplace(start, held);
    for (const Slot& s : held.slots) {
      bytes_ += s.length;
      if (s.registered) pinned_bytes_ += s.length;
    }
    return absl::OkStatus();
  } catch (...) {
    for (const Slot& s : held.slots) {
      if (ring_fd_ < 0) break;
      const iovec empty{nullptr, 0};
      (void)os_.IoUringUpdateBuffers(ring_fd_, s.index, {&empty, 1});
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < inserted; ++i) index_.Erase(held.slots[i].index);
    for (const Slot& s : held.slots) GiveBack(s.index);
    throw;
  }
}

void KernelPinTable::MemoryRemoving(const MemoryRange& range) {
  Held held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ranges_.find(reinterpret_cast<uintptr_t>(range.data));
    if (it == ranges_.end()) return;
    held = std::move(it->second);
    ranges_.erase(it);
    for (const Slot& s : held.slots) {
      index_.Erase(s.index);
      bytes_ -= s.length;
      if (s.registered) pinned_bytes_ -= s.length;
    }
  }
  // The kernel lets the pages go once no request uses them; the slot is free only after.
  // A child of fork() leaves the ring alone: the pins are its parent's.
  for (const Slot& s : held.slots) {
    if (!s.registered || RingOfParent()) continue;
    const iovec empty{nullptr, 0};
    (void)os_.IoUringUpdateBuffers(ring_fd_, s.index, {&empty, 1});
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const Slot& s : held.slots) GiveBack(s.index);
}

std::vector<KernelPinTable::Slot> KernelPinTable::SlotsOf(const void* data) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranges_.find(reinterpret_cast<uintptr_t>(data));
  return it == ranges_.end() ? std::vector<Slot>{} : it->second.slots;
}

size_t KernelPinTable::SlotsOf(const void* data, size_t from, absl::Span<Slot> out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranges_.find(reinterpret_cast<uintptr_t>(data));
  if (it == ranges_.end()) return 0;
  const std::vector<Slot>& slots = it->second.slots;
  for (size_t i = from, j = 0; i < slots.size() && j < out.size(); ++i, ++j) out[j] = slots[i];
  return slots.size();
}

std::vector<unsigned> KernelPinTable::RegisteredSlots() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<unsigned> out;
  for (const auto& [start, held] : ranges_) {
    for (const Slot& s : held.slots) {
      if (s.registered) out.push_back(s.index);
    }
  }
  return out;
}

std::string KernelPinTable::WhyNoSlot(const void* va, size_t length) const {
  const auto p = reinterpret_cast<uintptr_t>(va);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ranges_.upper_bound(p);
  if (it != ranges_.begin()) {
    const Held& h = std::prev(it)->second;
    const auto start = reinterpret_cast<uintptr_t>(h.range.data);
    if (p - start < h.range.length) {
      if (!h.why_none.empty()) return h.why_none;
      if (length > h.range.length - (p - start)) {  // no sum: a huge length would wrap
        return hugemm::Format("[0x%x, +%u) runs past the end of its hugemm mapping [0x%x, +%u)", p,
                              length, start, h.range.length);
      }
      return hugemm::Format(
          "[0x%x, +%u) crosses a 1 GiB boundary of its mapping at 0x%x: io_uring registers "
          "at most 1 GiB per buffer, so a fixed-buffer I/O must lie within one GiB",
          p, length, start);
    }
  }
  return hugemm::Format("0x%x is not memory of this hugemm runtime (Allocate or MapBuffer)", p);
}

KernelPinTable::Stats KernelPinTable::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {.capacity = capacity(),
          .used = static_cast<unsigned>(capacity() - free_count_),
          .bytes = bytes_,
          .pinned_bytes = pinned_bytes_,
          .ring_fd = ring_fd_};
}

}  // namespace hugemm::api_internal
