// Controller bring-up and teardown: registers, admin queue, IDENTIFY, I/O queue creation.
// The I/O path is in io.cc.
#include "nvme/controller.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace nvme {
namespace {

using Clock = std::chrono::steady_clock;

std::string IdString(const std::byte* data, size_t offset, size_t length) {
  std::string s(reinterpret_cast<const char*>(data) + offset, length);
  s.erase(s.find_last_not_of(" \0", std::string::npos, 2) + 1);
  return s;
}

template <typename T>
T IdField(const std::byte* data, size_t offset) {
  T v;
  std::memcpy(&v, data + offset, sizeof v);
  return v;
}

}  // namespace

std::string DescribeStatus(uint16_t status) {
  const uint32_t sct = StatusCodeType(status), sc = StatusCode(status);
  absl::string_view name;
  if (sct == 0) {
    switch (sc) {
      case 0x00:
        name = "Successful Completion";
        break;
      case 0x01:
        name = "Invalid Command Opcode";
        break;
      case 0x02:
        name = "Invalid Field in Command";
        break;
      case 0x03:
        name = "Command ID Conflict";
        break;
      case 0x04:
        name = "Data Transfer Error";
        break;
      case 0x06:
        name = "Internal Error";
        break;
      case 0x0b:
        name = "Invalid Namespace or Format";
        break;
      case 0x13:
        name = "PRP Offset Invalid";
        break;
      case 0x80:
        name = "LBA Out of Range";
        break;
      default:
        break;
    }
  } else if (sct == 1) {
    switch (sc) {
      case 0x01:
        name = "Invalid Queue Identifier";
        break;
      case 0x02:
        name = "Invalid Queue Size";
        break;
      default:
        break;
    }
  }
  return absl::StrFormat("SCT %u SC 0x%02x%s%s", sct, sc,
                         name.empty() ? "" : absl::StrCat(" (", name, ")"),
                         StatusDoNotRetry(status) ? ", do not retry" : "");
}

Controller::Controller(hugemm::Runtime& rt, Registers regs, const ControllerOptions& options)
    : rt_(rt), regs_(regs), options_(options) {}

absl::StatusOr<std::unique_ptr<Controller>> Controller::Start(hugemm::Runtime& rt, Registers regs,
                                                              const ControllerOptions& options) {
  if (!regs.valid() || regs.size() < kRegDoorbells + 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "BAR0 of %u bytes cannot hold an NVMe controller's registers", regs.size()));
  }
  if (options.admin_depth < 2 || options.admin_depth > 4096 || options.io_depth < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("queue depths %u (admin, 2..4096) and %u (I/O, at least 2)",
                        options.admin_depth, options.io_depth));
  }
  if (options.max_transfer < kPageSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_transfer %u is below one 4K page", options.max_transfer));
  }
  std::unique_ptr<Controller> c(new Controller(rt, regs, options));
  if (absl::Status st = c->Enable(); !st.ok()) return st;
  if (absl::Status st = c->Identify(); !st.ok()) return st;
  if (absl::Status st = c->CreateIoQueues(); !st.ok()) return st;
  return c;
}

absl::Status Controller::CheckFatal() const {
  const uint32_t csts = regs_.Read32(kRegCsts);
  if (csts == 0xffffffff) {
    return absl::UnavailableError("CSTS reads all ones: the device is gone from the bus");
  }
  if (csts & kCstsFatal) {
    return absl::InternalError(absl::StrFormat("controller fatal status (CSTS 0x%x)", csts));
  }
  return absl::OkStatus();
}

