// A minimal NVMe controller driver over hugemm memory, polled, one I/O queue pair.
//
//   nvme::Registers regs(bar0, bar0_size);            // BAR0, mapped by pci.h
//   auto ctrl = nvme::Controller::Start(*rt, regs, {.memory = {}});
//   (*ctrl)->Read(/*lba=*/0, buf.data(), 1 << 20);    // any hugemm buffer
//
// Start follows the initialisation of NVMe 1.4, 7.6.1: disable and wait for CSTS.RDY to
// clear (CAP.TO), program the admin queues (AQA, ASQ, ACQ), enable with 64-byte
// commands and 16-byte completions on 4K memory pages, wait for CSTS.RDY; then
// IDENTIFY the controller and namespace 1, and create I/O completion and submission
// queue 1. The destructor deletes them and shuts the controller down (7.6.2).
//
// Every command's data is pinned at submission and unpinned when its completion is
// reaped (dma.h): a buffer freed while the controller may still read or write it keeps
// its memory, and its folios go to no one else, until then.
#ifndef HUGEMM_EXAMPLES_NVME_CONTROLLER_H_
#define HUGEMM_EXAMPLES_NVME_CONTROLLER_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hugemm/runtime.h"
#include "nvme/dma.h"
#include "nvme/prp.h"
#include "nvme/queue.h"
#include "nvme/registers.h"

namespace nvme {

struct ControllerOptions {
  // Where the queues, PRP lists and identify data live.
  MemorySpec memory;
  uint32_t admin_depth = 32;
  uint32_t io_depth = 64;  // capped by CAP.MQES
  // Longest DMA segment a command's PRPs are built from (0 = no limit); a small value
  // makes every command span many segments.
  uint64_t max_segment = 0;
  // Longest transfer of one command, further capped by the controller's MDTS and by the
  // 65536 blocks a command's NLB field can count.
  uint64_t max_transfer = 4 << 20;
  // false: drop each command's pin right after its addresses are known. Wrong; a
  // test uses it to show what the pin prevents.
  bool pin_io = true;
  std::chrono::milliseconds command_timeout{30000};
  // IOVA mode: every address the controller is given is an IOVA of this mapper's VFIO
  // container (the function bound to vfio-pci). Null: physical mode. Must outlive the
  // controller.
  hugemm::IovaMapper* iova = nullptr;
};

struct ControllerInfo {
  uint64_t cap = 0;
  uint32_t version = 0;  // VS: major << 16 | minor << 8 | tertiary
  uint16_t vendor = 0;
  std::string serial;
  std::string model;
  std::string firmware;
  uint64_t max_transfer = 0;  // bytes per command (MDTS), 0 = no limit
  uint32_t namespaces = 0;
};

struct NamespaceInfo {
  uint32_t id = 1;
  uint64_t blocks = 0;
  uint32_t block_size = 0;
  uint64_t bytes() const { return blocks * block_size; }
};

// What one reaped I/O command gives back.
struct IoResult {
  uint16_t cid = 0;
  uint64_t tag = 0;  // the caller's, from the submission
  absl::Status status;
};

struct ControllerStats {
  uint64_t commands = 0;        // I/O commands completed
  uint64_t max_segments = 0;    // most DMA segments under one command
  uint64_t with_prp_list = 0;   // commands whose PRP2 pointed at a list
  uint64_t chained_lists = 0;   // commands whose list took more than one page
  uint64_t io_queue_wraps = 0;  // times the I/O completion ring wrapped
  uint64_t max_in_flight = 0;   // most commands in flight at once
};

// Not thread-safe: one thread drives a controller.
class Controller {
 public:
  // Takes the controller behind `regs` (BAR0 of a device no kernel driver owns, with
  // bus mastering on). `rt` and the mapping behind `regs` must outlive it. Errors:
  // FailedPrecondition for a controller this driver cannot use (no NVM command set, 4K
  // pages unsupported, a fatal status), DeadlineExceeded when CSTS.RDY does not follow
  // CC.EN within CAP.TO, those of DmaRegion::Allocate, and a failed admin command.
  static absl::StatusOr<std::unique_ptr<Controller>> Start(hugemm::Runtime& rt, Registers regs,
                                                           const ControllerOptions& options);
  // Waits for commands in flight, deletes the I/O queues and shuts the controller down,
  // then disables it. Its queues and the data of commands still in flight go back only
  // once the controller says it stopped (CSTS.RDY clear) or is gone from the bus (CSTS
  // all ones): one that still says ready may write into them, so they stay pinned, with
  // a message, until the process ends.
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  const ControllerInfo& info() const { return info_; }
  const NamespaceInfo& ns() const { return ns_; }
  // Bytes one command may move: options, MDTS, NLB and the PRP list pages permitting.
  uint64_t max_transfer() const { return max_transfer_; }
  const ControllerStats& stats() const { return stats_; }
  size_t in_flight() const { return in_flight_; }
  // Commands that can be in flight at once.
  size_t slots() const { return slots_.size(); }

