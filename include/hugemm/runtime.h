// hugemm::Runtime: the facade an RDMA or storage program links against. It owns a shadow
// page table, a folio allocator and a pinner, and gives out buffers that are mapped,
// physically known and ready to pin at one reference operation per folio.
//
//   auto rt = hugemm::Runtime::Open({});
//   absl::StatusOr<hugemm::Buffer> buf =
//       (*rt)->MapBuffer(1 << 30, {.page_size = hugemm::kPageSize2M});
//   absl::StatusOr<hugemm::PinnedRange> pin =
//       (*rt)->pinner().Pin(buf->data(), buf->size(), hugemm::kGupPin | hugemm::kGupWrite);
//   for (const hugemm::FolioSpan& s : pin->spans()) post(s.folio->page_pfn(s.first_page), ...);
//
// Two ways to get memory:
//   MapBuffer  a virtually contiguous buffer of whole native pages (2M, 1G, device-DAX
//              alignment) from a backing, one folio per page: DMA buffers, benchmarks;
//   Allocate   one folio from the allocator's pools (4K up to the page size), fast.
// Both are mapped in the shadow table, so Translate, pin, verify and notifiers see them.
// Dropping a Buffer unmaps it from the table and drops the owner's references; the memory
// goes back only when the last pin is gone.
//
// The program's own changes to that memory: the runtime maps it, and only its free unmaps
// it. Nothing tells the runtime when the program munmaps, mremaps, mprotects or maps over
// (MAP_FIXED) part of it, drops a page (MADV_DONTNEED of a MAP_PRIVATE buffer, MADV_REMOVE,
// a hole punched in a named hugetlbfs file) or MADV_DOFORKs it: the table keeps the frames
// and protection it recorded, and Translate and pins keep handing them out (a WRITE pin
// of memory the program made read-only too). With kernel pins those frames stay this
// process's until the buffer is freed, so a device never writes into memory the kernel
// gave to another, but they are no longer the memory the program sees there: a page
// faulted in after a drop is a new, zeroed frame. Without kernel pins the kernel may hand
// them out again at once. Verify names what the kernel then maps differently. Freeing the
// buffer unmaps its range whatever is mapped there by then (a mapping the program put in
// its place too) and leaves a mapping that mremap moved to the program, with its huge
// pages. An Allocate buffer's memory goes back to its pool, whose next allocation there
// the runtime zeroes (unless AllocOptions says not to): memory the program unmapped or
// made read-only there faults in that call (and in every call that reads a folio
// descriptor the pool keeps there, AllocatorOptions::meta_reserve_bytes). MADV_DONTNEED
// of a MAP_SHARED buffer (the default) changes nothing the runtime knows: the same
// frames, with their contents, come back on the next touch.
//
// PFN stability: every page a runtime hands out is held by a kernel long-term pin for as
// long as it is mapped and the runtime open, on by default (RuntimeOptions::kernel_pins),
// so the kernel cannot migrate it while a device may use its PFN. The runtime keeps one
// kernel pin table: one io_uring instance (one file descriptor) whose registered-buffer
// table has a slot per pool extent (Allocate's folios are carved from those) and per
// MapBuffer buffer (per GiB of either), never one per allocation. The same table gives
// programs fixed buffers for their own rings (hugemm/io.h). Pinned bytes count against
// RLIMIT_MEMLOCK for processes without CAP_IPC_LOCK, together with the registered buffers
// of every io_uring of the same user (the kernel counts per user, not per process, and
// gives a closed ring's share back a moment after the close); the table holds at most
// 16384 slots, so at most 16384 MapBuffer buffers at once however small (a 4K anon one
// takes a slot as a 1 GiB one does; Allocate's pools take a slot per extent). Both limits
// end in an error that names them and what to do, except for device-DAX memory, which
// never moves: a buffer or pool extent of it the kernel will not pin is mapped all the
// same, without a kernel pin, and is then no fixed buffer (io.h's IndexOf says why).
//
// Memory observers (memory_observer.h) hear of every extent and buffer when it is added
// and before it is removed: the kernel pin table is the first; an IOVA mapper or a
// program's own table (hugemm/io.h) are others.
//
// fork(): all of a runtime's memory is MADV_DONTFORK, so a child process has none of it,
// and the child shares the kernel pin table's ring with its parent (as it shares the
// program's rings, VFIO containers and RDMA contexts). A runtime opened before the fork
// is inert in the child: MapBuffer, Allocate (its pools' memory is the parent's), Free,
// RegisterExternal and UnregisterExternal there are FailedPrecondition, and so are
// FixedBuffers::Attach, IoRing::Attach, IovaMapper::Attach and MrCache::Get (io.h,
// vfio.h, verbs.h). Translations, pins and unpins still answer from the child's copy of
// the table: they name the parent's memory (addresses the child cannot touch, frames the
// parent may reuse at any time) and change nothing of the parent's; give none of it to a
// device. Where the folio descriptors live in the extents' reserve
// (AllocatorOptions::meta_reserve_bytes) they are the parent's memory too: the child must
// not touch those folios at all (no pin, translation, folio info or handle release).
// Destroying the runtime, and the FixedBuffers, IovaMapper and MrCache over it, releases
// nothing but the child's descriptor of the ring, leaving the rest to the child's exit
// (nothing is unmapped, unregistered or deregistered, and nothing waits: a lock or read
// section another thread held at the fork stays held in the child). The parent's memory,
// pins, kernel pins, mappings and registrations stay as they were, and a child that exits
// leaves the parent unaffected. A runtime opened in the child is its own. A child of a
// parent with other threads should still leave by _exit or exec (as POSIX asks): exit's
// thread_local destructors may wait for a lock another thread held. The runtime's
// descriptors are close-on-exec. The child is recognised by a pthread_atfork handler: a
// child made without one (_Fork, a raw clone) must not call the runtime at all.
#ifndef HUGEMM_RUNTIME_H_
#define HUGEMM_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hugemm/alloc.h"
#include "hugemm/backing.h"
#include "hugemm/gup.h"
#include "hugemm/memory_observer.h"
#include "hugemm/notify.h"
#include "hugemm/os.h"
#include "hugemm/pgtable.h"

