// Storage programs on hugemm: io_uring fixed buffers on any hugemm memory, and per-I/O
// pins. Register once, pin per I/O, free after completion.
//
//   auto rt = hugemm::Runtime::Open();  // each StatusOr and Status checked before use
//   struct io_uring ring;
//   io_uring_queue_init(64, &ring, 0);
//   auto io = hugemm::IoRing::Attach(**rt, ring.ring_fd);      // the ring's buffer table
//   auto buf = (*rt)->Allocate(128 << 10);                       // any hugemm memory
//   io_uring_sqe* sqe = io_uring_get_sqe(&ring);
//   absl::Status st =                                            // READ_FIXED, pinned
//       (*io)->PrepareRead(sqe, fd, buf->data(), 128 << 10, offset, my_tag);
//   io_uring_submit(&ring);
//   ... buf may be freed now: its folios stay out of the pool until the completion ...
//   io_uring_cqe* cqe;
//   io_uring_wait_cqe(&ring, &cqe);
//   absl::StatusOr<uint64_t> tag = (*io)->Complete(cqe);        // unpinned; my_tag back
//   io_uring_cqe_seen(&ring, cqe);
//   io->reset();                                                 // detach, then
//   io_uring_queue_exit(&ring);
//
// Three pieces, usable alone:
//   FixedBuffers  the registered-buffer table of a program's ring, kept equal to the
//                 runtime's kernel pin table: slot i holds the same memory in both, so the
//                 buf_index for an address is found in O(1) (Find). External memory, which
//                 the kernel pin table also holds, is left out (see below). Where the kernel has
//                 IORING_REGISTER_CLONE_BUFFERS (6.12) the table is cloned, pinning
//                 nothing again; elsewhere the same memory is registered as iovecs (pinned
//                 again, counted again against RLIMIT_MEMLOCK). Either way it follows the
//                 runtime as memory comes and goes, through a memory observer: a pool
//                 extent or a buffer is in the program's table before any of it is handed
//                 out, and out of it before it is unmapped. The program never re-registers.
//   IoPins        per-I/O pins: the folios under an I/O pinned at submission (one atomic
//                 per folio), given back when its completion is reaped, so a buffer freed
//                 while the device still reads or writes it is handed to nobody until then.
//   IoRing        both around a ring: Prepare{Read,Write} fill a READ_FIXED / WRITE_FIXED
//                 SQE and pin, Complete unpins and gives the program's user_data back.
//
// What a fixed buffer cannot be: memory outside the runtime (RegisterExternal, the stack),
// or an I/O that crosses a 1 GiB boundary of a buffer larger than 1 GiB (io_uring registers
// at most 1 GiB per slot). Find returns -1 there and IndexOf says why.
//
// The program's ring must have no registered-buffer table of its own (hugemm gives it
// one), must not be created with IORING_SETUP_SINGLE_ISSUER unless every thread that
// allocates from the runtime or frees is its submitter (registrations come from the
// allocating and the freeing thread). On another thread, MapBuffer and a growing
// Allocate fail with the kernel's EEXIST; so does a free of a MapBuffer buffer
// (Buffer::Free, Runtime::Free: the buffer stays), and Allocator::Shrink keeps the
// extents in the ring's table (MemoryObserver::MayRemove). A MapBuffer buffer whose last
// pin drops on such a thread after its free is unmapped, but the ring keeps its slot and
// the frames under it (stderr says so) until the submitter next changes the ring's table
// (MapBuffer, an Allocate that grows a pool, a free of a MapBuffer buffer, a Shrink that
// gives memory back) or the detach.
//
// An attachment holds the ring open by a descriptor of its own until it is destroyed,
// and makes every call through it: a program that closes its descriptor first
// (io_uring_queue_exit), even one a new ring then takes the number of, changes no other
// ring's table, but its ring (and the requests in flight in it) lives on until the
// detach, which then ends it. So detach (destroy) first, then io_uring_queue_exit. Reap
// every completion before detaching: the memory under an I/O still in flight then is
// never given back (see ~IoPins). The runtime outlives both.
#ifndef HUGEMM_IO_H_
#define HUGEMM_IO_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/gup.h"
#include "hugemm/memory_observer.h"
#include "hugemm/runtime.h"

