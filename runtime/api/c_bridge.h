// What the C APIs of the layers above (hugemm_verbs.h, ...) share with hugemm.h's: the
// runtime handle's layout and this thread's last error, so that their functions follow
// hugemm.h's conventions (a negative errno, and the message hugemm_last_error() returns).
// The functions are in namespace hugemm::bridge: libhugemm.so exports CApiFail and CApiOk
// by name (cmake/libhugemm.map) for libhugemm-verbs.so, whose C API must set the one
// last error of libhugemm's. They are no API: no installed header declares them.
#ifndef HUGEMM_RUNTIME_API_C_BRIDGE_H_
#define HUGEMM_RUNTIME_API_C_BRIDGE_H_

#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hugemm/hugemm.h"
#include "hugemm/os.h"
#include "hugemm/runtime.h"

namespace hugemm::c_api_internal {

// What each hugemm_pin_segments took, by (start, length, kind), oldest first: segments
// name no folios, and once the buffer is freed (or after a partial pin) the table can no
// longer say what the pin took. hugemm_unpin_range gives back the oldest record of its
// range; one that finds none walks the table, and must leave alone the pins the records
// hold: those go back by their records, and taken by a walk they would go twice. So the
// log also counts, per folio and kind, the references its records hold. Thread-safe.
class SegmentPins {
 public:
  using Key = std::tuple<uintptr_t, size_t, RefKind>;

  // Takes `spans` into the log. All or nothing: should the heap run out, the log is as it
  // was and `spans` still holds the pins (the caller's to give back) when the exception
  // leaves.
  void Add(const Key& key, std::vector<FolioSpan>& spans) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = records_.emplace(key, std::vector<FolioSpan>());
    it->second.swap(spans);
    try {
      Count(std::get<2>(key), it->second, +1);
    } catch (...) {
      spans.swap(it->second);
      records_.erase(it);
      throw;
    }
  }
  // The oldest record of `key`, taken out of the log; false when there is none.
  bool Take(const Key& key, std::vector<FolioSpan>* spans) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return false;
    *spans = std::move(it->second);
    records_.erase(it);
    Count(std::get<2>(key), *spans, -1);
    return true;
  }
  // The references of `kind` the records hold on `folio`.
  int64_t Held(const Folio* folio, RefKind kind) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto& held = held_[static_cast<int>(kind)];
    auto it = held.find(folio);
    return it == held.end() ? 0 : it->second;
  }

 private:
  // All or nothing too: a count that cannot be made takes back those made before it (a
  // decrement finds its entry, so it allocates nothing).
  void Count(RefKind kind, const std::vector<FolioSpan>& spans, int sign) {
    auto& held = held_[static_cast<int>(kind)];
    auto add = [&held](const FolioSpan& s, int64_t delta) {
      int64_t& n = held[s.folio];
      n += delta;
      if (n == 0) held.erase(s.folio);
    };
    size_t done = 0;
    try {
      for (; done < spans.size(); ++done) {
        add(spans[done], sign * static_cast<int64_t>(spans[done].pages));
      }
    } catch (...) {
      while (done-- > 0) add(spans[done], -sign * static_cast<int64_t>(spans[done].pages));
      throw;
    }
  }

  mutable std::mutex mu_;
  std::multimap<Key, std::vector<FolioSpan>> records_;
  std::unordered_map<const Folio*, int64_t> held_[2];  // by RefKind
};

}  // namespace hugemm::c_api_internal

struct hugemm_runtime {
  std::unique_ptr<hugemm::Runtime> rt;

  // hugemm_pin_segments' (and hugemm_vfio_pin_segments') pins, for hugemm_unpin_range.
  hugemm::c_api_internal::SegmentPins segment_pins;

  // The subscriptions still open: hugemm_close ends them (their registry goes with the
  // Runtime), so that a later hugemm_unsubscribe frees only the handle. Guarded by the C
  // API's subscription mutex, which also guards each subscription's `rt`.
  std::set<hugemm_subscription*> subscriptions;
  // Subscriptions taken out of `subscriptions` and still leaving the registry: a deferred
  // end (hugemm_unsubscribe inside a callback) finishes on the thread's next call, which
  // may be a call on another runtime while this one closes. hugemm_close waits for them.
  // Guarded by the same mutex.
  int ending = 0;
  std::condition_variable ended;

  // Handles of the layers above that use the Runtime (hugemm_io, ...), each with what ends
  // that use: hugemm_close calls it before the Runtime goes, so that the handle stays
  // valid for its own release call alone. Guarded by `closers_mu`, which is held while a
  // closer runs.
  std::mutex closers_mu;
  std::map<const void*, std::function<void()>> closers;
};

