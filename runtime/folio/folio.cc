// The reference arithmetic of a folio head. Each operation is one atomic on the hot
// path; CAS loops appear only where the kernel also needs them (try_get must not raise
// a zero count, and no count may wrap).
#include "hugemm/folio.h"

#include "absl/strings/str_cat.h"

namespace hugemm {
namespace {

constexpr int32_t kMaxCount = std::numeric_limits<int32_t>::max();

absl::Status Overflow(const Folio* folio, int64_t have, int64_t add, const char* what) {
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " of the ", PageSizeName(folio->size()), " folio at ",
      absl::Hex(reinterpret_cast<uintptr_t>(folio->data)), " would overflow: ", have, " + ", add));
}

// Adds `add` unless the count is zero (when `require_live`) or the sum would overflow.
bool TryAdd(std::atomic<int32_t>* count, int32_t add, bool require_live, int32_t* seen) {
  int32_t old = count->load(std::memory_order_relaxed);
  do {
    *seen = old;
    if (require_live && old <= 0) return false;
    if (old > kMaxCount - add) return false;
  } while (!count->compare_exchange_weak(old, old + add, std::memory_order_acquire,
                                         std::memory_order_relaxed));
  return true;
}

}  // namespace

absl::Status FolioGet(Folio* folio, int32_t refs) {
  if (refs <= 0) return absl::InvalidArgumentError(absl::StrCat("bad reference count ", refs));
  int32_t seen = 0;
  // The caller claims to hold a reference; on a zero count it does not, and a plain
  // add would resurrect a folio its pool already owns (the kernel BUGs here).
  if (!TryAdd(&folio->refcount, refs, /*require_live=*/true, &seen)) {
    if (seen <= 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "get on the free ", PageSizeName(folio->size()), " folio at ",
          absl::Hex(reinterpret_cast<uintptr_t>(folio->data)), ": the caller holds no reference"));
    }
    return Overflow(folio, seen, refs, "refcount");
  }
  return absl::OkStatus();
}

bool FolioTryGet(Folio* folio, int32_t refs, absl::Status* error) {
  int32_t seen = 0;
  if (refs > 0 && TryAdd(&folio->refcount, refs, /*require_live=*/true, &seen)) return true;
  if (error != nullptr) {
    *error = refs <= 0   ? absl::InvalidArgumentError(absl::StrCat("bad reference count ", refs))
             : seen <= 0 ? absl::NotFoundError("folio is free")
                         : Overflow(folio, seen, refs, "refcount");
  }
  return false;
}

void FolioPut(Folio* folio, int32_t refs) {
  // Release: everything this holder wrote to the folio happens before its reuse.
  int32_t old = folio->refcount.fetch_sub(refs, std::memory_order_acq_rel);
  if (old == refs && folio->owner != nullptr) folio->owner->ReleaseFolio(folio);
}

absl::Status FolioTryGrab(Folio* folio, int32_t refs, RefKind kind) {
  if (refs <= 0) return absl::InvalidArgumentError(absl::StrCat("bad page count ", refs));
  const bool biased = kind == RefKind::kPin && !folio->large();
  if (biased && refs > kMaxCount / kPinBias)
    return Overflow(folio, 0, int64_t{refs} * kPinBias, "refcount");
  const int32_t add = biased ? refs * kPinBias : refs;
  int32_t seen = 0;
  if (!TryAdd(&folio->refcount, add, /*require_live=*/true, &seen)) {
    if (seen <= 0) return absl::NotFoundError("folio is free");
    return Overflow(folio, seen, add, "refcount");
  }
  if (kind == RefKind::kPin && folio->large()) {
    if (!TryAdd(&folio->pincount, refs, /*require_live=*/false, &seen)) {
      // Not a bare fetch_sub: the other holders may have gone meanwhile, and then this
      // undo drops the last reference and must hand the folio back.
      FolioPut(folio, add);
      return Overflow(folio, seen, refs, "pincount");
    }
  }
  return absl::OkStatus();
}

void FolioUngrab(Folio* folio, int32_t refs, RefKind kind, bool dirty) {
  if (dirty) folio->set_flag(FolioFlag::kDirty);
  const bool biased = kind == RefKind::kPin && !folio->large();
  if (kind == RefKind::kPin && folio->large()) {
    folio->pincount.fetch_sub(refs, std::memory_order_release);
  }
  FolioPut(folio, biased ? refs * kPinBias : refs);
}

void InitFolio(Folio* folio, const FolioInit& init) {
  folio->refcount.store(1, std::memory_order_relaxed);
  folio->pincount.store(0, std::memory_order_relaxed);
  folio->flags.store(static_cast<uint32_t>(init.flags), std::memory_order_relaxed);
  folio->order = init.order;
  folio->backing = init.backing;
  folio->node = static_cast<int16_t>(init.node);
  folio->head_pfn = init.head_pfn;
  folio->data = init.data;
  folio->owner = init.owner;
  folio->owner_private[0] = folio->owner_private[1] = 0;
}

void InitFolioForPage(Folio* folio, const Extent& extent, size_t i, FolioOwner* owner) {
  InitFolio(folio, {.order = static_cast<uint8_t>(PageOrder(extent.page_size())),
                    .backing = extent.kind(),
                    .node = extent.node(),
                    .head_pfn = extent.pfn(i),
                    .data = extent.data() + i * extent.page_size(),
                    .owner = owner});
}

FolioInfo DescribeFolio(const Folio& folio) {
  FolioInfo info;
  info.data = folio.data;
  info.size = folio.size();
  info.order = folio.order;
  info.refcount = folio.refcount.load(std::memory_order_relaxed);
  info.pincount = folio.pincount.load(std::memory_order_relaxed);
  info.flags = folio.flags.load(std::memory_order_relaxed);
  info.node = folio.node;
  info.backing = folio.backing;
  info.head_pfn = folio.head_pfn;
  info.meta_in_reserve = info.has(FolioFlag::kReserveMeta);
  return info;
}

bool FolioMaybeDmaPinned(const Folio* folio) {
  if (folio->large()) return folio->pincount.load(std::memory_order_acquire) > 0;
  return folio->refcount.load(std::memory_order_acquire) >= kPinBias;
}

}  // namespace hugemm
