// Per-I/O pins: a record per I/O in flight, named by a token that holds the record's own
// address and its generation, so that a stale or repeated completion finds nothing to give
// back, and a value the program made itself (a number, or a pointer to its own object,
// tagged in its top bits or not) is never one of them.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "hugemm/io.h"
#include "runtime/util/format.h"

namespace hugemm {
namespace {

constexpr size_t kMaxCapacity = size_t{1} << 20;

// A token: the generation in the top 16 bits (never 0, so no token is 0 and none is a
// plain address) and the record's address below them. Heap addresses fit in 48 bits on
// every target (x86-64 hands out 47 bits without an address hint, arm64 48).
constexpr int kGenerationShift = 48;
constexpr uint64_t kAddressMask = (uint64_t{1} << kGenerationShift) - 1;
constexpr uint32_t kMaxGeneration = 0xffff;

}  // namespace

IoPins::IoPins(Runtime& runtime, size_t capacity)
    : pinner_(runtime.pinner()), records_(capacity), free_(capacity), free_count_(capacity) {
  for (size_t i = 0; i < capacity; ++i) free_[i] = static_cast<uint32_t>(i);
}

absl::StatusOr<std::unique_ptr<IoPins>> IoPins::Create(Runtime& runtime, size_t capacity) {
  if (capacity == 0 || capacity > kMaxCapacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("per-I/O pins for ", capacity, " I/Os in flight: 1 to ", kMaxCapacity));
  }
  std::unique_ptr<IoPins> pins(new IoPins(runtime, capacity));
  const auto end = reinterpret_cast<uintptr_t>(pins->records_.data() + capacity);
  if ((end & ~kAddressMask) != 0) [[unlikely]] {
    return absl::ResourceExhaustedError(hugemm::Format(
        "per-I/O pins: the records end at 0x%x, above the 48 bits a token holds", end));
  }
  return pins;
}

// The pins of I/Os still in flight are kept: nothing says their device is done with the
// memory (a ring torn down does not wait for its requests, and the kernel's own pins keep
// the frames for them), and memory given back here would be handed to the next
// allocation while the device may still write it.
IoPins::~IoPins() = default;

absl::StatusOr<uint64_t> IoPins::Pin(const void* addr, size_t length, bool device_writes) {
  return PinFor(addr, length, device_writes, 0, /*prepared=*/false);
}

absl::Status IoPins::Unpin(uint64_t token) { return Release(token, nullptr, /*prepared=*/false); }

absl::StatusOr<uint64_t> IoPins::PinFor(const void* addr, size_t length, bool device_writes,
                                        uint64_t user_data, bool prepared) {
  if (length == 0) {
    return absl::InvalidArgumentError(hugemm::Format("per-I/O pin of %p: an empty range", addr));
  }
  if (free_count_ == 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("per-I/O pins: ", records_.size(),
                     " I/Os in flight already, the most this was made for; reap completions "
                     "first or make it larger"));
  }
  const uint32_t index = free_[free_head_];
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
  free_head_ = free_head_ + 1 == free_.size() ? 0 : free_head_ + 1;
  --free_count_;
  r.busy = true;
  r.dirty = device_writes;
  r.prepared = prepared;
  r.nspans = static_cast<uint32_t>(*n);
  r.user_data = user_data;
  ++in_flight_;
  return (uint64_t{r.generation} << kGenerationShift) | reinterpret_cast<uintptr_t>(&r);
}

absl::Status IoPins::Release(uint64_t token, uint64_t* user_data, bool prepared) {
  // Only the address of one of this object's records, busy, with the generation it has
  // now: any other value (another IoPins' token, a program's own user_data) names none.
  const uintptr_t at = token & kAddressMask;
  const auto base = reinterpret_cast<uintptr_t>(records_.data());
  const uintptr_t offset = at - base;  // wraps far out of range below base
  const size_t index = offset / sizeof(Record);
  if (offset >= records_.size() * sizeof(Record) || offset % sizeof(Record) != 0 ||
      !records_[index].busy || records_[index].generation != token >> kGenerationShift) {
    return absl::NotFoundError(hugemm::Format(
        "per-I/O pins: token 0x%x is not an I/O in flight (never pinned, unpinned already, "
        "or not hugemm's)",
        token));
  }
  Record& r = records_[index];
  // A token of the other kind gives nothing back: an Unpin of a prepared I/O would free
  // its memory under the device, and a completion of a Pin's token would leave the
  // program's own Unpin of it failing.
  if (r.prepared != prepared) {
    if (prepared) {
      return absl::NotFoundError(
          hugemm::Format("per-I/O pins: token 0x%x is a pin of IoPins::Pin (hugemm_io_pin), "
                         "not a prepared I/O; Unpin (hugemm_io_unpin) gives it back",
                         token));
    }
    return absl::NotFoundError(hugemm::Format(
        "per-I/O pins: token 0x%x is a prepared I/O in flight, not a pin of IoPins::Pin "
        "(hugemm_io_pin); its completion (hugemm_io_complete, or hugemm_io_cancel before the "
        "submit) gives it back",
        token));
  }
  if (r.spans.empty()) {
    pinner_.UnpinFolios(absl::MakeConstSpan(r.inline_spans, r.nspans), RefKind::kPin, r.dirty);
  } else {
    pinner_.UnpinFolios(r.spans, RefKind::kPin, r.dirty);
    r.spans.clear();
  }
  if (user_data != nullptr) *user_data = r.user_data;
  r.busy = false;
  // A new generation: this token does not match again until the record's generation comes
  // round, 65535 uses of it later. Records are reused in the order they were given back,
  // so a record serves again only after every record idle before it did. Generation 0 is
  // skipped (no token is 0).
  r.generation = r.generation == kMaxGeneration ? 1 : r.generation + 1;
  size_t tail = free_head_ + free_count_;
  if (tail >= free_.size()) tail -= free_.size();
  free_[tail] = static_cast<uint32_t>(index);
  ++free_count_;
  --in_flight_;
  return absl::OkStatus();
}

}  // namespace hugemm
