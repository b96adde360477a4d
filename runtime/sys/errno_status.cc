// ErrnoStatus keeps the errno beside the message, so that a layer that must tell ENOMEM
// from EFAULT (the kernel pin holder) still can after the layers between have annotated
// the status.
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "hugemm/os.h"
#include "runtime/sys/status.h"

namespace hugemm {
namespace {

constexpr absl::string_view kErrnoPayload = "type.hugemm.dev/errno";

}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view what) {
  if (err == 0) {
    // A call that failed without saying why (errno left at 0) failed all the same: absl
    // would make errno 0 an OK status, and the caller would go on as if it had worked.
    return absl::UnknownError(absl::StrCat(what, ": failed without an errno"));
  }
  const char* name = strerrorname_np(err);
  const char* text = strerrordesc_np(err);
  absl::Status status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(what, ": ", text ? text : "unknown error", " (",
                                   name ? std::string(name) : absl::StrCat("errno ", err), ")"));
  status.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return status;
}

int ErrnoOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kErrnoPayload);
  int err = 0;
  if (!payload.has_value() || !absl::SimpleAtoi(std::string(*payload), &err)) return 0;
  return err;
}

namespace sys {

namespace {

absl::Status WithMessage(const absl::Status& status, std::string message) {
  absl::Status out(status.code(), message);
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace

absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  return WithMessage(status, absl::StrCat(context, ": ", status.message()));
}

absl::Status AppendToMessage(const absl::Status& status, absl::string_view suffix) {
  return WithMessage(status, absl::StrCat(status.message(), suffix));
}

absl::Status WithErrno(const absl::Status& status, int err) {
  absl::Status out = status;
  out.SetPayload(kErrnoPayload, absl::Cord(absl::StrCat(err)));
  return out;
}

}  // namespace sys
}  // namespace hugemm
