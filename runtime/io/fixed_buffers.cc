// A program ring's registered-buffer table, slot for slot the runtime's kernel pin table:
// cloned from it where the kernel can, registered as iovecs elsewhere, and kept equal by
// a memory observer that runs after the kernel pin table hears of a range and before it
// hears the range go.
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <iterator>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "hugemm/io.h"
#include "runtime/api/kernel_pin_table.h"
#include "runtime/sys/status.h"
#include "runtime/util/format.h"

namespace hugemm {
namespace {

using api_internal::KernelPinTable;

// Why memory goes into a program's table as iovecs (pinned again) rather than by clone.
std::string WhyIovecs(FixedBufferMode mode, bool runtime_pins) {
  if (!runtime_pins) return "the runtime's kernel pins are off, so it has no table to clone";
  if (mode == FixedBufferMode::kClone) {
    return "this kernel clones whole tables only (Linux 6.12), so memory added after the clone "
           "is registered again";
  }
  return "the table is made of iovecs: FixedBufferMode::kIovec (HUGEMM_IO_IOVEC in C), or a "
         "kernel without IORING_REGISTER_CLONE_BUFFERS";
}

// `why_iovecs`: WhyIovecs of the table the failed call registered memory into, or empty
// for a call that pinned nothing (an ENOMEM there is not RLIMIT_MEMLOCK's).
absl::Status Explain(const absl::Status& st, int ring_fd, const std::string& why_iovecs) {
  std::string why;
  switch (const int err = ErrnoOf(st)) {
    case EBADF:
    case EOPNOTSUPP:
      // The caller's descriptor, not the kernel's lack: a bad argument, errno kept.
      return sys::WithErrno(
          absl::InvalidArgumentError(
              absl::StrCat(st.message(), "; descriptor ", ring_fd, " is not an io_uring instance")),
          err);
    case ENOMEM:
      if (why_iovecs.empty()) break;
      why = absl::StrCat(
          "; RLIMIT_MEMLOCK is too low to register the memory in this ring as well (", why_iovecs,
          "; io_uring counts the buffers of every ring of this user, in any "
          "process): raise it (ulimit -l) or grant CAP_IPC_LOCK");
      break;
    case ENXIO:
      why = "; the ring's buffer table is gone (unregistered behind hugemm's back)";
      break;
    case EFAULT:
      // io_uring pins what it registers for writing.
      why =
          "; the kernel cannot pin that memory for writing: the program unmapped it, or "
          "it is a buffer mapped without write (BufferOptions::prot), which goes into "
          "rings only by clone";
      break;
    case EEXIST:
      // io_uring_register refuses every thread but the submitter of such a ring.
      why = absl::StrCat("; ring ", ring_fd,
                         " was made with IORING_SETUP_SINGLE_ISSUER and this thread is not its "
                         "submitter: allocate, free and detach from the submitting thread, or make "
                         "the ring without that flag");
      break;
  }
  return sys::AppendToMessage(st, why);
}

}  // namespace

// The runtime's memory observer for one program ring, and which slots of the ring's table
// hold the runtime's memory. The runtime's kernel pin table also holds memory that is no
// observed range (RegisterExternal's): its slots are never in the ring's table, and a
// whole-table clone that brought them along has them emptied.
class FixedBuffers::Follower final : public MemoryObserver {
 public:
  Follower(FixedBuffers& fb, unsigned slots)
      : fb_(fb), present_(std::make_unique<std::atomic<bool>[]>(slots)) {}

  // Whether the ring's table holds the runtime's memory in `slot`: read by Find with no
  // lock; set after the slot is filled, cleared before it is emptied.
  bool present(int slot) const { return present_[slot].load(std::memory_order_acquire); }
  void set_present(unsigned slot, bool present) {
    present_[slot].store(present, std::memory_order_release);
  }

  // Slots a whole-table clone brought into the ring's table that no observed range has
  // claimed yet (guarded by the FixedBuffers' mutex).
  std::set<unsigned> cloned;
  // The thread attaching, while Runtime::AddMemoryObserver tells it of the ranges held at
  // the clone: a slot in `cloned` filled from that thread then holds that very range. No
  // range comes or goes until that call returns, so a fill from another thread is of a
  // range that came later, into a slot the clone had filled with something else.
  std::thread::id replayer;