absl::Status Controller::WaitReady(bool ready) {
  const Clock::time_point deadline = Clock::now() + ready_timeout_;
  for (;;) {
    const uint32_t csts = regs_.Read32(kRegCsts);
    // A fatal status while disabling is what a reset clears; while enabling it is final.
    if (absl::Status st = CheckFatal(); !st.ok() && (ready || csts == 0xffffffff)) return st;
    if (((csts & kCstsReady) != 0) == ready) return absl::OkStatus();
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrFormat("CSTS.RDY did not become %d within CAP.TO = %u x 500 ms (CSTS 0x%x)",
                          ready ? 1 : 0, CapTo(info_.cap), csts));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::Status Controller::Enable() {
  const uint64_t cap = info_.cap = regs_.Read64(kRegCap);
  info_.version = regs_.Read32(kRegVs);
  if (!(CapCss(cap) & kCapCssNvm)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("CAP 0x%016x: the controller offers no NVM command set", cap));
  }
  if (CapMpsmin(cap) > 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("CAP 0x%016x: the smallest memory page is %u KiB; this driver uses 4 KiB",
                        cap, 4u << CapMpsmin(cap)));
  }
  ready_timeout_ = std::chrono::milliseconds(500 * std::max<uint32_t>(1, CapTo(cap)));
  regs_.set_doorbell_stride(CapDstrd(cap));
  if (!regs_.HasDoorbells(1)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("BAR0 of %u bytes has no room for queue 1's doorbells (stride %u)",
                        regs_.size(), 4u << CapDstrd(cap)));
  }

  // Disabling resets the controller: whatever a previous driver left is gone.
  touched_ = true;
  if (const uint32_t cc = regs_.Read32(kRegCc); cc & kCcEnable) {
    regs_.Write32(kRegCc, cc & ~kCcEnable);
  }
  if (absl::Status st = WaitReady(false); !st.ok()) return st;

  const uint32_t depth = std::min(options_.admin_depth, CapMqes(cap) + 1);
  absl::StatusOr<DmaRegion> sq =
      DmaRegion::Allocate(rt_, depth * sizeof(Command), options_.memory, options_.iova);
  if (!sq.ok()) return sq.status();
  absl::StatusOr<DmaRegion> cq =
      DmaRegion::Allocate(rt_, depth * sizeof(Completion), options_.memory, options_.iova);
  if (!cq.ok()) return cq.status();
  admin_ = QueuePair(0, depth, std::move(*sq), std::move(*cq), &regs_);
  regs_.Write32(kRegAqa, (depth - 1) << 16 | (depth - 1));
  regs_.Write64(kRegAsq, admin_.sq_phys());
  regs_.Write64(kRegAcq, admin_.cq_phys());
  regs_.Write32(kRegIntms, 0xffffffff);  // polled: no interrupts wanted
  regs_.Write32(kRegCc, kCcEnable | kCcCssNvm | CcMps(0) | kCcAmsRoundRobin |
                            CcIosqes(kCommandSizeLog2) | CcIocqes(kCompletionSizeLog2));
  if (absl::Status st = WaitReady(true); !st.ok()) return st;
  enabled_ = true;
  return absl::OkStatus();
}

absl::StatusOr<Completion> Controller::AdminCommand(Command cmd, const char* what) {
  cmd.cid = next_admin_cid_++;
  admin_.Submit(cmd);
  const Clock::time_point deadline = Clock::now() + options_.command_timeout;
  for (uint64_t spins = 0;; ++spins) {
    if (std::optional<Completion> c = admin_.Poll()) {
      if (c->cid != cmd.cid) {
        return absl::InternalError(
            absl::StrFormat("%s: completion for admin command %u, not %u", what, c->cid, cmd.cid));
      }
      if (StatusCode(c->status) != 0 || StatusCodeType(c->status) != 0) {
        return absl::InternalError(
            absl::StrFormat("%s failed: %s", what, DescribeStatus(c->status)));
      }
      return *c;
    }
    if (spins % 4096 == 0) {
      if (absl::Status st = CheckFatal(); !st.ok()) return st;
      if (Clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrFormat("%s: no completion within %d ms", what,
                                                           options_.command_timeout.count()));
      }
    }
  }
}