namespace hugemm::bridge {

// Sets this thread's message to the status's and returns its negative errno:
// InvalidArgument and OutOfRange -EINVAL, NotFound -ENOENT, AlreadyExists -EEXIST,
// PermissionDenied -EPERM, ResourceExhausted -ENOMEM, FailedPrecondition -EFAULT,
// Unavailable -EAGAIN, Unimplemented -EOPNOTSUPP, anything else -EIO; but -EMFILE and
// -ENFILE where the status keeps that errno (ErrnoOf: no descriptor was left). An OK
// status is a caller's mistake and gives -EIO, never 0.
int CApiFail(const absl::Status& status);
// The same for a failure from the layers below a C function `fn` (its __func__), whose
// message names what was wrong but not the call: the message becomes "<fn>: <message>"
// (unless it starts with `fn` already).
int CApiFail(const char* fn, const absl::Status& status);
// Sets this thread's message and returns -err.
int CApiFail(int err, std::string message);
// Clears this thread's message and returns 0.
int CApiOk();
// For the handler of everything a C function may throw (HUGEMM_C_CATCH): sets this
// thread's message to "<fn>: <what was thrown>", written without the heap (which may be
// what ran out), and returns the negative errno: -ENOMEM for std::bad_alloc, a
// std::system_error's errno, -EIO for anything else. Only inside a catch handler.
int CApiCaught(const char* fn) noexcept;
// The same for a function that returns nothing (HUGEMM_C_CATCH_VOID), which has no other
// way to tell: the message also goes to stderr, without the heap.
void CApiCaughtInVoid(const char* fn) noexcept;
// The kernel's own errno where the status keeps one (ErrnoOf: a syscall or an ioctl said
// no), else CApiFail(status): for the consumer layers, whose errors are mostly the kernel's.
inline int CApiFailKernel(const char* fn, const absl::Status& status) {
  const int err = ErrnoOf(status);
  if (err == 0) return CApiFail(fn, status);
  return CApiFail(err, absl::StartsWith(status.message(), fn)
                           ? std::string(status.message())
                           : absl::StrCat(fn, ": ", status.message()));
}

// The handles of the layers above (hugemm_io, hugemm_vfio, hugemm_mr_cache) share one
// shape: a struct with `rt`, the runtime until its use ends, and an object that uses it,
// held by the unique_ptr member `Object`. Its use ends at the handle's release call or at
// hugemm_close, whichever comes first (see hugemm_runtime::closers); after the close the
// handle answers CApiClosed to everything but its release call.

// Ends `handle`'s use of its runtime: its object goes, and so does `rt`.
template <auto Object, typename Handle>
void CApiEndUse(Handle* handle) {
  (handle->*Object).reset();
  handle->rt = nullptr;
}
// A new handle of `rt`: hugemm_close ends its use if its release call has not. When the
// heap has no room to record it, the handle is freed (its object ends with it) and the
// throw goes on to the C function's catch: the call then fails having kept nothing.
template <auto Object, typename Handle>
void CApiAdopt(hugemm_runtime* rt, Handle* handle) {
  try {
    std::lock_guard<std::mutex> lock(rt->closers_mu);
    rt->closers.emplace(handle, [handle] { CApiEndUse<Object>(handle); });
  } catch (...) {
    delete handle;
    throw;
  }
}
// The handle's release call: ends its use, unless hugemm_close did, and frees it.
template <auto Object, typename Handle>
void CApiRelease(Handle* handle) {
  if (handle == nullptr) return;
  if (hugemm_runtime* rt = handle->rt; rt != nullptr) {
    {
      std::lock_guard<std::mutex> lock(rt->closers_mu);
      rt->closers.erase(handle);
    }
    CApiEndUse<Object>(handle);
  }
  delete handle;
}
// For a call on a handle whose runtime is closed: -EINVAL, naming the call, what the
// handle is ("io", "mapper", "cache") and the one call left for it.
inline int CApiClosed(const char* fn, const char* what, const char* release) {
  return CApiFail(EINVAL, absl::StrCat(fn, ": the runtime of this ", what,
                                       " is closed (hugemm_close); only ", release, " is left"));
}

}  // namespace hugemm::bridge

namespace hugemm::c_api_internal {

// Shorthands for hugemm.h's own functions (c_api.cc, c_api_pin.cc).
inline int Fail(const absl::Status& status) { return bridge::CApiFail(status); }
inline int Fail(const char* fn, const absl::Status& status) { return bridge::CApiFail(fn, status); }
inline int Fail(int err, std::string message) { return bridge::CApiFail(err, std::move(message)); }
inline int Ok() { return bridge::CApiOk(); }

}  // namespace hugemm::c_api_internal

// The handler of a C function's function-try-block: no exception leaves a C function.
//   int hugemm_x(...) try { ... } HUGEMM_C_CATCH
#define HUGEMM_C_CATCH                             \
  catch (...) {                                    \
    return ::hugemm::bridge::CApiCaught(__func__); \
  }
// The same for a function that returns nothing: it must not throw at all, and what it
// could not do is said on stderr (and by hugemm_last_error).
#define HUGEMM_C_CATCH_VOID                       \
  catch (...) {                                   \
    ::hugemm::bridge::CApiCaughtInVoid(__func__); \
  }

// Returns -EINVAL with `what` as this thread's message unless `cond` holds.
#define HUGEMM_C_CHECK(cond, what)                                      \
  do {                                                                  \
    if (!(cond)) return ::hugemm::c_api_internal::Fail(EINVAL, (what)); \
  } while (0)

#endif  // HUGEMM_RUNTIME_API_C_BRIDGE_H_
