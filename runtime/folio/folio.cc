// The public reference operations: the inline arithmetic of refs.h, with a status that
// says why when it takes nothing.
#include "hugemm/folio.h"

#include "absl/strings/str_cat.h"
#include "runtime/folio/refs.h"

namespace hugemm {
namespace {

using folio_internal::GrabResult;
using folio_internal::kMaxCount;

absl::Status Overflow(const Folio* folio, int64_t add, const char* what) {
  const uint64_t word = folio->counts.load(std::memory_order_relaxed);
  return absl::ResourceExhaustedError(
      absl::StrCat(what, " of the ", PageSizeName(folio->size()), " folio at 0x",
                   absl::Hex(reinterpret_cast<uintptr_t>(folio->data)),
                   " would overflow: refcount ", folio_internal::RefcountOf(word), ", pincount ",
                   folio_internal::PincountOf(word), ", + ", add));
}

}  // namespace

namespace folio_internal {

void Released(Folio* folio) {
  if (folio->owner != nullptr) folio->owner->ReleaseFolio(folio);
}

}  // namespace folio_internal

absl::Status FolioGet(Folio* folio, int32_t refs) {
  if (refs <= 0) return absl::InvalidArgumentError(absl::StrCat("bad reference count ", refs));
  switch (folio_internal::TryAdd(folio, static_cast<uint32_t>(refs))) {
    case GrabResult::kOk:
      return absl::OkStatus();
    case GrabResult::kFree:
      // The caller claims to hold a reference; on a zero count it does not, and a plain
      // add would resurrect a folio its pool already owns (the kernel BUGs here).
      return absl::FailedPreconditionError(absl::StrCat(
          "get on the free ", PageSizeName(folio->size()), " folio at ",
          absl::Hex(reinterpret_cast<uintptr_t>(folio->data)), ": the caller holds no reference"));
    default:
      return Overflow(folio, refs, "refcount");
  }
}

bool FolioTryGet(Folio* folio, int32_t refs, absl::Status* error) {
  const GrabResult r =
      refs > 0 ? folio_internal::TryAdd(folio, static_cast<uint32_t>(refs)) : GrabResult::kBadCount;
  if (r == GrabResult::kOk) return true;
  if (error != nullptr) {
    *error = r == GrabResult::kBadCount
                 ? absl::InvalidArgumentError(absl::StrCat("bad reference count ", refs))
             : r == GrabResult::kFree ? absl::NotFoundError("folio is free")
                                      : Overflow(folio, refs, "refcount");
  }
  return false;
}

bool FolioPut(Folio* folio, int32_t refs) {
  if (refs <= 0) return false;
  return folio_internal::DropHeld(folio, static_cast<uint32_t>(refs));
}

absl::Status FolioTryGrab(Folio* folio, int32_t refs, RefKind kind) {
  if (refs <= 0) return absl::InvalidArgumentError(absl::StrCat("bad page count ", refs));
  switch (folio_internal::TryGrab(folio, static_cast<uint32_t>(refs), kind)) {
    case GrabResult::kOk:
      return absl::OkStatus();
    case GrabResult::kFree:
      return absl::NotFoundError("folio is free");
    case GrabResult::kBadCount:
      // Only a biased count can be out of range here: refs * kPinBias > INT32_MAX.
      return Overflow(folio, int64_t{refs} * kPinBias, "refcount");
    case GrabResult::kOverflow:
      break;
  }
  const bool pins = kind == RefKind::kPin && folio->large();
  return Overflow(folio, kind == RefKind::kPin && !pins ? int64_t{refs} * kPinBias : refs,
                  pins ? "refcount or pincount" : "refcount");
}

bool FolioUngrab(Folio* folio, int32_t refs, RefKind kind, bool dirty) {
  if (refs <= 0) return false;
  return folio_internal::UngrabHeld(folio, static_cast<uint32_t>(refs), kind, dirty);
}

void InitFolio(Folio* folio, const FolioInit& init) {
  folio->counts.store(Folio::CountsWord(1, 0), std::memory_order_relaxed);
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
  const uint64_t counts = folio.counts.load(std::memory_order_relaxed);
  info.refcount = static_cast<int32_t>(folio_internal::RefcountOf(counts));
  info.pincount = static_cast<int32_t>(folio_internal::PincountOf(counts));
  info.flags = folio.flags.load(std::memory_order_relaxed);
  info.node = folio.node;
  info.backing = folio.backing;
  info.head_pfn = folio.head_pfn;
  info.meta_in_reserve = info.has(FolioFlag::kReserveMeta);
  return info;
}

bool FolioMaybeDmaPinned(const Folio* folio) {
  if (folio->large()) return folio->pincount() > 0;
  return folio->refcount() >= kPinBias;
}

}  // namespace hugemm
