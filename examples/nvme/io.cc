// The I/O path: READ and WRITE (NVM command set) with PRPs from hugemm's DMA segments,
// one pin per command from submission to completion, completions by polling.
#include <thread>

#include "absl/strings/str_format.h"
#include "nvme/controller.h"

namespace nvme {
namespace {

using Clock = std::chrono::steady_clock;

const char* OpName(uint8_t opcode) { return opcode == kIoRead ? "READ" : "WRITE"; }

}  // namespace

absl::StatusOr<uint16_t> Controller::SubmitRead(uint64_t lba, void* buf, size_t bytes,
                                                uint64_t tag) {
  return Submit(kIoRead, lba, buf, bytes, tag);
}

absl::StatusOr<uint16_t> Controller::SubmitWrite(uint64_t lba, const void* buf, size_t bytes,
                                                 uint64_t tag) {
  return Submit(kIoWrite, lba, buf, bytes, tag);
}

absl::StatusOr<uint16_t> Controller::Submit(uint8_t opcode, uint64_t lba, const void* buf,
                                            size_t bytes, uint64_t tag) {
  // Only an error pays for the words.
  auto what = [&] {
    return absl::StrFormat("%s of %u bytes at block %u from %p", OpName(opcode), bytes, lba, buf);
  };
  if (bytes == 0 || bytes % ns_.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: not a whole number of %u-byte blocks", what(), ns_.block_size));
  }
  if (bytes > max_transfer_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: one command moves at most %u bytes", what(), max_transfer_));
  }
  const uint64_t blocks = bytes / ns_.block_size;
  if (lba >= ns_.blocks || blocks > ns_.blocks - lba) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: beyond namespace 1's %u blocks", what(), ns_.blocks));
  }
  if (reinterpret_cast<uintptr_t>(buf) & 3) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: not dword-aligned", what()));
  }
  if (free_slots_.empty() || !io_.CanSubmit()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: all %u commands are in flight; reap completions first", what(), slots_.size()));
  }
  const uint16_t cid = free_slots_.back();
  Slot& slot = slots_[cid];

  // The pin: from here until the completion is reaped, the folios under the buffer stay
  // this buffer's even if it is freed.
  IoPin pin;
  absl::StatusOr<size_t> n = pin.Pin(rt_, buf, bytes, opcode == kIoRead, options_.max_segment,
                                     absl::MakeSpan(segments_), options_.pin_io, options_.iova);
  if (!n.ok()) {
    return absl::Status(n.status().code(), absl::StrCat(what(), ": ", n.status().message()));
  }
  const PrpFault fault = std::exchange(fault_, PrpFault{});
  absl::StatusOr<Prps> prps =
      BuildPrps(absl::MakeConstSpan(segments_.data(), *n),
                {slot.prp_list, slot.prp_list_phys, list_pages_per_slot_}, fault);
  if (!prps.ok()) {
    return absl::Status(prps.status().code(), absl::StrCat(what(), ": ", prps.status().message()));
  }

  free_slots_.pop_back();
  slot.busy = true;
  slot.opcode = opcode;
  slot.lba = lba;
  slot.tag = tag;
  slot.pin = std::move(pin);
  ++in_flight_;
  stats_.max_in_flight = std::max<uint64_t>(stats_.max_in_flight, in_flight_);
  stats_.max_segments = std::max<uint64_t>(stats_.max_segments, *n);
  stats_.with_prp_list += prps->list_pages > 0;
  stats_.chained_lists += prps->list_pages > 1;
  io_.Submit(Command{.opcode = opcode,
                     .cid = cid,
                     .nsid = ns_.id,
                     .prp1 = prps->prp1,
                     .prp2 = prps->prp2,
                     .cdw10 = static_cast<uint32_t>(lba),
                     .cdw11 = static_cast<uint32_t>(lba >> 32),
                     .cdw12 = static_cast<uint32_t>(blocks - 1)});
  return cid;
}

