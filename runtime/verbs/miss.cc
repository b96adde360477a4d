// The miss path: which range to register, the subscription that hears of its changes,
// the pin under the handle, the registration, and the checks that nothing changed
// between them.
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "runtime/verbs/cache_core.h"

namespace hugemm::verbs_internal {
namespace {

void* Ptr(uintptr_t a) { return reinterpret_cast<void*>(a); }

}  // namespace

absl::Status CacheCore::Pin(MrHandle& h, GupFlags flags) {
  Pinner& pinner = runtime_.pinner();
  // Most requests lie in one or two folios: the handle's inline spans first.
  h.spans_.resize(2);
  absl::StatusOr<size_t> n =
      pinner.PinFolios(Ptr(h.addr_), h.length_, flags, absl::MakeSpan(h.spans_));
  if (n.ok()) {
    h.spans_.resize(*n);
    return absl::OkStatus();
  }
  h.spans_.clear();
  if (n.status().code() != absl::StatusCode::kResourceExhausted) return n.status();
  // More folios: into a vector that grows with the folios pinned, never with the length
  // asked for (which, for registered memory, nothing has bounded yet).
  std::vector<FolioSpan> spans;
  n = pinner.PinFolios(Ptr(h.addr_), h.length_, flags, &spans);
  if (!n.ok()) return n.status();
  try {
    h.spans_.assign(spans.begin(), spans.end());
  } catch (...) {
    h.spans_.clear();
    pinner.UnpinFolios(spans, RefKind::kPin);
    throw;
  }
  return absl::OkStatus();
}

absl::StatusOr<Unit> CacheCore::UnitOf(uintptr_t addr, size_t length) {
  absl::StatusOr<BufferSpan> span = runtime_.BufferAt(Ptr(addr));
  if (span.ok()) {
    Unit unit{.buffer_id = span->id};
    const bool extent = options_.scope == MrScope::kExtent;
    unit.start = reinterpret_cast<uintptr_t>(extent ? span->extent_data : span->data);
    unit.length = extent ? span->extent_size : span->size;
    if (addr + length > unit.start + unit.length) {
      return absl::InvalidArgumentError(
          absl::StrCat("MrCache::Get: [0x", absl::Hex(addr), ", +", length,
                       ") runs past the end of the ", extent ? "extent" : "buffer",
                       " holding it, [0x", absl::Hex(unit.start), ", +", unit.length, ")"));
    }
    return unit;
  }
  if (span.status().code() != absl::StatusCode::kNotFound) return span.status();
  // Memory registered with RegisterExternal: the request itself, in whole base pages.
  if (!runtime_.Translate(Ptr(addr))) {
    return absl::NotFoundError(
        absl::StrCat("MrCache::Get: 0x", absl::Hex(addr),
                     " is not memory of this runtime (MapBuffer, Allocate or RegisterExternal): "
                     "the cache registers only memory whose changes it hears of"));
  }
  const uintptr_t start = addr & ~uintptr_t{kPageSize4K - 1};
  const uintptr_t end = (addr + length + kPageSize4K - 1) & ~uintptr_t{kPageSize4K - 1};
  return Unit{.start = start, .length = end - start};
}

bool CacheCore::SameUnit(const Unit& unit, uintptr_t addr) {
  if (unit.buffer_id == 0) return true;  // external: the pin that follows checks the mapping
  absl::StatusOr<BufferSpan> now = runtime_.BufferAt(Ptr(addr));
  return now.ok() && now->id == unit.buffer_id;
}

absl::StatusOr<MrHandle> CacheCore::Miss(ibv_pd* pd, uintptr_t addr, size_t length, int access,
                                         GupFlags flags, bool* raced) {
  *raced = false;
  Reap();
  absl::StatusOr<Unit> unit = UnitOf(addr, length);
  if (!unit.ok()) return unit.status();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status st = Reserve(unit->length); !st.ok()) return st;
  }

  // From here every way out gives back what it took, a throw's too (the heap ran out):
  // the index and the list, the registration, the pins, the subscription, the reservation.
  std::unique_ptr<MrEntry> entry;
  MrEntry* e = nullptr;
  MrHandle h;
  bool registered = false;
  bool listed = false;
  auto undo = [&] {
    if (listed) {
      std::lock_guard<std::mutex> lock(mu_);
      index_.Erase(e);
      all_.erase(e);
    }
    if (registered) {
      (void)registrar_.Deregister(e->mr);
      deregistrations_.fetch_add(1, std::memory_order_relaxed);
    }
    runtime_.pinner().UnpinFolios(h.spans_, RefKind::kPin);
    h.spans_.clear();
    entry.reset();  // unsubscribes: no callback of it runs after this
    Unreserve(unit->length);
  };
  auto fail = [&](absl::Status st, bool race) -> absl::Status {
    undo();
    *raced = race;
    return st;
  };
  try {
    entry = std::make_unique<MrEntry>();
    e = entry.get();
    e->core = this;
    e->registrar = &registrar_;
    e->pd = pd;
    e->start = unit->start;
    e->length = unit->length;
    e->access = access;
    e->state.store(2, std::memory_order_relaxed);  // the cache's reference and this handle's
    // Subscribed before anything is read: every change from here on bumps the word.
    e->sub = std::make_unique<RangeSubscription>(
        runtime_.table().notifiers(), Ptr(e->start), e->length,
        NotifierCallbacks{.invalidate_start = [this, e](const Invalidation&) { OnInvalidate(e); }});
    e->seq = e->sub->sequence().load(std::memory_order_acquire);
    auto unchanged = [e] { return e->sub->sequence().load(std::memory_order_acquire) == e->seq; };

    h.addr_ = addr;
    h.length_ = length;
    h.dirty_ = HasAny(flags, kGupWrite);
    // The unit was found before the subscription: it must still be the same buffer, and
    // no change may be under way.
    if (!RangeSubscription::Stable(e->seq) || !SameUnit(*unit, addr)) {
      return fail(absl::AbortedError("changed"), true);
    }
    if (absl::Status st = Pin(h, flags); !st.ok()) return fail(st, !unchanged());
    absl::StatusOr<ibv_mr*> mr = registrar_.Register(pd, Ptr(e->start), e->length, access);
    if (!mr.ok()) {
      return fail(absl::Status(
                      mr.status().code(),
                      absl::StrCat("MrCache::Get: registering [0x", absl::Hex(e->start), ", +",
                                   e->length, ") for [0x", absl::Hex(addr), ", +", length,
                                   "), access 0x", absl::Hex(access), ": ", mr.status().message())),
                  !unchanged());
    }
    e->mr = *mr;
    registered = true;
    registrations_.fetch_add(1, std::memory_order_relaxed);
    // It may have registered memory mid-change: throw it away and look again.
    if (!unchanged()) return fail(absl::AbortedError("changed"), true);
    {
      std::lock_guard<std::mutex> lock(mu_);
      all_.insert(e);
      listed = true;
      index_.Insert(e);  // throws having listed it nowhere
    }
  } catch (...) {
    undo();
    throw;
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  h.entry_ = entry.release();
  return h;
}

}  // namespace hugemm::verbs_internal