absl::Status Controller::Identify() {
  absl::StatusOr<DmaRegion> data =
      DmaRegion::Allocate(rt_, kIdentifySize, options_.memory, options_.iova);
  if (!data.ok()) return data.status();
  identify_ = std::move(*data);
  const std::byte* id = identify_.data();

  Command cmd{.opcode = kAdminIdentify, .prp1 = identify_.phys(), .cdw10 = kCnsController};
  if (absl::StatusOr<Completion> c = AdminCommand(cmd, "IDENTIFY controller"); !c.ok()) {
    return c.status();
  }
  info_.vendor = IdField<uint16_t>(id, kIdCtrlVid);
  info_.serial = IdString(id, kIdCtrlSn, 20);
  info_.model = IdString(id, kIdCtrlMn, 40);
  info_.firmware = IdString(id, kIdCtrlFr, 8);
  const auto mdts = IdField<uint8_t>(id, kIdCtrlMdts);
  info_.max_transfer = mdts == 0 ? 0 : (kPageSize << CapMpsmin(info_.cap)) << mdts;
  info_.namespaces = IdField<uint32_t>(id, kIdCtrlNn);
  if (info_.namespaces == 0) {
    return absl::FailedPreconditionError("IDENTIFY controller: the controller has no namespaces");
  }

  std::memset(identify_.data(), 0, kIdentifySize);
  cmd = Command{
      .opcode = kAdminIdentify, .nsid = ns_.id, .prp1 = identify_.phys(), .cdw10 = kCnsNamespace};
  if (absl::StatusOr<Completion> c = AdminCommand(cmd, "IDENTIFY namespace 1"); !c.ok()) {
    return c.status();
  }
  ns_.blocks = IdField<uint64_t>(id, kIdNsNsze);
  const uint32_t format = IdField<uint8_t>(id, kIdNsFlbas) & 0xf;
  const auto lbaf = IdField<uint32_t>(id, kIdNsLbaf0 + 4 * format);
  const uint32_t lbads = (lbaf >> 16) & 0xff;
  if (ns_.blocks == 0) {
    return absl::FailedPreconditionError("IDENTIFY namespace 1: the namespace is inactive");
  }
  if ((lbaf & 0xffff) != 0 || lbads < 9 || lbads > 12) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "IDENTIFY namespace 1: LBA format %u (data 2^%u bytes, %u metadata bytes) is not one of "
        "512..4096 bytes without metadata",
        format, lbads, lbaf & 0xffff));
  }
  ns_.block_size = 1u << lbads;
  return absl::OkStatus();
}

absl::Status Controller::CreateIoQueues() {
  const uint32_t depth = std::min(options_.io_depth, CapMqes(info_.cap) + 1);
  absl::StatusOr<DmaRegion> sq =
      DmaRegion::Allocate(rt_, depth * sizeof(Command), options_.memory, options_.iova);
  if (!sq.ok()) return sq.status();
  absl::StatusOr<DmaRegion> cq =
      DmaRegion::Allocate(rt_, depth * sizeof(Completion), options_.memory, options_.iova);
  if (!cq.ok()) return cq.status();
  io_ = QueuePair(1, depth, std::move(*sq), std::move(*cq), &regs_);

  // Commands and their PRP lists: one slot per entry the ring can hold.
  max_transfer_ = options_.max_transfer;
  if (info_.max_transfer != 0) max_transfer_ = std::min(max_transfer_, info_.max_transfer);
  // NLB is 16 bits (0's based) whatever MDTS says: 65536 blocks per command at most.
  max_transfer_ = std::min<uint64_t>(max_transfer_, uint64_t{ns_.block_size} << 16);
  max_transfer_ &= ~uint64_t{std::max<uint64_t>(ns_.block_size, kPageSize) - 1};
  list_pages_per_slot_ = PrpListPagesFor(kPageSize - 4, max_transfer_);
  const size_t nslots = depth - 1;
  if (list_pages_per_slot_ > 0) {
    absl::StatusOr<DmaRegion> lists = DmaRegion::Allocate(
        rt_, nslots * list_pages_per_slot_ * kPageSize, options_.memory, options_.iova);
    if (!lists.ok()) return lists.status();
    prp_lists_ = std::move(*lists);
  }
  slots_.resize(nslots);
  for (size_t i = 0; i < nslots; ++i) {
    const size_t offset = i * list_pages_per_slot_ * kPageSize;
    slots_[i].prp_list = reinterpret_cast<uint64_t*>(prp_lists_.data() + offset);
    slots_[i].prp_list_phys = prp_lists_.phys() + offset;
    free_slots_.push_back(static_cast<uint16_t>(nslots - 1 - i));
  }
  segments_.resize(2 * (max_transfer_ / kPageSize) + 4);

  const uint32_t size_and_id = (depth - 1) << 16 | io_.id();
  Command cmd{.opcode = kAdminCreateIoCq,
              .prp1 = io_.cq_phys(),
              .cdw10 = size_and_id,
              .cdw11 = kQueuePhysicallyContiguous};  // interrupts off: polled
  if (absl::StatusOr<Completion> c = AdminCommand(cmd, "CREATE I/O completion queue 1"); !c.ok()) {
    return c.status();
  }
  io_cq_created_ = true;
  cmd = Command{.opcode = kAdminCreateIoSq,
                .prp1 = io_.sq_phys(),
                .cdw10 = size_and_id,
                .cdw11 = uint32_t{io_.id()} << 16 | kQueuePhysicallyContiguous};
  if (absl::StatusOr<Completion> c = AdminCommand(cmd, "CREATE I/O submission queue 1"); !c.ok()) {
    return c.status();
  }
  io_sq_created_ = true;
  return absl::OkStatus();
}