struct io_uring_sqe;
struct io_uring_cqe;

namespace hugemm {

enum class FixedBufferMode {
  kAuto,   // clone where the kernel can, else iovecs
  kClone,  // share the runtime's table (Linux 6.12 or later, kernel pins on)
  kIovec,  // register the same memory in the program's ring
};

struct FixedBufferOptions {
  FixedBufferMode mode = FixedBufferMode::kAuto;
};

// The registered-buffer table of a program's io_uring, following a runtime's memory.
//
// Thread safety: Find and IndexOf may be called from any thread at any time; memory
// coming and going updates the table from whichever thread allocates or frees. Attach
// and destruction must not race with each other.
class FixedBuffers {
 public:
  // Gives the ring at `ring_fd` a table equal to the runtime's, now and from now on. The
  // attachment keeps a descriptor of the ring (close-on-exec) until it is destroyed.
  //   InvalidArgument   a negative descriptor, or one that is not an io_uring instance
  //                     (closed or O_PATH: EBADF; another file: EOPNOTSUPP, kept for ErrnoOf);
  //                     a `mode` that is none of FixedBufferMode's;
  //   ResourceExhausted no descriptor left for that (EMFILE, ENFILE);
  //   FailedPrecondition the ring has a registered-buffer table already (EBUSY); kClone
  //                     with the runtime's kernel pins off (there is no table to clone);
  //   Unimplemented     kClone on a kernel without IORING_REGISTER_CLONE_BUFFERS;
  //   AlreadyExists     (EEXIST) a single-issuer ring, attached on another thread than
  //                     its submitter;
  //   ResourceExhausted kIovec beyond RLIMIT_MEMLOCK;
  //   FailedPrecondition in a child of fork() of the process that opened the runtime
  //                     (runtime.h): a clone would give the ring the parent's pages;
  //   others            what io_uring_register said (EFAULT, kIovec: memory of the
  //                     runtime the program unmapped itself, or a buffer mapped without
  //                     kProtWrite, which the kernel will not pin for writing), named.
  // Nothing is left registered on error.
  static absl::StatusOr<std::unique_ptr<FixedBuffers>> Attach(
      Runtime& runtime, int ring_fd, const FixedBufferOptions& options = {});
  // Stops following the runtime and unregisters the ring's table. From Linux 6.13 the
  // kernel lets each buffer go once no request uses it. Before 6.13 it waits here until
  // the ring's requests in flight through a fixed buffer (or a registered file) have
  // completed: a read of a pipe or socket holds the destructor until its data comes, and
  // signals do not end the wait (an interrupted unregister is asked again). Reap or cancel
  // them first. A refusal it cannot return (a single-issuer ring dropped from a thread not
  // its submitter, which keeps its table) is said on stderr. Then it closes its descriptor
  // of the ring. A ring whose descriptor the program closed already (kcmp says the number
  // no longer names it) is not unregistered first: that close ends it, cancelling what is
  // in flight, as the program's own close would have (a ring still open elsewhere, in a
  // dup or a child, keeps the table until it ends). In a child of fork() it changes
  // nothing but its copy of the descriptor: the ring is the parent's too.
  ~FixedBuffers();
  FixedBuffers(const FixedBuffers&) = delete;
  FixedBuffers& operator=(const FixedBuffers&) = delete;

