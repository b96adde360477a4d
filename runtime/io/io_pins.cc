// Per-I/O pins: a record per I/O in flight, named by a token of generation and index so
// that a stale or repeated completion finds nothing to give back.
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hugemm/io.h"

namespace hugemm {
namespace {

constexpr size_t kMaxCapacity = size_t{1} << 20;

uint32_t IndexOf(uint64_t token) { return static_cast<uint32_t>(token); }
uint32_t GenerationOf(uint64_t token) { return static_cast<uint32_t>(token >> 32); }

}  // namespace

IoPins::IoPins(Runtime& runtime, size_t capacity) : pinner_(runtime.pinner()), records_(capacity) {
  free_.reserve(capacity);
  for (size_t i = capacity; i-- > 0;) free_.push_back(static_cast<uint32_t>(i));
}

absl::StatusOr<std::unique_ptr<IoPins>> IoPins::Create(Runtime& runtime, size_t capacity) {
  if (capacity == 0 || capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("per-I/O pins for ", capacity, " I/Os in flight: 1 to ", kMaxCapacity));
  }
  return std::unique_ptr<IoPins>(new IoPins(runtime, capacity));
}

// The pins of I/Os still in flight are kept: nothing says their device is done with the
// memory (a ring torn down does not wait for its requests, and the kernel's own pins keep
// the frames for them), and memory given back here would be handed to the next
// allocation while the device may still write it.
IoPins::~IoPins() = default;

absl::StatusOr<uint64_t> IoPins::Pin(const void* addr, size_t length, bool device_writes) {
  return PinFor(addr, length, device_writes, 0);
}

absl::Status IoPins::Unpin(uint64_t token) { return Release(token, nullptr); }

absl::StatusOr<uint64_t> IoPins::PinFor(const void* addr, size_t length, bool device_writes,
                                        uint64_t user_data) {
  if (length == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("per-I/O pin of %p: an empty range", addr));
  }
  if (free_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("per-I/O pins: ", records_.size(),
                     " I/Os in flight already, the most this was made for; reap completions "
                     "first or make it larger"));
  }
  const uint32_t index = free_.back();
  Record& r = records_[index];
  const GupFlags flags = device_writes ? kGupPin | kGupWrite : kGupPin;
  // One span per folio under the I/O: two inline, which a 128K I/O never exceeds unless
  // it straddles two folios' boundary twice.
  absl::StatusOr<size_t> n = pinner_.PinFolios(addr, length, flags, absl::MakeSpan(r.inline_spans));
  r.spans.clear();
  if (!n.ok() && n.status().code() == absl::StatusCode::kResourceExhausted) {
    // More folio runs than a record holds inline: into a vector that grows with the
    // folios pinned, never with `length`, which may be anything.
    n = pinner_.PinFolios(addr, length, flags, &r.spans);
  }
  if (!n.ok()) return n.status();
  free_.pop_back();
  r.busy = true;
  r.dirty = device_writes;
  r.nspans = static_cast<uint32_t>(*n);
  r.user_data = user_data;
  ++in_flight_;
  return (uint64_t{r.generation} << 32) | index;
}

absl::Status IoPins::Release(uint64_t token, uint64_t* user_data) {
  const uint32_t index = IndexOf(token);
  if (index >= records_.size() || !records_[index].busy ||
      records_[index].generation != GenerationOf(token)) {
    return absl::NotFoundError(absl::StrFormat(
        "per-I/O pins: token 0x%x is not an I/O in flight (never pinned, or unpinned already)",
        token));
  }
  Record& r = records_[index];
  if (r.spans.empty()) {
    pinner_.UnpinFolios(absl::MakeConstSpan(r.inline_spans, r.nspans), RefKind::kPin, r.dirty);
  } else {
    pinner_.UnpinFolios(r.spans, RefKind::kPin, r.dirty);
    r.spans.clear();
  }
  if (user_data != nullptr) *user_data = r.user_data;
  r.busy = false;
  // A new generation: this token never matches again. Generation 0 is skipped so that no
  // token is 0 (a CQE's user_data often is).
  r.generation = r.generation == std::numeric_limits<uint32_t>::max() ? 1 : r.generation + 1;
  free_.push_back(index);
  --in_flight_;
  return absl::OkStatus();
}

}  // namespace hugemm