bool Controller::Shutdown() {
  auto report = [](const absl::Status& st) {
    if (!st.ok()) std::fprintf(stderr, "nvme: shutdown: %s\n", std::string(st.message()).c_str());
  };
  if (!touched_) return true;  // refused before it was touched: leave it as it was
  if (in_flight_ > 0) {
    std::vector<IoResult> ignored;
    report(Drain(&ignored));
  }
  if (in_flight_ == 0) {
    if (io_sq_created_) {
      Command cmd{.opcode = kAdminDeleteIoSq, .cdw10 = io_.id()};
      report(AdminCommand(cmd, "DELETE I/O submission queue 1").status());
    }
    if (io_cq_created_) {
      Command cmd{.opcode = kAdminDeleteIoCq, .cdw10 = io_.id()};
      report(AdminCommand(cmd, "DELETE I/O completion queue 1").status());
    }
  }
  if (enabled_) {
    // Normal shutdown: the controller finishes its writes to the medium.
    const uint32_t cc = regs_.Read32(kRegCc);
    regs_.Write32(kRegCc, (cc & ~kCcShnMask) | kCcShnNormal);
    const Clock::time_point deadline = Clock::now() + ready_timeout_;
    while ((regs_.Read32(kRegCsts) & kCstsShstMask) != kCstsShstComplete) {
      if (Clock::now() > deadline) {
        report(absl::DeadlineExceededError("CSTS.SHST did not report the shutdown complete"));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  // Disabled, the controller touches no memory: only now may the pins and the queue
  // memory go (the members are destroyed after this).
  regs_.Write32(kRegCc, regs_.Read32(kRegCc) & ~(kCcEnable | kCcShnMask));
  const absl::Status stopped = WaitReady(false);
  report(stopped);
  enabled_ = false;
  // A device gone from the bus reaches no memory; one that still says ready may.
  return stopped.ok() || regs_.Read32(kRegCsts) == 0xffffffff;
}

void Controller::KeepDmaMemoryForever() {
  size_t pinned = 0;
  for (const Slot& slot : slots_) pinned += slot.pin.held();
  std::fprintf(stderr,
               "nvme: the controller did not stop (CSTS.RDY stays 1 after CC.EN = 0): its queues, "
               "PRP lists and the buffers of %zu commands in flight stay pinned until the process "
               "ends\n",
               pinned);
  struct Kept {
    QueuePair admin, io;
    DmaRegion identify, prp_lists;
    std::vector<Slot> slots;
  };
  // Reachable until the process ends: never given back, and no leak to a leak checker.
  static std::mutex mu;
  static auto* kept = new std::vector<std::unique_ptr<Kept>>;
  auto k = std::make_unique<Kept>(Kept{std::move(admin_), std::move(io_), std::move(identify_),
                                       std::move(prp_lists_), std::move(slots_)});
  std::lock_guard<std::mutex> lock(mu);
  kept->push_back(std::move(k));
}

Controller::~Controller() {
  if (!Shutdown()) KeepDmaMemoryForever();
}

}  // namespace nvme