  // The buf_index whose buffer holds all of [addr, addr + length), or -1. O(1). The
  // registered buffer of an Allocate'd one is (a GiB of) the pool extent it was carved
  // from: a range running from it into a neighbouring allocation has an index, as it does
  // for the kernel, and is the program's to avoid. A length of 0 asks for the buffer
  // holding the byte at addr.
  // An index is good while its memory is: when a MapBuffer buffer is freed its slot is
  // emptied before the memory is unmapped (an I/O through it completes with -EFAULT) and
  // stays empty until every slot freed before it has gone to new memory, so the next
  // buffer, even at the same address, has another index. An Allocate'd buffer's index is
  // its pool extent's, which stays registered after the free: an I/O through the old index
  // and address reaches whatever the pool hands out there next. An SQE the program fills
  // itself from Find is safe from a free only under an IoPins pin taken before the submit
  // and given back after the completion (IoRing::PrepareRead and PrepareWrite do both, and
  // refuse freed memory with NotFound).
  [[nodiscard]] int Find(const void* addr, size_t length) const;
  // Find with a reason: NotFound naming why there is none (not hugemm memory, external
  // memory, past the end of a buffer, across a 1 GiB boundary, a device the kernel would
  // not register).
  [[nodiscard]] absl::StatusOr<int> IndexOf(const void* addr, size_t length) const;

  // kClone or kIovec: how the table was made. On a 6.12 kernel a clone cannot be
  // extended, so memory added after Attach is registered as iovecs (pinned again).
  FixedBufferMode mode() const { return mode_; }
  int ring_fd() const { return ring_fd_; }
  // Slots filled in the program's table.
  [[nodiscard]] size_t slots_filled() const;

 private:
  class Follower;
  FixedBuffers(Runtime& runtime, int ring_fd, int held_fd);
  absl::Status Fill(unsigned slot, const void* data, size_t length);
  void Empty(unsigned slot);
  // Whether this thread may empty the ring's slots (a single-issuer ring refuses every
  // other thread than its submitter); when it may, it empties the owed ones.
  absl::Status MayEmpty();
  void EmptyOwed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Runtime& runtime_;
  const int ring_fd_;  // the program's number, for messages
  const int held_fd_;  // the attachment's own descriptor of the ring, for every call
  FixedBufferMode mode_ = FixedBufferMode::kIovec;
  std::unique_ptr<Follower> follower_;
  bool attached_ = false;  // the follower is one of the runtime's observers
  mutable std::mutex mu_;  // std::mutex: visible to ThreadSanitizer
  std::set<unsigned> filled_ ABSL_GUARDED_BY(mu_);
  // Slots whose memory went while the ring refused to empty them (the last pin of a freed
  // buffer dropping on another thread than a single-issuer ring's submitter): the kernel
  // still holds their frames, until a later fill, free or trim on the submitter empties
  // them, or the detach.
  std::set<unsigned> owed_ ABSL_GUARDED_BY(mu_);
  int ranged_clones_ ABSL_GUARDED_BY(mu_) = -1;  // -1 unknown, 0 no (6.12), 1 yes
};

// Pins for I/Os in flight, each named by a token that fits a CQE's user_data.
//
// A token holds the address of this object's record of the I/O (low 48 bits) and a
// generation of that record (top 16 bits, never 0). So a value the program made itself
// is never taken for a token: a number below 2^48, or the address of any of the program's
// own objects, tagged in its top 16 bits or not. Nor is another IoPins' token. A token
// given back could match again only once its record has served 65535 more I/Os; records
// are reused oldest first.
//
// Thread safety: like a liburing ring: one thread at a time pins and unpins.
class IoPins {
 public:
  // Holds up to `capacity` I/Os in flight (1 .. 1 << 20); InvalidArgument otherwise.
  static absl::StatusOr<std::unique_ptr<IoPins>> Create(Runtime& runtime, size_t capacity);
  // Gives back nothing still in flight: the device may still read or write that memory,
  // so it stays out of the pool for good (and the runtime keeps it mapped until the
  // process exits). Unpin (complete, cancel) every I/O first to have the memory back.
  ~IoPins();
  IoPins(const IoPins&) = delete;
  IoPins& operator=(const IoPins&) = delete;

  // Pins the folios under [addr, addr + length) until Unpin(token). `device_writes`: the
  // I/O writes memory (a read from storage), so Unpin marks the folios dirty. Never 0.
  //   InvalidArgument   an empty range; ResourceExhausted: `capacity` I/Os in flight;
  //   and what a pin returns (gup.h): NotFound for memory the runtime does not map, ...
  [[nodiscard]] absl::StatusOr<uint64_t> Pin(const void* addr, size_t length, bool device_writes);
  // Gives the pins of `token` back. NotFound for a token not in flight (never issued,
  // or unpinned already): nothing is given back twice. NotFound too for the token of an
  // I/O an IoRing prepared, whose pins hold its memory until IoRing::Complete (or
  // Cancel): an Unpin of it would let that memory go while the device may still use it.
  absl::Status Unpin(uint64_t token);

