// The words of a failed pin, and the populate step of the slow path.
#include "runtime/gup/slow_path.h"

#include <functional>
#include <mutex>
#include <string>

#include "absl/strings/str_format.h"
#include "runtime/gup/fast_path.h"

namespace hugemm::gup_internal {
namespace {

// Populate, look again: a range that some other thread keeps unmapping gives up after
// this many rounds.
constexpr int kPopulateAttempts = 3;

}  // namespace

std::string RequestName(const PinRequest& req) {
  return absl::StrFormat("pin [0x%x, +%u pages) %s", req.start, req.npages,
                         GupFlagsName(req.flags));
}

absl::Status StopError(const PinRequest& req, Stop why, uintptr_t va, size_t entries,
                       const absl::Status& grab) {
  const std::string what = RequestName(req);
  switch (why) {
    case Stop::kNotMapped:
      return absl::NotFoundError(absl::StrFormat("%s: 0x%x is not mapped", what, va));
    case Stop::kExclusive:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: 0x%x is device-exclusive; its owner must restore it first", what, va));
    case Stop::kReadOnly:
      return absl::PermissionDeniedError(absl::StrFormat("%s: 0x%x is mapped read-only", what, va));
    case Stop::kBorrowed:
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s: 0x%x is borrowed external memory, which may move: no LONGTERM pin", what, va));
    case Stop::kGrabFailed:
      return absl::Status(
          grab.ok() ? absl::StatusCode::kAborted : grab.code(),
          absl::StrFormat("%s: at 0x%x: %s", what, va,
                          grab.ok() ? "folio freed meanwhile" : std::string(grab.message())));
    case Stop::kChanged:
      return absl::UnavailableError(
          absl::StrFormat("%s: 0x%x kept changing under the fast path", what, va));
    case Stop::kFull:
      return absl::ResourceExhaustedError(
          absl::StrFormat("%s: the output has no room for the entries from 0x%x on (%u written "
                          "before them)",
                          what, va, entries));
    case Stop::kUnencodable:
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: the folio at 0x%x has a descriptor a page-array entry cannot hold; use folio "
          "spans",
          what, va));
    case Stop::kNoPfn:
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: the PFN of 0x%x is unknown (pagemap hid it when the memory was "
                          "mapped: reading PFNs needs CAP_SYS_ADMIN): no DMA segments",
                          what, va));
    case Stop::kNoDeviceAddress:
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: the pages of the folio at 0x%x are not all in the device's "
                          "address space (some byte of them is not mapped into it)",
                          what, va));
    case Stop::kNone:
      break;
  }
  return absl::InternalError(absl::StrFormat("%s: at 0x%x: no reason", what, va));
}

absl::Status Populate(const PinContext& ctx, const PinRequest& req, uintptr_t va, int attempt) {
  if (ctx.populator == nullptr) return StopError(req, Stop::kNotMapped, va, 0);
  if (attempt == kPopulateAttempts) {
    return absl::NotFoundError(absl::StrFormat("%s: 0x%x is still not mapped after %d populates",
                                               RequestName(req), va, attempt));
  }
  absl::Status st;
  {
    std::lock_guard<std::mutex> lock(*ctx.populate_mu);
    st = ctx.populator->Populate(ctx.table, va, HasAny(req.flags, kGupWrite));
  }
  if (st.ok() || st.code() == absl::StatusCode::kAlreadyExists) return absl::OkStatus();
  return absl::Status(
      st.code(), absl::StrFormat("%s: populating 0x%x: %s", RequestName(req), va, st.message()));
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
