#include "nvme/queue.h"

#include <cstring>
#include <utility>

namespace nvme {

QueuePair::QueuePair(uint16_t id, uint32_t depth, DmaRegion sq, DmaRegion cq, Registers* regs)
    : id_(id), depth_(depth), sq_(std::move(sq)), cq_(std::move(cq)), regs_(regs) {}

void QueuePair::Submit(const Command& cmd) {
  std::memcpy(sq_.data() + size_t{sq_tail_} * sizeof(Command), &cmd, sizeof cmd);
  sq_tail_ = (sq_tail_ + 1) % depth_;
  regs_->RingSqTail(id_, sq_tail_);
}

std::optional<Completion> QueuePair::Poll() {
  auto* slot = reinterpret_cast<volatile Completion*>(cq_.data()) + cq_head_;
  const uint16_t status = slot->status;
  if (StatusPhase(status) != phase_) return std::nullopt;
  // An entry whose phase tag is new is complete: read the rest only after the tag.
  DeviceBarrier();
  Completion c;
  c.dw0 = slot->dw0;
  c.dw1 = slot->dw1;
  c.sq_head = slot->sq_head;
  c.sq_id = slot->sq_id;
  c.cid = slot->cid;
  c.status = status;
  sq_head_ = c.sq_head % depth_;
  if (++cq_head_ == depth_) {
    cq_head_ = 0;
    phase_ = !phase_;
    ++wraps_;
  }
  regs_->RingCqHead(id_, cq_head_);
  return c;
}

}  // namespace nvme