  size_t in_flight() const { return in_flight_; }
  size_t capacity() const { return records_.size(); }

 private:
  friend class IoRing;
  struct Record {
    uint32_t generation = 1;  // 1 .. 0xffff
    bool busy = false;
    bool dirty = false;
    bool prepared = false;  // IoRing's I/O, given back by Complete or Cancel alone
    uint32_t nspans = 0;
    uint64_t user_data = 0;        // IoRing's
    FolioSpan inline_spans[2];     // most I/Os touch one or two folios
    std::vector<FolioSpan> spans;  // the rest
  };
  IoPins(Runtime& runtime, size_t capacity);
  // `prepared`: for an IoRing I/O, whose token only Release(..., prepared=true) takes.
  absl::StatusOr<uint64_t> PinFor(const void* addr, size_t length, bool device_writes,
                                  uint64_t user_data, bool prepared);
  absl::Status Release(uint64_t token, uint64_t* user_data, bool prepared);

  Pinner& pinner_;
  std::vector<Record> records_;
  // Indexes of idle records, oldest given back first: a queue of free_count_ from
  // free_head_, round the end of free_. Allocated once, at capacity.
  std::vector<uint32_t> free_;
  size_t free_head_ = 0;
  size_t free_count_;
  size_t in_flight_ = 0;
};

struct IoRingOptions {
  FixedBufferOptions fixed;
  size_t max_in_flight = 4096;  // I/Os prepared and not yet completed
};

// Fixed buffers and per-I/O pins around a program's ring.
//
// Thread safety: like a liburing ring: one thread prepares and completes.
class IoRing {
 public:
  // FixedBuffers::Attach and IoPins::Create, with their errors.
  static absl::StatusOr<std::unique_ptr<IoRing>> Attach(Runtime& runtime, int ring_fd,
                                                        const IoRingOptions& options = {});

  // Fills `sqe` as a READ_FIXED of `length` bytes at `offset` of `fd` into `buf` and pins
  // the folios under it; the SQE's user_data becomes a token, and Complete gives
  // `user_data` back. InvalidArgument for a null SQE or length 0; NotFound for memory
  // that is no fixed buffer (why); the pin's errors. On error the SQE is left untouched
  // and nothing is pinned.
  absl::Status PrepareRead(io_uring_sqe* sqe, int fd, void* buf, unsigned length, uint64_t offset,
                           uint64_t user_data);
  // The same for a WRITE_FIXED from `buf`.
  absl::Status PrepareWrite(io_uring_sqe* sqe, int fd, const void* buf, unsigned length,
                            uint64_t offset, uint64_t user_data);
  // The completion of a prepared I/O: its folios unpinned (dirty after a read). Returns
  // the user_data it was prepared with; NotFound for a CQE of no prepared I/O (nothing
  // is unpinned), a token of IoPins::Pin among them. cqe->res is the program's to check.
  [[nodiscard]] absl::StatusOr<uint64_t> Complete(const io_uring_cqe* cqe);
  // For an SQE prepared but never submitted: unpins it and returns its user_data.
  [[nodiscard]] absl::StatusOr<uint64_t> Cancel(const io_uring_sqe* sqe);

  FixedBuffers& fixed() { return *fixed_; }
  IoPins& pins() { return *pins_; }
  size_t in_flight() const { return pins_->in_flight(); }

 private:
  IoRing() = default;
  absl::Status Prepare(io_uring_sqe* sqe, bool read, int fd, const void* buf, unsigned length,
                       uint64_t offset, uint64_t user_data);

  std::unique_ptr<FixedBuffers> fixed_;
  std::unique_ptr<IoPins> pins_;
};

}  // namespace hugemm

#endif  // HUGEMM_IO_H_
