// The controller's registers: 32-bit loads and stores on BAR0 (or on plain memory that
// stands in for it in tests), and the doorbell arithmetic of CAP.DSTRD.
#ifndef HUGEMM_EXAMPLES_NVME_REGISTERS_H_
#define HUGEMM_EXAMPLES_NVME_REGISTERS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "nvme/nvme_spec.h"

namespace nvme {

// Orders the driver's memory accesses around the device's: queue entries written before
// the doorbell that announces them, a completion's fields read after its phase tag.
// x86-64 keeps both orders in hardware (stores are not reordered with a later uncached
// store, loads not with later loads), so there only the compiler must be held back;
// other architectures need a fence.
inline void DeviceBarrier() {
#if defined(__x86_64__)
  std::atomic_signal_fence(std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// A view of BAR0; it does not own the mapping, which must outlive it. Not thread-safe.
class Registers {
 public:
  Registers() = default;
  Registers(volatile void* base, size_t size)
      : base_(static_cast<volatile uint32_t*>(base)), size_(size) {}

  size_t size() const { return size_; }
  bool valid() const { return base_ != nullptr; }

  // Every access is 32 bits wide: a PCI BAR takes those whatever the bridge.
  uint32_t Read32(uint32_t offset) const { return base_[offset / 4]; }
  void Write32(uint32_t offset, uint32_t value) { base_[offset / 4] = value; }
  // 64-bit registers as two halves, low first (3.1 allows it).
  uint64_t Read64(uint32_t offset) const {
    const uint64_t lo = Read32(offset);
    return lo | uint64_t{Read32(offset + 4)} << 32;
  }
  void Write64(uint32_t offset, uint64_t value) {
    Write32(offset, static_cast<uint32_t>(value));
    Write32(offset + 4, static_cast<uint32_t>(value >> 32));
  }

  void set_doorbell_stride(uint32_t dstrd) { stride_ = 4u << dstrd; }
  // Offsets of queue `qid`'s doorbells (3.1.24, 3.1.25).
  uint32_t SqTailDoorbell(uint16_t qid) const { return kRegDoorbells + (2u * qid) * stride_; }
  uint32_t CqHeadDoorbell(uint16_t qid) const { return kRegDoorbells + (2u * qid + 1) * stride_; }
  bool HasDoorbells(uint16_t qid) const { return CqHeadDoorbell(qid) + 4 <= size_; }

  // Entries written to a queue in memory must be visible before the doorbell tells the
  // controller about them.
  void RingSqTail(uint16_t qid, uint32_t tail) {
    DeviceBarrier();
    Write32(SqTailDoorbell(qid), tail);
  }
  void RingCqHead(uint16_t qid, uint32_t head) { Write32(CqHeadDoorbell(qid), head); }

 private:
  volatile uint32_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t stride_ = 4;
};

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_REGISTERS_H_
