// The parts of the NVM Express Base Specification (revision 1.4) this driver speaks:
// controller registers (section 3.1), the 64-byte submission and 16-byte completion
// queue entries (4.2, 4.6), and the opcodes and fields of the few commands it sends.
// Every multi-byte field is little-endian, as on the hosts this example runs on.
#ifndef HUGEMM_EXAMPLES_NVME_NVME_SPEC_H_
#define HUGEMM_EXAMPLES_NVME_NVME_SPEC_H_

#include <cstddef>
#include <cstdint>

namespace nvme {

// ---- Controller registers, offsets into BAR0 (3.1) ----------------------------------
inline constexpr uint32_t kRegCap = 0x00;    // 64-bit: Controller Capabilities
inline constexpr uint32_t kRegVs = 0x08;     // Version
inline constexpr uint32_t kRegIntms = 0x0c;  // Interrupt Mask Set
inline constexpr uint32_t kRegCc = 0x14;     // Controller Configuration
inline constexpr uint32_t kRegCsts = 0x1c;   // Controller Status
inline constexpr uint32_t kRegAqa = 0x24;    // Admin Queue Attributes
inline constexpr uint32_t kRegAsq = 0x28;    // 64-bit: Admin Submission Queue Base Address
inline constexpr uint32_t kRegAcq = 0x30;    // 64-bit: Admin Completion Queue Base Address
inline constexpr uint32_t kRegDoorbells = 0x1000;

// CAP fields.
inline uint32_t CapMqes(uint64_t cap) { return cap & 0xffff; }         // max entries, 0's based
inline bool CapCqr(uint64_t cap) { return (cap >> 16) & 1; }           // queues must be contiguous
inline uint32_t CapTo(uint64_t cap) { return (cap >> 24) & 0xff; }     // 500 ms units
inline uint32_t CapDstrd(uint64_t cap) { return (cap >> 32) & 0xf; }   // 4 << DSTRD bytes
inline uint32_t CapCss(uint64_t cap) { return (cap >> 37) & 0xff; }    // command sets
inline uint32_t CapMpsmin(uint64_t cap) { return (cap >> 48) & 0xf; }  // 4K << MPSMIN
inline uint32_t CapMpsmax(uint64_t cap) { return (cap >> 52) & 0xf; }  // 4K << MPSMAX
inline constexpr uint32_t kCapCssNvm = 1u << 0;

// CC fields.
inline constexpr uint32_t kCcEnable = 1u << 0;
inline constexpr uint32_t kCcCssNvm = 0u << 4;
inline constexpr uint32_t CcMps(uint32_t mps) { return mps << 7; }  // page = 4K << mps
inline constexpr uint32_t kCcAmsRoundRobin = 0u << 11;
inline constexpr uint32_t kCcShnMask = 3u << 14;
inline constexpr uint32_t kCcShnNormal = 1u << 14;
inline constexpr uint32_t CcIosqes(uint32_t log2) { return log2 << 16; }
inline constexpr uint32_t CcIocqes(uint32_t log2) { return log2 << 20; }

// CSTS fields.
inline constexpr uint32_t kCstsReady = 1u << 0;
inline constexpr uint32_t kCstsFatal = 1u << 1;
inline constexpr uint32_t kCstsShstMask = 3u << 2;
inline constexpr uint32_t kCstsShstComplete = 2u << 2;

// The memory page size this driver uses (CC.MPS = 0). PRP entries address pages of it.
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint32_t kPrpEntriesPerPage = kPageSize / sizeof(uint64_t);

// ---- Queue entries (4.2, 4.6) ------------------------------------------------------
struct Command {
  uint8_t opcode = 0;
  uint8_t flags = 0;  // FUSE (bits 1:0) = 0, PSDT (bits 7:6) = 0: PRPs, not SGLs
  uint16_t cid = 0;
  uint32_t nsid = 0;
  uint32_t cdw2 = 0;
  uint32_t cdw3 = 0;
  uint64_t mptr = 0;
  uint64_t prp1 = 0;
  uint64_t prp2 = 0;
  uint32_t cdw10 = 0;
  uint32_t cdw11 = 0;
  uint32_t cdw12 = 0;
  uint32_t cdw13 = 0;
  uint32_t cdw14 = 0;
  uint32_t cdw15 = 0;
};
static_assert(sizeof(Command) == 64);
inline constexpr uint32_t kCommandSizeLog2 = 6;

struct Completion {
  uint32_t dw0 = 0;  // command specific
  uint32_t dw1 = 0;
  uint16_t sq_head = 0;
  uint16_t sq_id = 0;
  uint16_t cid = 0;
  uint16_t status = 0;  // bit 0: phase tag; bits 15:1: status field
};
static_assert(sizeof(Completion) == 16);
inline constexpr uint32_t kCompletionSizeLog2 = 4;

// The status field (4.6.1): Status Code, Status Code Type, Do Not Retry.
inline uint32_t StatusCode(uint16_t status) { return (status >> 1) & 0xff; }
inline uint32_t StatusCodeType(uint16_t status) { return (status >> 9) & 0x7; }
inline bool StatusDoNotRetry(uint16_t status) { return (status >> 15) & 1; }
inline bool StatusPhase(uint16_t status) { return status & 1; }

// ---- Admin commands (5) ---------------------------------------------------------------
inline constexpr uint8_t kAdminDeleteIoSq = 0x00;
inline constexpr uint8_t kAdminCreateIoSq = 0x01;
inline constexpr uint8_t kAdminDeleteIoCq = 0x04;
inline constexpr uint8_t kAdminCreateIoCq = 0x05;
inline constexpr uint8_t kAdminIdentify = 0x06;
// Create I/O queue CDW11 bits.
inline constexpr uint32_t kQueuePhysicallyContiguous = 1u << 0;
// Identify CNS values (CDW10 bits 7:0).
inline constexpr uint32_t kCnsNamespace = 0x00;
inline constexpr uint32_t kCnsController = 0x01;
inline constexpr size_t kIdentifySize = 4096;

// ---- NVM command set I/O commands --------------------------------------------------
inline constexpr uint8_t kIoWrite = 0x01;
inline constexpr uint8_t kIoRead = 0x02;

// ---- Identify data offsets ---------------------------------------------------------
// Identify Controller data structure.
inline constexpr size_t kIdCtrlVid = 0;    // 2 bytes, PCI vendor ID
inline constexpr size_t kIdCtrlSn = 4;     // 20 bytes, ASCII, space padded
inline constexpr size_t kIdCtrlMn = 24;    // 40 bytes
inline constexpr size_t kIdCtrlFr = 64;    // 8 bytes
inline constexpr size_t kIdCtrlMdts = 77;  // max transfer = (4K << MPSMIN) << MDTS; 0 = none
inline constexpr size_t kIdCtrlVer = 80;   // 4 bytes
inline constexpr size_t kIdCtrlSqes = 512;
inline constexpr size_t kIdCtrlCqes = 513;
inline constexpr size_t kIdCtrlNn = 516;  // 4 bytes, number of namespaces
// Identify Namespace data structure (NVM command set).
inline constexpr size_t kIdNsNsze = 0;     // 8 bytes, size in logical blocks
inline constexpr size_t kIdNsNcap = 8;     // 8 bytes
inline constexpr size_t kIdNsNlbaf = 25;   // number of LBA formats, 0's based
inline constexpr size_t kIdNsFlbas = 26;   // bits 3:0: the format in use
inline constexpr size_t kIdNsLbaf0 = 128;  // 4 bytes per format: MS 15:0, LBADS 23:16

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_NVME_SPEC_H_
