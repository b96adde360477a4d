// A memory-registration cache for RDMA programs on hugemm memory: an ibv_mr covering
// (protection domain, address, length, access), registered once per buffer or pool
// extent and handed out again while it stays valid, without hooks.
//
//   auto cache = hugemm::MrCache::Create(*rt);  // each StatusOr checked before use
//   absl::StatusOr<hugemm::MrHandle> mr =
//       (*cache)->Get(pd, buf->data() + off, len, IBV_ACCESS_LOCAL_WRITE);
//   sge.lkey = mr->lkey();  ... ibv_post_send(...) ... poll the completion ...
//   mr->Release();  // or drop the handle
//
// What it promises:
//   - Register once. A miss registers the whole buffer or pool extent holding the address
//     (MrScope), so requests for neighbouring bytes hit the same registration.
//   - Never stale. Each registration subscribes to the range it covers (notify.h): when
//     hugemm memory under it is freed, unmapped, split, re-protected or made
//     device-exclusive, the registration is dropped (deregistered at once if no handle
//     holds it, else when the last one is released) and the next request registers anew.
//     A hit checks the registration's sequence word after pinning, so a change racing
//     with the hit sends it to a fresh registration. No malloc or munmap hook, no
//     userfaultfd: hugemm owns the memory and announces every change.
//   - Memory under a work request stays put. A handle holds a hugemm pin (one atomic per
//     folio) on the folios under the requested bytes: a buffer freed while the NIC may
//     still use it keeps its memory until the handle is released.
//   - Bounded: at most max_entries registrations and max_bytes registered bytes; the least
//     recently used registration no handle holds is evicted to make room.
// Only memory of the runtime's buffers (MapBuffer, Allocate) and memory registered with
// Runtime::RegisterExternal can be registered: the cache must hear of every change to it.
#ifndef HUGEMM_VERBS_H_
#define HUGEMM_VERBS_H_

#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/gup.h"
#include "hugemm/runtime.h"

namespace hugemm {

namespace verbs_internal {
struct MrEntry;
class CacheCore;
class MrCacheTestPeer;
}  // namespace verbs_internal

// How registrations are made and given back: ibv_reg_mr and ibv_dereg_mr by default. A
// program may supply its own (another registration verb, a test's stand-in).
//
// Thread safety: must be thread-safe; Deregister may run on any thread, including one
// announcing a change to the memory (inside a notifier callback), so it must not call
// into the runtime.
class MrRegistrar {
 public:
  virtual ~MrRegistrar() = default;
  // Registers [addr, addr + length) of this process on `pd` for `access` (IBV_ACCESS_*).
  [[nodiscard]] virtual absl::StatusOr<ibv_mr*> Register(ibv_pd* pd, void* addr, size_t length,
                                                         int access) = 0;
  // Gives back what Register returned.
  [[nodiscard]] virtual absl::Status Deregister(ibv_mr* mr) = 0;

  // libibverbs' ibv_reg_mr / ibv_dereg_mr. Errors carry what the device said: EINVAL ->
  // InvalidArgument, ENOMEM -> ResourceExhausted, EFAULT -> FailedPrecondition, EACCES
  // and EPERM -> PermissionDenied, others -> Internal.
  static MrRegistrar& Verbs();
};

// What a miss registers.
enum class MrScope {
  // The backing mapping holding the address: a MapBuffer buffer whole, or the allocator
  // pool's extent (a native page) that Allocate carved the buffer from, shared by every
  // buffer carved from it. One registration serves them all, and is dropped when any
  // memory under it changes (a neighbour freed, say). Its keys reach the whole extent:
  // a peer given the rkey may write into every buffer carved from it, and, while a
  // handle keeps the dropped registration alive, into a neighbour freed and handed to a
  // new owner meanwhile. Registrations for remote access want kBuffer.
  kExtent,
  // The buffer holding the address: a MapBuffer buffer, or one Allocate folio.
  kBuffer,
};

struct MrCacheOptions {
  // Registrations (held or not) and registered bytes the cache keeps at most.
  size_t max_entries = 1024;
  uint64_t max_bytes = uint64_t{64} << 30;
  MrScope scope = MrScope::kExtent;
  // nullptr = MrRegistrar::Verbs(). Must outlive the cache and every handle.
  MrRegistrar* registrar = nullptr;
};

struct MrCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;           // Gets that registered
  uint64_t registrations = 0;    // Register calls that succeeded
  uint64_t deregistrations = 0;  // Deregister calls
  uint64_t invalidations = 0;    // registrations dropped because their memory changed
  uint64_t evictions = 0;        // registrations dropped to make room (LRU)
  size_t entries = 0;            // registrations alive (not yet deregistered)
  uint64_t bytes = 0;            // their registered bytes
  size_t held = 0;               // of which some handle holds
};

class MrCache;

