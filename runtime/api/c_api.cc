// The C API over hugemm::Runtime: statuses become negative errnos plus a thread-local
// message; C structs mirror the C++ ones field by field.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hugemm/hugemm.h"
#include "hugemm/runtime.h"
#include "runtime/api/c_bridge.h"
#include "runtime/api/kernel_pin_table.h"

struct hugemm_subscription {
  hugemm_runtime* rt = nullptr;  // null once its runtime is closed
  // Unsubscribed from inside a callback: its callbacks no longer run, and the
  // subscription ends once no announcement holds the registry (DrainDeferred).
  std::atomic<bool> muted{false};
  // The next of this thread's deferred ends (Deferred): the list is threaded through the
  // subscriptions themselves, so an unsubscribe inside a callback never needs the heap.
  hugemm_subscription* next_deferred = nullptr;
  std::unique_ptr<hugemm::RangeSubscription> sub;
};

namespace {

thread_local std::string g_last_error;
// The message of an exception a C function caught (CApiCaught), written without the heap
// (which may be what ran out); it wins over g_last_error while its first byte is not 0.
thread_local char g_caught[256];
std::mutex g_subscriptions_mu;

// A runtime's callbacks run under its notifier registry's lock, on the thread that
// changes the mapping; that lock is what subscribing, unsubscribing and unmapping take.
// So while callbacks run on this thread, their runtimes are recorded here, innermost
// last (a callback of one runtime may free memory of another, whose callbacks then run
// inside it): the calls that would wait for the lock of any of them refuse (EDEADLK)
// instead of hanging, and an unsubscribe is muted at once and finished after the
// announcement.
// Room for a few inline: entering a callback needs no heap (which may be what ran out).
thread_local absl::InlinedVector<const hugemm_runtime*, 8> t_in_callbacks_of;

bool InCallback() { return !t_in_callbacks_of.empty(); }

// The subscriptions this thread unsubscribed from inside a callback, ended on its next
// call that may take the lock (and at thread exit).
struct Deferred {
  hugemm_subscription* first = nullptr;
  ~Deferred();
};
thread_local Deferred t_deferred;

int NegativeErrnoOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return -EINVAL;
    case absl::StatusCode::kNotFound:
      return -ENOENT;
    case absl::StatusCode::kAlreadyExists:
      return -EEXIST;
    case absl::StatusCode::kPermissionDenied:
      return -EPERM;
    case absl::StatusCode::kResourceExhausted:
      return -ENOMEM;
    case absl::StatusCode::kFailedPrecondition:
      return -EFAULT;
    case absl::StatusCode::kUnavailable:
      return -EAGAIN;
    case absl::StatusCode::kUnimplemented:
      return -EOPNOTSUPP;
    default:
      return -EIO;
  }
}

using hugemm::c_api_internal::Fail;
using hugemm::c_api_internal::Ok;

void EndSubscription(hugemm_subscription* sub) {
  hugemm_runtime* rt = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_subscriptions_mu);
    rt = sub->rt;
    if (rt != nullptr) {
      rt->subscriptions.erase(sub);
      ++rt->ending;
    }
  }
  delete sub;  // leaves rt's registry, which hugemm_close keeps until then
  if (rt != nullptr) {
    std::lock_guard<std::mutex> lock(g_subscriptions_mu);
    if (--rt->ending == 0) rt->ended.notify_all();
  }
}

// Ends what this thread unsubscribed inside callbacks, unless it is inside one now.
void DrainDeferred() {
  if (InCallback()) return;
  hugemm_subscription* s = std::exchange(t_deferred.first, nullptr);
  while (s != nullptr) EndSubscription(std::exchange(s, s->next_deferred));
}

Deferred::~Deferred() { DrainDeferred(); }

// -EDEADLK when this thread runs a callback of `rt`, whose lock `what` would wait for: the
// innermost callback's own runtime, or one whose callback this thread runs further out.
int RefuseInCallback(const hugemm_runtime* rt, const char* what) {
  const auto& in = t_in_callbacks_of;
  if (std::find(in.begin(), in.end(), rt) == in.end()) return 0;
  return Fail(EDEADLK, absl::StrCat(what,
                                    in.back() == rt
                                        ? ": called from a notifier callback of this runtime"
                                        : ": called from a notifier callback of another runtime, "
                                          "inside one of this runtime's",
                                    ", which runs under the lock this call takes; call it after "
                                    "the callback returns"));
}