  // One READ (device writes `bytes` at `buf`) or WRITE (device reads them) of whole
  // blocks at `lba`, from any hugemm memory; returns the command id. Errors:
  // InvalidArgument (no bytes, not whole blocks, beyond max_transfer or the namespace,
  // not dword-aligned), ResourceExhausted (every slot in flight: reap first), and the
  // pin's errors (memory hugemm does not map). Nothing is submitted on error.
  absl::StatusOr<uint16_t> SubmitRead(uint64_t lba, void* buf, size_t bytes, uint64_t tag = 0);
  absl::StatusOr<uint16_t> SubmitWrite(uint64_t lba, const void* buf, size_t bytes,
                                       uint64_t tag = 0);
  // Reaps what has completed (no waiting): unpins each command's data and appends its
  // result. A completion for no command in flight or a fatal controller status is an
  // Internal error.
  absl::Status Poll(std::vector<IoResult>* out);
  // Polls until nothing is in flight; DeadlineExceeded after command_timeout.
  absl::Status Drain(std::vector<IoResult>* out);

  // Synchronous transfers of any length (whole blocks): split into commands of at most
  // max_transfer, as many in flight as there are slots. The first failure, if any.
  absl::Status Read(uint64_t lba, void* buf, size_t bytes);
  absl::Status Write(uint64_t lba, const void* buf, size_t bytes);

  // Longest DMA segment from now on (ControllerOptions::max_segment).
  void set_max_segment(uint64_t bytes) { options_.max_segment = bytes; }

  // The next submitted command's PRP entry `entry` (0 = PRP1) is moved by `delta`
  // bytes: a wrong address, for tests that must see it caught.
  void InjectPrpFault(PrpFault fault) { fault_ = fault; }

 private:
  struct Slot {
    bool busy = false;
    uint8_t opcode = 0;
    uint64_t lba = 0;
    uint64_t tag = 0;
    IoPin pin;
    uint64_t* prp_list = nullptr;
    uint64_t prp_list_phys = 0;
  };

  Controller(hugemm::Runtime& rt, Registers regs, const ControllerOptions& options);
  absl::Status Enable();
  absl::Status WaitReady(bool ready);
  absl::Status CheckFatal() const;
  absl::StatusOr<Completion> AdminCommand(Command cmd, const char* what);
  absl::Status Identify();
  absl::Status CreateIoQueues();
  absl::StatusOr<uint16_t> Submit(uint8_t opcode, uint64_t lba, const void* buf, size_t bytes,
                                  uint64_t tag);
  absl::Status Transfer(uint8_t opcode, uint64_t lba, std::byte* buf, size_t bytes);
  // Whether the controller reaches no memory any more (stopped or gone).
  bool Shutdown();
  void KeepDmaMemoryForever();

  hugemm::Runtime& rt_;
  Registers regs_;
  ControllerOptions options_;
  ControllerInfo info_;
  NamespaceInfo ns_;
  uint64_t max_transfer_ = 0;
  std::chrono::milliseconds ready_timeout_{500};
  QueuePair admin_;
  QueuePair io_;
  bool touched_ = false;  // CC written: the controller must be left disabled
  bool enabled_ = false;
  bool io_sq_created_ = false;
  bool io_cq_created_ = false;
  uint16_t next_admin_cid_ = 0;
  DmaRegion identify_;
  DmaRegion prp_lists_;
  size_t list_pages_per_slot_ = 0;
  std::vector<Slot> slots_;
  std::vector<uint16_t> free_slots_;
  size_t in_flight_ = 0;
  std::vector<hugemm::DmaSegment> segments_;  // scratch for one submission
  PrpFault fault_;
  ControllerStats stats_;
};

// "Invalid Field in Command" for the generic status codes this driver may meet; the
// numbers otherwise.
std::string DescribeStatus(uint16_t status);

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_CONTROLLER_H_