absl::Status Controller::Poll(std::vector<IoResult>* out) {
  while (std::optional<Completion> c = io_.Poll()) {
    if (c->cid >= slots_.size() || !slots_[c->cid].busy) {
      return absl::InternalError(
          absl::StrFormat("completion for command %u, which is not in flight (%s)", c->cid,
                          DescribeStatus(c->status)));
    }
    Slot& slot = slots_[c->cid];
    // The controller is done with the data: only now may its folios go.
    slot.pin.Release();
    slot.busy = false;
    free_slots_.push_back(c->cid);
    --in_flight_;
    ++stats_.commands;
    IoResult result;
    result.cid = c->cid;
    result.tag = slot.tag;
    if (StatusCode(c->status) != 0 || StatusCodeType(c->status) != 0) {
      result.status = absl::DataLossError(absl::StrFormat("%s at block %u (command %u): %s",
                                                          OpName(slot.opcode), slot.lba, c->cid,
                                                          DescribeStatus(c->status)));
    }
    out->push_back(std::move(result));
  }
  stats_.io_queue_wraps = io_.wraps();
  return absl::OkStatus();
}

absl::Status Controller::Drain(std::vector<IoResult>* out) {
  const Clock::time_point deadline = Clock::now() + options_.command_timeout;
  for (uint64_t spins = 0; in_flight_ > 0; ++spins) {
    if (absl::Status st = Poll(out); !st.ok()) return st;
    if (in_flight_ == 0 || spins % 4096 != 0) continue;
    if (absl::Status st = CheckFatal(); !st.ok()) return st;
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "%u commands still in flight after %d ms", in_flight_, options_.command_timeout.count()));
    }
    std::this_thread::yield();
  }
  return absl::OkStatus();
}

absl::Status Controller::Transfer(uint8_t opcode, uint64_t lba, std::byte* buf, size_t bytes) {
  if (in_flight_ > 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: %u commands of the caller are in flight; Drain them first",
                        OpName(opcode), in_flight_));
  }
  if (bytes == 0 || bytes % ns_.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s of %u bytes: not a whole number of %u-byte blocks", OpName(opcode),
                        bytes, ns_.block_size));
  }
  std::vector<IoResult> results;
  absl::Status first;
  size_t done = 0;
  Clock::time_point deadline = Clock::now() + options_.command_timeout;
  while (done < bytes && first.ok()) {
    if (free_slots_.empty() || !io_.CanSubmit()) {
      const size_t reaped = results.size();
      first = Poll(&results);
      if (results.size() > reaped) deadline = Clock::now() + options_.command_timeout;
      if (first.ok() && Clock::now() > deadline) {
        first = absl::DeadlineExceededError(absl::StrFormat("%s: no command completed within %d ms",
                                                            OpName(opcode),
                                                            options_.command_timeout.count()));
      }
      continue;
    }
    const size_t chunk = std::min<size_t>(max_transfer_, bytes - done);
    absl::StatusOr<uint16_t> cid =
        Submit(opcode, lba + done / ns_.block_size, buf + done, chunk, done);
    if (!cid.ok()) {
      first = cid.status();
      break;
    }
    done += chunk;
  }
  absl::Status drained = Drain(&results);
  if (first.ok()) first = drained;
  for (const IoResult& r : results) {
    if (first.ok() && !r.status.ok()) first = r.status;
  }
  return first;
}

absl::Status Controller::Read(uint64_t lba, void* buf, size_t bytes) {
  return Transfer(kIoRead, lba, static_cast<std::byte*>(buf), bytes);
}

absl::Status Controller::Write(uint64_t lba, const void* buf, size_t bytes) {
  // The device only reads the buffer; Transfer is shared with Read.
  return Transfer(kIoWrite, lba, const_cast<std::byte*>(static_cast<const std::byte*>(buf)), bytes);
}

}  // namespace nvme