namespace hugemm {

namespace api_internal {
class KernelPinTable;
class MemoryObservers;
}  // namespace api_internal

struct RuntimeOptions {
  // One reference operation per folio (default) or per 4K page: the experiment switch.
  RefGranularity refcount = RefGranularity::kFolio;
  // Hold a kernel long-term pin on all memory (see above). false: no ring; the table
  // still numbers the memory, for programs that register it in their own rings.
  bool kernel_pins = true;
  // Slots of the kernel pin table, 1 to 16384 (the kernel's limit per ring).
  unsigned kernel_pin_slots = 16384;
  // allocator.os, when set, must name the same Os as `os` (or `os` is left nullptr and
  // allocator.os serves the whole runtime). allocator.observer, when set, is added as the
  // runtime's first memory observer after its kernel pin table.
  AllocatorOptions allocator;
  // The OS everything of this runtime calls: the allocator, the backings of MapBuffer,
  // the kernel pins and the geometry detection; nullptr = allocator.os, or Os::Default()
  // when that is nullptr too. Must outlive the runtime and every pin of its memory.
  Os* os = nullptr;
};

struct BufferOptions {
  BackingKind backing = BackingKind::kHugetlb;
  size_t page_size = 0;  // 0 = the kind's own (2M, device alignment, 4K)
  int node = -1;
  bool shared = true;           // MAP_SHARED (devdax requires it) or MAP_PRIVATE
  std::string hugetlbfs_mount;  // hugetlbfs: "" = found for page_size
  std::string file_name;        // hugetlbfs: a named file another process may open
  std::string devdax_path;      // devdax: "/dev/daxX.Y"
  // The buffer's protection, the kernel's mapping's and the shadow table's alike (a
  // WRITE pin of a buffer without kProtWrite is refused; the program's own write faults).
  // It must include kProtRead; InvalidArgument otherwise. A mount or device that refuses
  // kProtExec fails the map with the kernel's error. The kernel pins for writing what a
  // ring or a VFIO container registers, so a buffer without kProtWrite reaches those
  // attached before it is mapped, and later rings only by clone (io.h): a later
  // attachment by iovecs or a later IovaMapper is refused (EFAULT).
  Prot prot = kProtRead | kProtWrite;
};

// Where the memory at an address came from (Runtime::BufferAt): what a registration cache
// registers whole, so that neighbouring requests share one registration.
struct BufferSpan {
  uint64_t id = 0;  // the buffer's id (Buffer::id)
  // The buffer: MapBuffer's whole native pages, or Allocate's one folio.
  std::byte* data = nullptr;
  size_t size = 0;
  // The backing mapping holding the buffer: MapBuffer's own, or the allocator pool's
  // extent its folio was carved from, which the buffers carved from it share. A pool
  // grows by extents as large as what it holds already (alloc.h): from one native page
  // (2M of a 4K backing) up to 1 GiB, or 64 pages of 1G.
  std::byte* extent_data = nullptr;
  size_t extent_size = 0;
  bool allocated = false;  // from Allocate
};

// The kernel pin table's counters.
struct KernelPinStats {
  unsigned slots = 0;       // capacity
  unsigned slots_used = 0;  // one per GiB (or part) of each pool extent and buffer
  size_t bytes = 0;         // in used slots
  size_t pinned_bytes = 0;  // of which pinned by the kernel (0 with kernel_pins off)
  int ring_fd = -1;         // the table's ring; -1 with kernel_pins off
};

class Runtime;

// A mapping handed out by a Runtime. Move-only; dropping it frees the mapping (the memory
// stays until no pin holds it). Must not outlive its Runtime.
//
// Thread safety: like a value: one thread at a time may use, move or free a Buffer;
// different Buffers of one runtime may be freed on any threads at once.
class Buffer {
 public:
  Buffer() = default;
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  // The size of each folio in it.
  size_t folio_size() const { return folio_size_; }
  uint64_t id() const { return id_; }
  explicit operator bool() const { return data_ != nullptr; }
  // Frees it now (see above); reports what the destructor would swallow. A memory
  // observer that cannot let a MapBuffer buffer's mapping go on this thread (a program's
  // single-issuer io_uring, on another thread than its submitter: see io.h) refuses with
  // its error, and the Buffer still holds the buffer; the destructor frees it regardless.
  absl::Status Free();
  // Leaves the buffer to the runtime: it is freed by Runtime::Free(data) or when the
  // runtime closes. (The C API works this way.)
  void Detach() { runtime_ = nullptr; }