bool ToKind(int backing, hugemm::BackingKind* out) {
  switch (backing) {
    case HUGEMM_BACKING_HUGETLB:
      *out = hugemm::BackingKind::kHugetlb;
      return true;
    case HUGEMM_BACKING_HUGETLBFS:
      *out = hugemm::BackingKind::kHugetlbfs;
      return true;
    case HUGEMM_BACKING_DEVDAX:
      *out = hugemm::BackingKind::kDevDax;
      return true;
    case HUGEMM_BACKING_ANON:
      *out = hugemm::BackingKind::kAnon;
      return true;
  }
  return false;
}

int FromKind(hugemm::BackingKind kind) {
  switch (kind) {
    case hugemm::BackingKind::kHugetlb:
      return HUGEMM_BACKING_HUGETLB;
    case hugemm::BackingKind::kHugetlbfs:
      return HUGEMM_BACKING_HUGETLBFS;
    case hugemm::BackingKind::kDevDax:
      return HUGEMM_BACKING_DEVDAX;
    case hugemm::BackingKind::kAnon:
      return HUGEMM_BACKING_ANON;
  }
  return -1;
}

int BufferOptionsFrom(const char* fn, const hugemm_buffer_options* in, hugemm::BufferOptions* out) {
  if (in == nullptr) return 0;
  if (!ToKind(in->backing, &out->backing)) {
    return Fail(EINVAL, absl::StrCat(fn, ": unknown backing ", in->backing));
  }
  out->page_size = in->page_size;
  out->node = in->node;
  if (in->path != nullptr) {
    if (out->backing == hugemm::BackingKind::kDevDax) out->devdax_path = in->path;
    if (out->backing == hugemm::BackingKind::kHugetlbfs) out->file_name = in->path;
  }
  return 0;
}

void FillBuffer(const hugemm::Buffer& b, hugemm_buffer* out) {
  out->data = b.data();
  out->size = b.size();
  out->folio_size = b.folio_size();
}

}  // namespace

int hugemm::bridge::CApiFail(const absl::Status& status) {
  // A failure path handed an OK status (a lookup that succeeded on its second try, say)
  // must not read as success, or as an index or a count of 0.
  g_caught[0] = '\0';
  if (status.ok()) [[unlikely]] {
    g_last_error = "internal error: a failure was reported with an OK status";
    return -EIO;
  }
  // Assigned into the thread's buffer: a message needs the heap only when it is longer
  // than every earlier one, and the thread holds one buffer however many calls fail.
  g_last_error.assign(status.message().data(), status.message().size());
  // No descriptor left is the kernel's own answer, whatever call opened one: absl files
  // it under ResourceExhausted, which would read as "no memory" here.
  if (const int err = ErrnoOf(status); err == EMFILE || err == ENFILE) return -err;
  return NegativeErrnoOf(status.code());
}

int hugemm::bridge::CApiFail(const char* fn, const absl::Status& status) {
  const int rc = CApiFail(status);
  if (!status.ok() && !absl::StartsWith(g_last_error, fn)) {
    // Strong guarantee: on std::bad_alloc the message stays the status's alone, and the
    // C function's handler answers -ENOMEM.
    g_last_error.insert(0, ": ").insert(0, fn);
  }
  return rc;
}

int hugemm::bridge::CApiFail(int err, std::string message) {
  g_caught[0] = '\0';
  g_last_error.assign(message);
  return -err;
}

int hugemm::bridge::CApiOk() {
  g_caught[0] = '\0';
  g_last_error.clear();
  return 0;
}