  absl::Status MemoryAdded(const MemoryRange& range) override {
    const std::vector<KernelPinTable::Slot> slots =
        fb_.runtime_.kernel_pin_table().SlotsOf(range.data);
    for (size_t i = 0; i < slots.size(); ++i) {
      if (absl::Status st = fb_.Fill(slots[i].index, slots[i].data, slots[i].length); !st.ok()) {
        while (i-- > 0) fb_.Empty(slots[i].index);
        return sys::Annotate(st, absl::StrCat("fixed buffers of ring ", fb_.ring_fd_));
      }
    }
    return absl::OkStatus();
  }

  void MemoryRemoving(const MemoryRange& range) override {
    // A few slots at a time, without the heap: this runs as memory goes, which may be
    // when the heap ran out, and cannot fail.
    KernelPinTable::Slot batch[8];
    for (size_t from = 0;; from += std::size(batch)) {
      const size_t total = fb_.runtime_.kernel_pin_table().SlotsOf(range.data, from, batch);
      for (size_t i = 0; from + i < total && i < std::size(batch); ++i) fb_.Empty(batch[i].index);
      if (from + std::size(batch) >= total) break;
    }
  }

  absl::Status MayRemove(const MemoryRange& range) override {
    for (const KernelPinTable::Slot& s : fb_.runtime_.kernel_pin_table().SlotsOf(range.data)) {
      if (present(static_cast<int>(s.index))) return fb_.MayEmpty();
    }
    return absl::OkStatus();
  }

 private:
  FixedBuffers& fb_;
  std::unique_ptr<std::atomic<bool>[]> present_;
};

FixedBuffers::FixedBuffers(Runtime& runtime, int ring_fd, int held_fd)
    : runtime_(runtime),
      ring_fd_(ring_fd),
      held_fd_(held_fd),
      follower_(std::make_unique<Follower>(*this, runtime.kernel_pin_table().capacity())) {}

absl::StatusOr<std::unique_ptr<FixedBuffers>> FixedBuffers::Attach(
    Runtime& runtime, int ring_fd, const FixedBufferOptions& options) {
  if (ring_fd < 0) {
    return absl::InvalidArgumentError(absl::StrCat("fixed buffers: bad ring descriptor ", ring_fd));
  }
  if (options.mode != FixedBufferMode::kAuto && options.mode != FixedBufferMode::kClone &&
      options.mode != FixedBufferMode::kIovec) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fixed buffers for ring ", ring_fd, ": unknown mode ", static_cast<int>(options.mode)));
  }
  const KernelPinTable& table = runtime.kernel_pin_table();
  if (table.InForkedChild()) {
    // A clone would give the child's ring the parent's pages; iovecs would name memory the
    // child does not have.
    return absl::FailedPreconditionError(absl::StrCat(
        "fixed buffers for ring ", ring_fd,
        ": this process is a fork() child of the one that opened the runtime and has none of "
        "its memory; open a runtime of its own"));
  }
  Os& os = *runtime.options().os;
  if (options.mode == FixedBufferMode::kClone && table.ring_fd() < 0) {
    return absl::FailedPreconditionError(
        "fixed buffers by clone: the runtime's kernel pins are off, so it has no table to "
        "clone; open it with kernel_pins, or use FixedBufferMode::kIovec (HUGEMM_IO_IOVEC in "
        "C)");
  }
  // Every call below and after goes through a descriptor of the attachment's own, so the
  // table stays the ring's whatever becomes of the program's descriptor: closed, or its
  // number reused by another ring.
  absl::StatusOr<int> held = os.Duplicate(ring_fd);
  if (!held.ok()) {
    return Explain(sys::Annotate(held.status(), "fixed buffers"), ring_fd, "");
  }
  const int held_fd = *held;
  std::unique_ptr<FixedBuffers> fb;
  try {
    fb.reset(new FixedBuffers(runtime, ring_fd, held_fd));  // it closes held_fd from now on
  } catch (...) {
    (void)os.Close(held_fd);
    throw;
  }
  bool registered = false;
  const auto busy = [&] {
    return sys::WithErrno(absl::FailedPreconditionError(absl::StrCat(
                              "fixed buffers: ring ", ring_fd,
                              " has a registered-buffer table already; hugemm gives it one: attach "
                              "before registering buffers, or unregister them first")),
                          EBUSY);
  };
  // While no range comes or goes: the clone then holds exactly the slots registered now.
  const auto make_table = [&]() -> absl::Status {
    if (options.mode != FixedBufferMode::kIovec && table.ring_fd() >= 0) {
      absl::Status st = os.IoUringCloneBuffers(held_fd, table.ring_fd(), {});
      if (st.ok()) {
        registered = true;
        fb->mode_ = FixedBufferMode::kClone;
        std::lock_guard<std::mutex> lock(fb->mu_);
        for (unsigned slot : table.RegisteredSlots()) fb->follower_->cloned.insert(slot);
        fb->follower_->replayer = std::this_thread::get_id();
        return absl::OkStatus();
      }
      if (ErrnoOf(st) == EBUSY) return busy();
      if (ErrnoOf(st) != EINVAL) return Explain(sys::Annotate(st, "fixed buffers"), ring_fd, "");
      if (options.mode == FixedBufferMode::kClone) {
        return absl::UnimplementedError(absl::StrCat(
            "fixed buffers by clone: this kernel has no IORING_REGISTER_CLONE_BUFFERS "
            "(Linux 6.12): ",
            st.message(),
            "; use FixedBufferMode::kIovec or kAuto (HUGEMM_IO_IOVEC or HUGEMM_IO_AUTO "
            "in C)"));
      }
    }
    absl::Status st = os.IoUringRegisterSparseBuffers(held_fd, table.capacity());
    if (ErrnoOf(st) == EBUSY) return busy();
    if (!st.ok()) return Explain(sys::Annotate(st, "fixed buffers"), ring_fd, "");
    registered = true;
    fb->mode_ = FixedBufferMode::kIovec;
    return absl::OkStatus();
  };
  // A refusal, or an exception (the heap ran out), leaves the ring without a table.
  absl::Status added;
  try {
    added = runtime.AddMemoryObserver(fb->follower_.get(), make_table);
  } catch (...) {
    if (registered) (void)os.IoUringUnregisterBuffers(held_fd);
    throw;
  }
  if (!added.ok()) {
    if (registered) (void)os.IoUringUnregisterBuffers(held_fd);
    return added;
  }
  fb->attached_ = true;
  // What the clone brought that is no range of the runtime's (external memory) leaves the
  // ring's table, so its slot is free for the next range and its frames are not held.
  std::lock_guard<std::mutex> lock(fb->mu_);
  fb->follower_->replayer = std::thread::id();
  for (unsigned slot : fb->follower_->cloned) {
    const iovec empty{nullptr, 0};
    (void)os.IoUringUpdateBuffers(held_fd, slot, {&empty, 1});
  }
  fb->follower_->cloned.clear();
  return fb;
}

