// hugemm::Runtime: the facade an RDMA or storage program links against. It owns a shadow
// page table, a folio allocator and a pinner, and gives out buffers that are mapped,
// physically known and ready to pin at one reference operation per folio.
//
//   auto rt = hugemm::Runtime::Open({});
//   absl::StatusOr<hugemm::Buffer> buf = (*rt)->MapBuffer(1 << 30, {.page_size = kPageSize2M});
//   absl::StatusOr<hugemm::PinnedRange> pin = (*rt)->pinner().Pin(buf->data(), buf->size(),
//                                                                 hugemm::kGupPin | kGupWrite);
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
// PFN stability (see kernel_pin.h): every buffer (MapBuffer or Allocate) is held by one
// kernel long-term pin (io_uring fixed-buffer registration) for its whole life, on by
// default (RuntimeOptions::kernel_pins), so the kernel cannot migrate its pages while a
// device may use the PFNs. Device-DAX memory never moves and needs none. The cost is an
// io_uring instance (a file descriptor) per buffer: a program that makes many small
// buffers and hands no PFNs out turns it off.
#ifndef HUGEMM_RUNTIME_H_
#define HUGEMM_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/alloc.h"
#include "hugemm/backing.h"
#include "hugemm/gup.h"
#include "hugemm/notify.h"
#include "hugemm/os.h"
#include "hugemm/pgtable.h"

namespace hugemm {

struct RuntimeOptions {
  // One reference operation per folio (default) or per 4K page: the experiment switch.
  RefGranularity refcount = RefGranularity::kFolio;
  // Hold a kernel long-term pin on each buffer that is not device-DAX.
  bool kernel_pins = true;
  // allocator.os, when set, must name the same Os as `os`.
  AllocatorOptions allocator;
  // The OS everything of this runtime calls: the allocator, the backings of MapBuffer,
  // the kernel pins and the geometry detection; nullptr = Os::Default(). Must outlive
  // the runtime and every pin of its memory.
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
  // extent its folio was carved from (a native page of 2M or 1G; 2M of a 4K backing),
  // which the buffers carved from it share.
  std::byte* extent_data = nullptr;
  size_t extent_size = 0;
  bool allocated = false;  // from Allocate
};

class Runtime;

// A mapping handed out by a Runtime. Move-only; dropping it frees the mapping (the memory
// stays until no pin holds it). Must not outlive its Runtime.
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
  // Frees it now (see above); reports what the destructor would swallow.
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

class Runtime {
 public:
  // InvalidArgument when options.allocator.os and options.os name different Os.
  static absl::StatusOr<std::unique_ptr<Runtime>> Open(const RuntimeOptions& options = {});
  // Frees every buffer and registration still held. Pins taken through pinner() must be
  // released first; a folio still pinned then stays allocated (its memory is never
  // reused while pinned) and is reported in the process log.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // `length` bytes (a multiple of the page size) as one folio per native page.
  absl::StatusOr<Buffer> MapBuffer(size_t length, const BufferOptions& options = {});
  // One folio of at least `bytes` from the allocator (see alloc.h).
  absl::StatusOr<Buffer> Allocate(size_t bytes, const AllocOptions& options = {});
  // Memory this program mapped itself, as borrowed folios (pinnable, never LONGTERM).
  absl::StatusOr<uint64_t> RegisterExternal(const void* va, size_t length);
  absl::Status UnregisterExternal(uint64_t id);
  // Frees the buffer that starts at `data` (what Buffer::Free does, for the C API).
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
  // Hears changes to [va, va + length) (see notify.h).
  std::unique_ptr<RangeSubscription> Subscribe(const void* va, size_t length,
                                               NotifierCallbacks callbacks = {});
  // Holds the shadow table over [va, va + length) against the kernel.
  absl::StatusOr<VerifyReport> Verify(const void* va, size_t length) const;

  PageTable& table() { return *table_; }
  Pinner& pinner() { return *pinner_; }
  Allocator& allocator() { return *allocator_; }
  const RuntimeOptions& options() const { return options_; }

  class BufferRecord;

 private:
  explicit Runtime(const RuntimeOptions& options);
  absl::Status FreeById(uint64_t id);

  RuntimeOptions options_;
  Os& os_;
  std::unique_ptr<Allocator> allocator_;
  std::unique_ptr<PageTable> table_;
  std::unique_ptr<Pinner> pinner_;
  std::mutex mu_;  // std::mutex: visible to ThreadSanitizer (the system abseil is not)
  std::map<uint64_t, std::unique_ptr<BufferRecord>> buffers_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, uint64_t> by_address_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  friend class Buffer;
};

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_H_