// A registration held for a work request, with a pin on the folios under the requested
// bytes. Move-only; releasing it (or dropping it) unpins and lets the cache reuse,
// evict or deregister the registration. Neither the cache nor the runtime need outlive it
// (the runtime must outlive the cache): a handle left over when the cache goes away
// deregisters its registration itself, and one left over when the runtime goes too keeps
// the memory under it mapped until its release gives it back, after the deregistration.
//
// Thread safety: like a value: one thread at a time may use or release a handle.
class MrHandle {
 public:
  MrHandle() = default;
  ~MrHandle() { Release(); }
  MrHandle(MrHandle&& other) noexcept;
  MrHandle& operator=(MrHandle&& other) noexcept;
  MrHandle(const MrHandle&) = delete;
  MrHandle& operator=(const MrHandle&) = delete;

  explicit operator bool() const { return entry_ != nullptr; }
  // The registration: covers at least [addr(), addr() + length()). nullptr for a handle
  // that holds none (made empty, moved from or released), whose keys must not be read.
  ibv_mr* mr() const;
  uint32_t lkey() const { return mr()->lkey; }
  uint32_t rkey() const { return mr()->rkey; }
  // The bytes asked for, which the handle pins.
  const void* addr() const { return reinterpret_cast<const void*>(addr_); }
  size_t length() const { return length_; }
  // The folios pinned under them.
  absl::Span<const FolioSpan> spans() const { return spans_; }
  // Unpins and gives the registration back to the cache; idempotent.
  void Release();

 private:
  friend class verbs_internal::CacheCore;

  verbs_internal::MrEntry* entry_ = nullptr;
  uintptr_t addr_ = 0;
  size_t length_ = 0;
  bool dirty_ = false;  // pinned for writing: unpin marks the folios dirty
  absl::InlinedVector<FolioSpan, 2> spans_;
};

// Thread safety: thread-safe. Get, Flush and Stats may be called from any number of
// threads at once, while other threads free, split or re-protect the memory. A hit takes
// no lock but one shard's reader lock of the cache's address index, and makes no system
// call. Neither Get nor a handle's release may be called from inside a notifier callback.
// Destroying the cache must not race with any other call.
class MrCache {
 public:
  // InvalidArgument: max_entries or max_bytes is 0.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MrCache>> Create(
      Runtime& runtime, const MrCacheOptions& options = {});
  // Deregisters every registration no handle holds; a held one is deregistered when its
  // last handle is released. In a child of fork() of the process that made the cache the
  // registrations are the parent's too (one device context): the cache, Flush and the
  // handles' releases deregister nothing there.
  ~MrCache();
  MrCache(const MrCache&) = delete;
  MrCache& operator=(const MrCache&) = delete;

  // A registration on `pd` covering [addr, addr + length) with at least `access`
  // (IBV_ACCESS_LOCAL_WRITE, _REMOTE_WRITE, _REMOTE_READ, _REMOTE_ATOMIC, _MW_BIND,
  // _HUGETLB, _RELAXED_ORDERING), and a pin on the memory under those bytes (a write
  // pin when `access` lets anyone write).
  //   InvalidArgument: a null pd, an empty or wrapping range, unknown access bits,
  //     IBV_ACCESS_ON_DEMAND or IBV_ACCESS_ZERO_BASED, or a range that runs past the end
  //     of the buffer (or extent) holding `addr`.
  //   NotFound: memory that is not this runtime's (see above), or freed meanwhile.
  //   PermissionDenied: write access to memory mapped read-only.
  //   FailedPrecondition: a device-exclusive page in the range; in a child of fork() of
  //     the process that made the cache (runtime.h), which has none of its memory.
  //   ResourceExhausted: registering would pass max_entries or max_bytes and every
  //     registration is held, or the buffer (extent) alone is larger than max_bytes; or
  //     the device is out of resources.
  //   Unavailable: the memory kept changing while it was being registered.
  //   What the registrar returned otherwise, naming the request.
  // The registration stays in the cache after its last handle goes: release every handle
  // on `pd`, then Flush (or destroy the cache), before ibv_dealloc_pd, which fails with
  // EBUSY while the device still holds a registration on the PD.
  [[nodiscard]] absl::StatusOr<MrHandle> Get(ibv_pd* pd, const void* addr, size_t length,
                                             int access);

  // Deregisters every registration no handle holds. Returns how many it dropped.
  size_t Flush();
  [[nodiscard]] MrCacheStats Stats() const;
  const MrCacheOptions& options() const;

 private:
  friend class verbs_internal::MrCacheTestPeer;
  explicit MrCache(std::unique_ptr<verbs_internal::CacheCore> core);
  std::unique_ptr<verbs_internal::CacheCore> core_;
};

}  // namespace hugemm

#endif  // HUGEMM_VERBS_H_