FixedBuffers::~FixedBuffers() {
  Os& os = *runtime_.options().os;
  // In a child of fork() the ring is its parent's as well (one kernel object, whose table
  // the parent still uses), and the runtime is inert there (runtime.h): nothing changes
  // but the child's copy of the descriptor.
  if (attached_ && !runtime_.kernel_pin_table().InForkedChild()) {
    (void)runtime_.RemoveMemoryObserver(follower_.get());
    // A program that closed its ring first meant it to end, and the close below ends it
    // as the program's would have: its requests cancelled, its table dropped. Unregistering
    // first could instead wait (before 6.13) for a request the program can no longer reap.
    // Where kcmp cannot tell, the table is unregistered.
    absl::StatusOr<bool> still_held = os.SameFile(ring_fd_, held_fd_);
    if (!still_held.ok() || *still_held) {
      // ENXIO: the table is gone already. Other failures (a single-issuer ring detached
      // from a thread not its submitter, which leaves the table and the memory it pins
      // registered) are the program's to hear of, and nothing here returns a status.
      if (absl::Status st = os.IoUringUnregisterBuffers(held_fd_);
          !st.ok() && ErrnoOf(st) != ENXIO) {
        std::fprintf(stderr, "hugemm: unregistering the fixed buffers of ring %d: %s\n", ring_fd_,
                     std::string(Explain(st, ring_fd_, "").message()).c_str());
      }
    }
  }
  // The ring ends here if the program closed its descriptors of it already.
  (void)os.Close(held_fd_);
}

