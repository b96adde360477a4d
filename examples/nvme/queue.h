// One submission queue and its completion queue (NVMe 1.4, 4.1), in hugemm memory, polled.
//
// The submission queue is a ring of 64-byte commands the controller consumes from its
// head; the driver writes at the tail and rings the tail doorbell. The completion queue
// is a ring of 16-byte entries the controller fills; an entry is new when its phase tag
// equals the phase the driver expects, which flips each time the head wraps. The driver
// consumes entries and rings the head doorbell so the controller may reuse the slots.
#ifndef HUGEMM_EXAMPLES_NVME_QUEUE_H_
#define HUGEMM_EXAMPLES_NVME_QUEUE_H_

#include <cstdint>
#include <optional>

#include "nvme/dma.h"
#include "nvme/nvme_spec.h"
#include "nvme/registers.h"

namespace nvme {

// Not thread-safe: one thread submits and polls.
class QueuePair {
 public:
  QueuePair() = default;
  // `sq` holds `depth` commands and `cq` `depth` completions, zeroed; `regs` outlives it.
  QueuePair(uint16_t id, uint32_t depth, DmaRegion sq, DmaRegion cq, Registers* regs);
  QueuePair(QueuePair&&) = default;
  QueuePair& operator=(QueuePair&&) = default;

  uint16_t id() const { return id_; }
  uint32_t depth() const { return depth_; }
  uint64_t sq_phys() const { return sq_.phys(); }
  uint64_t cq_phys() const { return cq_.phys(); }
  // Whether the submission ring has a free slot (one slot always stays empty).
  bool CanSubmit() const { return (sq_tail_ + 1) % depth_ != sq_head_; }

  // Copies `cmd` into the tail slot and rings the doorbell. The caller checks CanSubmit.
  void Submit(const Command& cmd);
  // The next completion if the controller has posted one; consumes it and rings the
  // head doorbell.
  std::optional<Completion> Poll();

  // Times the completion head went round the ring (each one flips the phase).
  uint64_t wraps() const { return wraps_; }

 private:
  uint16_t id_ = 0;
  uint32_t depth_ = 0;
  DmaRegion sq_;
  DmaRegion cq_;
  Registers* regs_ = nullptr;
  uint32_t sq_tail_ = 0;
  uint32_t sq_head_ = 0;  // as last reported by a completion
  uint32_t cq_head_ = 0;
  bool phase_ = true;  // the controller starts by writing phase 1
  uint64_t wraps_ = 0;
};

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_QUEUE_H_