 private:
  friend class Runtime;
  Runtime* runtime_ = nullptr;
  uint64_t id_ = 0;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t folio_size_ = 0;
};

// Thread safety: thread-safe; only the destructor must not race with other calls.
class Runtime {
 public:
  // InvalidArgument when options.allocator.os and options.os name different Os, or for a
  // kernel_pin_slots outside 1..16384. With kernel_pins: Unavailable when io_uring is
  // refused (sysctl kernel.io_uring_disabled), ResourceExhausted when the kernel has no
  // memory for the table.
  static absl::StatusOr<std::unique_ptr<Runtime>> Open(const RuntimeOptions& options = {});
  // Frees every buffer and registration still held. Pins taken through pinner() must be
  // released first. A folio of a buffer still pinned then stays allocated (its memory is
  // never reused while pinned) until FolioUngrab drops its last pin, without a word to
  // the memory observers and without its kernel pin (the table closes with the runtime,
  // and the kernel may then move the memory); a pin of a registration's memory must not
  // outlive the runtime (its descriptors go with it).
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // `length` bytes (a multiple of the page size) as one folio per native page. Besides
  // the backing's errors: InvalidArgument for a length beyond the user address space
  // (2^47 less a page on x86-64) or a bad `prot`; what a memory observer refused it
  // with, e.g. the kernel pin table's ResourceExhausted (no slot left, RLIMIT_MEMLOCK
  // reached). Huge pages the allocator's pools hold free (left by freed Allocate
  // buffers) are the runtime's: when the kernel has none left for the buffer, the pools
  // give theirs back (Allocator::Shrink, which also flushes the threads' caches) and the
  // map is tried again.
  absl::StatusOr<Buffer> MapBuffer(size_t length, const BufferOptions& options = {});
  // One folio of at least `bytes` from the allocator (see alloc.h; the kernel pin
  // table's errors come from there when the pool grows). FailedPrecondition in a child
  // of fork() (see the top of this file). A pool that cannot grow for want of huge pages
  // gets those the other pools hold free, as MapBuffer does.
  absl::StatusOr<Buffer> Allocate(size_t bytes, const AllocOptions& options = {});
  // Memory this program mapped itself, as borrowed folios (pinnable, never LONGTERM).
  // Nothing tells the runtime when the program unmaps or changes it later: unpin and
  // unregister first (see PageTable::RegisterExternal); Verify names such a change. With
  // kernel pins, writable memory is also held by the kernel pin table (a slot per GiB,
  // counted against RLIMIT_MEMLOCK) until it is unregistered: after such a change its
  // frames stay this process's, so a device using a pin of them never writes into memory
  // the kernel gave to someone else. Read-only memory is not held (the kernel pins only
  // memory it may write), nor memory the kernel refuses to long-term pin.
  // The hold is taken before the table maps the memory: a refused registration was never
  // visible, not even to a pin by address from another thread.
  // Registrations and unregistrations run one at a time; neither may be called from a
  // notifier callback of this runtime (FailedPrecondition when the callback is one that
  // another of them runs on the same thread).
  // ResourceExhausted: the kernel pin table has no slot or no RLIMIT_MEMLOCK left.
  absl::StatusOr<uint64_t> RegisterExternal(const void* va, size_t length);
  absl::Status UnregisterExternal(uint64_t id);
  // Frees the buffer that starts at `data` (what Buffer::Free does, for the C API; a
  // refusal leaves it mapped and the program's).
  absl::Status Free(const void* data);
  // The buffer holding `va` and the mapping it came from. Takes the runtime's lock: for
  // slow paths (a registration cache's miss), not per I/O. The answer describes the buffer
  // as it was at the call: it may be freed right after.
  //   NotFound: no live buffer of this runtime holds `va` (never one, freed, or memory
  //   registered with RegisterExternal).
  absl::StatusOr<BufferSpan> BufferAt(const void* va);