absl::Status FixedBuffers::Fill(unsigned slot, const void* data, size_t length) {
  Os& os = *runtime_.options().os;
  const bool runtime_pins = runtime_.kernel_pin_table().ring_fd() >= 0;
  std::lock_guard<std::mutex> lock(mu_);
  if (filled_.count(slot) != 0) return absl::OkStatus();
  // A slot the clone brought holds this range while the held ranges are told; after that
  // it held something else (external memory since unregistered): it is filled anew.
  if (follower_->cloned.erase(slot) != 0 && follower_->replayer == std::this_thread::get_id()) {
    filled_.insert(slot);
    follower_->set_present(slot, true);
    return absl::OkStatus();
  }
  if (mode_ == FixedBufferMode::kClone && ranged_clones_ != 0) {
    // One slot of the runtime's table into the same slot of ours (Linux 6.13).
    const int src = runtime_.kernel_pin_table().ring_fd();
    absl::Status st = os.IoUringCloneBuffers(
        held_fd_, src, {.src_slot = slot, .dst_slot = slot, .slots = 1, .replace = true});
    if (st.ok()) {
      ranged_clones_ = 1;
      filled_.insert(slot);
      owed_.erase(slot);  // the clone replaced what the slot still held
      EmptyOwed();
      follower_->set_present(slot, true);
      return absl::OkStatus();
    }
    // 6.12 clones whole tables only, and says so with EBUSY (it checks that the
    // destination has no table before it reads the arguments) or EINVAL (a range into a
    // ring without one): register the rest as iovecs.
    const int err = ErrnoOf(st);
    if ((err != EINVAL && err != EBUSY) || ranged_clones_ == 1) return Explain(st, ring_fd_, "");
    ranged_clones_ = 0;
  }
  const iovec iov{const_cast<void*>(data), length};
  if (absl::Status st = os.IoUringUpdateBuffers(held_fd_, slot, {&iov, 1}); !st.ok()) {
    return Explain(st, ring_fd_, WhyIovecs(mode_, runtime_pins));
  }
  filled_.insert(slot);
  owed_.erase(slot);  // the update replaced what the slot still held
  EmptyOwed();
  follower_->set_present(slot, true);
  return absl::OkStatus();
}

void FixedBuffers::Empty(unsigned slot) {
  std::lock_guard<std::mutex> lock(mu_);
  follower_->set_present(slot, false);
  if (filled_.erase(slot) == 0) return;
  const iovec empty{nullptr, 0};
  absl::Status st = runtime_.options().os->IoUringUpdateBuffers(held_fd_, slot, {&empty, 1});
  if (st.ok() || ErrnoOf(st) == ENXIO) return;  // ENXIO: the table is gone already
  // Nothing hears a status here: the memory is going (its last pin dropped on this thread)
  // and the ring keeps the frames until the slot is emptied from a thread it accepts.
  owed_.insert(slot);
  std::fprintf(stderr,
               "hugemm: ring %d keeps buffer slot %u and the memory it pins until the ring's "
               "table next changes on a thread it accepts, or the detach: %s\n",
               ring_fd_, slot, std::string(Explain(st, ring_fd_, "").message()).c_str());
}

absl::Status FixedBuffers::MayEmpty() {
  // An update of no slot: the kernel refuses a thread that is not a single-issuer ring's
  // submitter (EEXIST) before it looks at the arguments, and refuses the empty update
  // itself (EINVAL) from every other thread. Nothing changes either way.
  absl::Status st = runtime_.options().os->IoUringUpdateBuffers(held_fd_, 0, {});
  if (ErrnoOf(st) == EEXIST) {
    return Explain(ErrnoStatus(EEXIST, absl::StrCat("fixed buffers: ring ", ring_fd_,
                                                    " would keep the memory (and its huge pages) "
                                                    "registered")),
                   ring_fd_, "");
  }
  std::lock_guard<std::mutex> lock(mu_);
  EmptyOwed();
  return absl::OkStatus();
}

void FixedBuffers::EmptyOwed() {
  for (auto it = owed_.begin(); it != owed_.end();) {
    const iovec empty{nullptr, 0};
    absl::Status st = runtime_.options().os->IoUringUpdateBuffers(held_fd_, *it, {&empty, 1});
    if (!st.ok() && ErrnoOf(st) != ENXIO) return;  // this thread may not either
    it = owed_.erase(it);
  }
}

int FixedBuffers::Find(const void* addr, size_t length) const {
  const int slot = runtime_.kernel_pin_table().Find(addr, length);
  return slot >= 0 && follower_->present(slot) ? slot : -1;
}

absl::StatusOr<int> FixedBuffers::IndexOf(const void* addr, size_t length) const {
  const int slot = Find(addr, length);
  if (slot >= 0) return slot;
  if (const int held = runtime_.kernel_pin_table().Find(addr, length); held >= 0) {
    return absl::NotFoundError(hugemm::Format(
        "no fixed buffer: %p is in slot %d of the runtime's kernel pin table but not in the "
        "table of ring %d: external memory (RegisterExternal, hugemm_register_external) is "
        "no fixed buffer",
        addr, held, ring_fd_));
  }
  return absl::NotFoundError(absl::StrCat(
      "no fixed buffer: ", runtime_.kernel_pin_table().WhyNoSlot(addr, length == 0 ? 1 : length)));
}

size_t FixedBuffers::slots_filled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return filled_.size();
}

}  // namespace hugemm
