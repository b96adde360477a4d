// The words of a failed pin, and the populate step of the slow path.
#include "runtime/gup/slow_path.h"

#include <functional>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/gup/fast_path.h"

namespace hugemm::gup_internal {
namespace {

// Populate, look again: a range that some other thread keeps unmapping gives up after
// this many rounds.
constexpr int kPopulateAttempts = 3;

}  // namespace

std::string RequestName(const PinRequest& req) {
  return absl::StrCat("pin [0x", absl::Hex(req.start), ", +", req.npages, " pages) ",
                      GupFlagsName(req.flags));
}

absl::Status StopError(const PinRequest& req, Stop why, uintptr_t va, size_t entries,
                       const absl::Status& grab) {
  const std::string what = RequestName(req);
  switch (why) {
    case Stop::kNotMapped:
      return absl::NotFoundError(absl::StrCat(what, ": 0x", absl::Hex(va), " is not mapped"));
    case Stop::kExclusive:
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": 0x", absl::Hex(va), " is device-exclusive; its owner must restore it first"));
    case Stop::kReadOnly:
      return absl::PermissionDeniedError(
          absl::StrCat(what, ": 0x", absl::Hex(va), " is mapped read-only"));
    case Stop::kBorrowed:
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": 0x", absl::Hex(va),
                       " is borrowed external memory, which may move: no LONGTERM pin"));
    case Stop::kGrabFailed:
      return absl::Status(grab.ok() ? absl::StatusCode::kAborted : grab.code(),
                          absl::StrCat(what, ": at 0x", absl::Hex(va), ": ",
                                       grab.ok() ? "folio freed meanwhile" : grab.message()));
    case Stop::kChanged:
      return absl::UnavailableError(
          absl::StrCat(what, ": 0x", absl::Hex(va), " kept changing under the fast path"));
    case Stop::kFull:
      return absl::ResourceExhaustedError(absl::StrCat(what,
                                                       ": the output has no room for the entries "
                                                       "from 0x",
                                                       absl::Hex(va), " on (", entries,
                                                       " written before them)"));
    case Stop::kNoMemory:
      return absl::ResourceExhaustedError(
          absl::StrCat(what, ": out of memory for the record of the folios pinned (", entries,
                       " entries before 0x", absl::Hex(va), ")"));
    case Stop::kUnencodable:
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the folio at 0x", absl::Hex(va),
                       " has a descriptor a page-array entry cannot hold; use folio spans"));
    case Stop::kNoPfn:
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the PFN of 0x", absl::Hex(va),
                       " is unknown (pagemap hid it when the memory was mapped: reading PFNs "
                       "needs CAP_SYS_ADMIN): no DMA segments"));
    case Stop::kNoDeviceAddress:
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the pages of the folio at 0x", absl::Hex(va),
                       " are not all in the device's address space (some byte of them is not "
                       "mapped into it)"));
    case Stop::kNone:
      break;
  }
  return absl::InternalError(absl::StrCat(what, ": at 0x", absl::Hex(va), ": no reason"));
}

absl::Status Populate(const PinContext& ctx, const PinRequest& req, uintptr_t va, int attempt) {
  if (ctx.populator == nullptr) return StopError(req, Stop::kNotMapped, va, 0);
  if (attempt == kPopulateAttempts) {
    return absl::NotFoundError(absl::StrCat(RequestName(req), ": 0x", absl::Hex(va),
                                            " is still not mapped after ", attempt, " populates"));
  }
  absl::Status st;
  {
    std::lock_guard<std::mutex> lock(*ctx.populate_mu);
    st = ctx.populator->Populate(ctx.table, va, HasAny(req.flags, kGupWrite));
  }
  if (st.ok() || st.code() == absl::StatusCode::kAlreadyExists) return absl::OkStatus();
  return absl::Status(st.code(), absl::StrCat(RequestName(req), ": populating 0x", absl::Hex(va),
                                              ": ", st.message()));
}

absl::Status FastOnlyError(const PinContext& ctx, const PinRequest& req, Stop why, uintptr_t va,
                           size_t entries) {
  if (why != Stop::kGrabFailed) return StopError(req, why, va, entries);
  absl::Status grab;
  ctx.table.WithLeafLocked(reinterpret_cast<const void*>(va), [&](const LogicalLeaf& leaf) {
    const Take t = TakeOf(leaf, va, req.end(), ctx.table.geometry().page_shift);
    grab = Grab(t, req.kind(), ctx.granularity);
    if (grab.ok()) Ungrab(t, req.kind());
  });
  return StopError(req, why, va, entries, grab);
}

void RunAfterGrab(const std::function<void(uintptr_t)>& hook, uintptr_t va) noexcept { hook(va); }

}  // namespace hugemm::gup_internal