  std::optional<Translation> Translate(const void* va, size_t max_run = 0) const;
  // The folio mapping `va`.
  absl::StatusOr<FolioInfo> FolioInfoAt(const void* va) const;
  // Hears changes to [va, va + length) (see notify.h). The subscription must be dropped
  // before the runtime closes (it unsubscribes from the runtime's table).
  std::unique_ptr<RangeSubscription> Subscribe(const void* va, size_t length,
                                               NotifierCallbacks callbacks = {});
  // Holds the shadow table over [va, va + length) against the kernel.
  absl::StatusOr<VerifyReport> Verify(const void* va, size_t length) const;

  // Tells `observer` of every extent and buffer held now, then of every change, until
  // removed (memory_observer.h); it must be removed before it is destroyed and before
  // the runtime closes. `first` runs before, while no range comes or goes (an observer
  // that copies a device table takes its snapshot there). InvalidArgument for null or
  // an observer already added; what `first` failed with, or what the observer refused a
  // range with (it is then not added).
  absl::Status AddMemoryObserver(
      MemoryObserver* observer,
      absl::FunctionRef<absl::Status()> first = [] { return absl::OkStatus(); });
  // NotFound when it is not an observer.
  absl::Status RemoveMemoryObserver(MemoryObserver* observer);
  [[nodiscard]] KernelPinStats kernel_pin_stats() const;
  // For the consumer layers (runtime/io): the table itself.
  const api_internal::KernelPinTable& kernel_pin_table() const { return *kernel_pins_; }

  PageTable& table() { return *table_; }
  Pinner& pinner() { return *pinner_; }
  Allocator& allocator() { return *allocator_; }
  const RuntimeOptions& options() const { return options_; }

  class BufferRecord;

 private:
  explicit Runtime(const RuntimeOptions& options);
  absl::Status FreeById(uint64_t id);
  // Whether the memory observers let the buffer's mapping go on this thread now
  // (MemoryObserver::MayRemove); OK for an Allocate'd buffer (its pool keeps the memory)
  // and for an id no buffer has (FreeById says so).
  absl::Status MayFree(uint64_t id);

  RuntimeOptions options_;
  Os& os_;
  // Outlive the allocator, whose pools report to them until it is gone; the observers
  // also outlive (shared) the buffers still pinned when the runtime closes.
  std::shared_ptr<api_internal::MemoryObservers> observers_;
  std::unique_ptr<api_internal::KernelPinTable> kernel_pins_;
  std::unique_ptr<Allocator> allocator_;
  std::unique_ptr<PageTable> table_;
  std::unique_ptr<Pinner> pinner_;
  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer (the system abseil is not)
  std::map<uint64_t, std::unique_ptr<BufferRecord>> buffers_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, uint64_t> by_address_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // FailedPrecondition naming `what` in a child of fork() (see the top of this file).
  absl::Status RefuseInForkedChild(absl::string_view what) const;
  // RegisterExternal's ranges the kernel pin table holds, by registration id.
  std::map<uint64_t, MemoryRange> external_ ABSL_GUARDED_BY(mu_);
  // Orders RegisterExternal and UnregisterExternal (taken before mu_).
  std::mutex external_order_mu_;
  friend class Buffer;
};

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_H_