int hugemm::bridge::CApiCaught(const char* fn) noexcept {
  int err = EIO;
  const char* what = "an unexpected exception";
  try {
    throw;
  } catch (const std::bad_alloc&) {
    err = ENOMEM;
    what = "out of memory (the heap, or the address space RLIMIT_AS allows)";
  } catch (const std::system_error& e) {
    if (e.code().category() == std::generic_category() ||
        e.code().category() == std::system_category()) {
      err = e.code().value() > 0 ? e.code().value() : EIO;
    }
    what = e.what();
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  std::snprintf(g_caught, sizeof g_caught, "%s: %s", fn, what);
  return -err;
}

void hugemm::bridge::CApiCaughtInVoid(const char* fn) noexcept {
  (void)CApiCaught(fn);
  std::fprintf(stderr, "hugemm: %s\n", g_caught);
}

extern "C" {

const char* hugemm_last_error(void) {
  return g_caught[0] != '\0' ? g_caught : g_last_error.c_str();
}

int hugemm_open(const hugemm_options* options, hugemm_runtime** out) try {
  HUGEMM_C_CHECK(out != nullptr, "hugemm_open: out is NULL");
  *out = nullptr;
  hugemm::RuntimeOptions ro;
  if (options != nullptr) {
    if (options->refcount != HUGEMM_REFCOUNT_FOLIO && options->refcount != HUGEMM_REFCOUNT_PAGE) {
      return Fail(EINVAL, absl::StrCat("hugemm_open: unknown refcount mode ", options->refcount));
    }
    ro.refcount = options->refcount == HUGEMM_REFCOUNT_PAGE ? hugemm::RefGranularity::kPage
                                                            : hugemm::RefGranularity::kFolio;
    ro.kernel_pins = options->kernel_pins != 0;
  }
  // The Runtime's own tables come from the heap, which may be out (an RLIMIT_AS nearly
  // reached): the std::bad_alloc ends here as -ENOMEM (HUGEMM_C_CATCH), and whatever was
  // made is freed on its way.
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open(ro);
  // What fails here is the kernel's refusal (the io_uring of the kernel pins, a file):
  // its own errno, as hugemm.h promises, not the status code's.
  if (!rt.ok()) return hugemm::bridge::CApiFailKernel(__func__, rt.status());
  *out = new hugemm_runtime{std::move(*rt)};
  return Ok();
}
HUGEMM_C_CATCH

void hugemm_close(hugemm_runtime* rt) try {
  if (rt == nullptr) return;
  const bool forked_child = rt->rt->kernel_pin_table().InForkedChild();
  {
    // The layers above first: their handles use the Runtime until their closers end that.
    // No lock in a child of fork(): it has no other thread, and a parent's thread may have
    // held it at the fork.
    std::unique_lock<std::mutex> lock(rt->closers_mu, std::defer_lock);
    if (!forked_child) lock.lock();
    for (auto& [handle, close] : rt->closers) {
      try {
        close();
      } catch (...) {
        hugemm::bridge::CApiCaughtInVoid("hugemm_close");  // the rest still close
      }
    }
    rt->closers.clear();
  }
  if (forked_child) {
    // A child of fork(): the Runtime leaves everything to the child's exit, and so do its
    // subscriptions (ending one takes a lock another of the parent's threads may have held
    // at the fork). Their handles stay valid for hugemm_unsubscribe, which frees them only.
    // No lock: the child has no other thread.
    for (hugemm_subscription* s : rt->subscriptions) {
      (void)s->sub.release();
      s->rt = nullptr;
    }
    delete rt;
    return;
  }
  DrainDeferred();
  // One subscription at a time, each ended outside the lock (a callback running now may
  // unsubscribe): no list is made, so a close never needs the heap for it.
  for (;;) {
    std::unique_ptr<hugemm::RangeSubscription> sub;
    {
      std::unique_lock<std::mutex> lock(g_subscriptions_mu);
      if (rt->subscriptions.empty()) {
        // Ends another thread has under way (a deferred end it finishes in a call on
        // another runtime, or at its exit) still use the registry.
        rt->ended.wait(lock, [rt] { return rt->ending == 0; });
        break;
      }
      auto it = rt->subscriptions.begin();
      sub = std::move((*it)->sub);
      (*it)->rt = nullptr;
      rt->subscriptions.erase(it);
    }
  }
  delete rt;
}
HUGEMM_C_CATCH_VOID

int hugemm_map_buffer(hugemm_runtime* rt, size_t length, const hugemm_buffer_options* options,
                      hugemm_buffer* out) try {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_map_buffer: NULL runtime or out");
  hugemm::BufferOptions bo;
  if (int rc = BufferOptionsFrom(__func__, options, &bo)) return rc;
  absl::StatusOr<hugemm::Buffer> b = rt->rt->MapBuffer(length, bo);
  if (!b.ok()) return Fail(__func__, b.status());
  FillBuffer(*b, out);
  b->Detach();
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_alloc(hugemm_runtime* rt, size_t bytes, const hugemm_buffer_options* options,
                 int uninitialized, hugemm_buffer* out) try {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_alloc: NULL runtime or out");
  hugemm::BufferOptions bo;
  if (int rc = BufferOptionsFrom(__func__, options, &bo)) return rc;
  hugemm::AllocOptions ao;
  ao.backing = bo.backing;
  ao.page_size =
      bo.page_size ? bo.page_size
                   : (bo.backing == hugemm::BackingKind::kAnon
                          ? hugemm::kPageSize4K
                          : (bo.backing == hugemm::BackingKind::kDevDax ? 0 : hugemm::kPageSize2M));
  ao.node = bo.node;
  ao.zero = uninitialized == 0;
  ao.devdax_path = bo.devdax_path;
  absl::StatusOr<hugemm::Buffer> b = rt->rt->Allocate(bytes, ao);
  if (!b.ok()) return Fail(__func__, b.status());
  FillBuffer(*b, out);
  b->Detach();
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_free(hugemm_runtime* rt, void* data) try {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_free: NULL runtime");
  if (int rc = RefuseInCallback(rt, "hugemm_free")) return rc;
  const absl::Status st = rt->rt->Free(data);
  DrainDeferred();
  return st.ok() ? Ok() : Fail(__func__, st);
}
HUGEMM_C_CATCH

long hugemm_trim(hugemm_runtime* rt) try {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_trim: NULL runtime");
  if (int rc = RefuseInCallback(rt, "hugemm_trim")) return rc;
  const size_t bytes = rt->rt->allocator().Shrink();
  DrainDeferred();
  Ok();
  return static_cast<long>(std::min<size_t>(bytes, LONG_MAX));
}
HUGEMM_C_CATCH

int hugemm_register_external(hugemm_runtime* rt, void* addr, size_t length, uint64_t* id) try {
  HUGEMM_C_CHECK(rt != nullptr && id != nullptr, "hugemm_register_external: NULL argument");
  if (int rc = RefuseInCallback(rt, "hugemm_register_external")) return rc;
  absl::StatusOr<uint64_t> r = rt->rt->RegisterExternal(addr, length);
  if (!r.ok()) return Fail(__func__, r.status());
  *id = *r;
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_unregister_external(hugemm_runtime* rt, uint64_t id) try {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_unregister_external: NULL runtime");
  if (int rc = RefuseInCallback(rt, "hugemm_unregister_external")) return rc;
  const absl::Status st = rt->rt->UnregisterExternal(id);
  DrainDeferred();
  return st.ok() ? Ok() : Fail(__func__, st);
}
HUGEMM_C_CATCH

int hugemm_maybe_dma_pinned(hugemm_runtime* rt, const void* addr) {
  if (rt == nullptr) return 0;
  return rt->rt->pinner().MaybeDmaPinned(addr) ? 1 : 0;
}

int hugemm_translate(hugemm_runtime* rt, const void* addr, uint64_t max_run,
                     hugemm_translation* out) try {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_translate: NULL runtime or out");
  std::optional<hugemm::Translation> t = rt->rt->Translate(addr, max_run);
  if (!t) {
    return Fail(ENOENT,
                absl::StrCat("hugemm_translate: 0x", absl::Hex(reinterpret_cast<uintptr_t>(addr)),
                             " is not mapped by hugemm"));
  }
  out->pfn = t->pfn;
  out->run_bytes = t->run_bytes;
  out->leaf_bytes = t->leaf_bytes;
  out->level = t->level;
  out->exclusive = t->exclusive ? 1 : 0;
  out->folio = t->folio;
  out->page = static_cast<uint32_t>(t->page);
  return Ok();
}
HUGEMM_C_CATCH

int hugemm_folio_info_at(hugemm_runtime* rt, const void* addr, hugemm_folio_info* out) try {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_folio_info_at: NULL runtime or out");
  absl::StatusOr<hugemm::FolioInfo> info = rt->rt->FolioInfoAt(addr);
  if (!info.ok()) return Fail(__func__, info.status());
  out->data = info->data;
  out->size = info->size;
  out->head_pfn = info->head_pfn;
  out->refcount = info->refcount;
  out->pincount = info->pincount;
  out->flags = info->flags;
  out->order = info->order;
  out->node = info->node;
  out->backing = FromKind(info->backing);
  out->meta_in_reserve = info->meta_in_reserve ? 1 : 0;
  return Ok();
}
HUGEMM_C_CATCH

long hugemm_verify(hugemm_runtime* rt, const void* addr, size_t length,
                   hugemm_verify_report* out) try {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_verify: NULL runtime");
  HUGEMM_C_CHECK(length > 0, "hugemm_verify: empty range");
  HUGEMM_C_CHECK(length <= UINTPTR_MAX - reinterpret_cast<uintptr_t>(addr),
                 "hugemm_verify: the range wraps the address space");
  absl::StatusOr<hugemm::VerifyReport> r = rt->rt->Verify(addr, length);
  if (!r.ok()) return Fail(__func__, r.status());
  size_t leaves = 0;
  for (const auto& [bytes, n] : r->leaves_checked) leaves += n;
  if (leaves == 0) {
    return Fail(ENOENT,
                absl::StrCat("hugemm_verify: [0x", absl::Hex(reinterpret_cast<uintptr_t>(addr)),
                             ", +0x", absl::Hex(length), ") holds nothing hugemm maps"));
  }
  if (out != nullptr) {
    out->leaves_checked = leaves;
    out->mismatches = r->mismatches.size();
    out->first_mismatch =
        r->mismatches.empty() ? nullptr : reinterpret_cast<void*>(r->mismatches.front().va);
    out->pfns_hidden = r->pfns_hidden;
    out->pfns_checked = r->pfns_checked ? 1 : 0;
    out->flags_checked = r->flags_checked ? 1 : 0;
  }
  Ok();
  if (r->mismatches.empty()) return 0;
  // A finding, not a failure: the count, and the first mismatch for the message.
  (void)Fail(0,
             absl::StrCat(r->mismatches.size(), " mismatch", r->mismatches.size() == 1 ? "" : "es",
                          "; the first: ", r->mismatches.front().what));
  return static_cast<long>(std::min<size_t>(r->mismatches.size(), LONG_MAX));
}
HUGEMM_C_CATCH

int hugemm_subscribe(hugemm_runtime* rt, const void* addr, size_t length,
                     hugemm_invalidate_fn start, hugemm_invalidate_fn end, void* user,
                     hugemm_subscription** out, const volatile uint64_t** sequence) try {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_subscribe: NULL runtime or out");
  HUGEMM_C_CHECK(length > 0, "hugemm_subscribe: empty range");
  HUGEMM_C_CHECK(length <= UINTPTR_MAX - reinterpret_cast<uintptr_t>(addr),
                 "hugemm_subscribe: the range wraps the address space");
  if (int rc = RefuseInCallback(rt, "hugemm_subscribe")) return rc;
  DrainDeferred();
  // Until it is in the runtime's set and subscribed, the handle is this call's to free: a
  // throw (the heap ran out) on the way leaves no subscription and no handle.
  auto owned = std::make_unique<hugemm_subscription>();
  hugemm_subscription* const s = owned.get();
  s->rt = rt;
  hugemm::NotifierCallbacks cb;
  auto wrap = [rt, s,
               user](hugemm_invalidate_fn fn) -> std::function<void(const hugemm::Invalidation&)> {
    if (fn == nullptr) return nullptr;
    return [rt, s, fn, user](const hugemm::Invalidation& inv) {
      if (s->muted.load(std::memory_order_acquire)) return;
      t_in_callbacks_of.push_back(rt);
      fn(user, reinterpret_cast<const void*>(inv.va), inv.length, static_cast<int>(inv.reason));
      t_in_callbacks_of.pop_back();
    };
  };
  cb.invalidate_start = wrap(start);
  cb.invalidate_end = wrap(end);
  {
    std::lock_guard<std::mutex> lock(g_subscriptions_mu);
    rt->subscriptions.insert(s);
  }
  try {
    s->sub = rt->rt->Subscribe(addr, length, std::move(cb));
  } catch (...) {
    std::lock_guard<std::mutex> lock(g_subscriptions_mu);
    rt->subscriptions.erase(s);
    throw;
  }
  owned.release();
  if (sequence != nullptr) {
    // std::atomic<uint64_t> is lock-free and has uint64_t's representation here.
    static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t));
    *sequence = reinterpret_cast<const volatile uint64_t*>(&s->sub->sequence());
  }
  *out = s;
  return Ok();
}
HUGEMM_C_CATCH

void hugemm_unsubscribe(hugemm_subscription* sub) try {
  if (sub == nullptr) return;
  if (InCallback()) {
    // Ending it here would wait for the lock this announcement holds (if it is this
    // runtime's) or end a subscription under another runtime's announcement: mute it now
    // and end it after.
    sub->muted.store(true, std::memory_order_release);
    sub->next_deferred = std::exchange(t_deferred.first, sub);
    return;
  }
  DrainDeferred();
  EndSubscription(sub);
}
HUGEMM_C_CATCH_VOID

}  // extern "C"
