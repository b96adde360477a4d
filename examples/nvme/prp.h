// Physical Region Page entries (NVMe 1.4, 4.3): how a command names its data buffer.
//
// With a 4K memory page size, PRP1 holds the physical address of the first byte (any
// dword-aligned offset inside its page); every further page of the transfer is named by
// its page-aligned physical address: in PRP2 when there is exactly one more, otherwise
// in a PRP list that PRP2 points at. A list page holds 512 entries; when more are
// needed, the last entry of a full list page points at the next list page.
//
// The input is hugemm's DMA segments of the buffer (physically contiguous byte runs in
// buffer order), so a transfer may start mid-page, cross folio boundaries and span any
// number of segments, as long as every page boundary of the data falls on a page
// boundary in physical memory (which holds for any buffer of whole 4K pages).
#ifndef HUGEMM_EXAMPLES_NVME_PRP_H_
#define HUGEMM_EXAMPLES_NVME_PRP_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "hugemm/gup.h"

namespace nvme {

// Physically contiguous 4K list pages: page k at va + 512 k, physical phys + 4096 k.
struct PrpListPages {
  uint64_t* va = nullptr;
  uint64_t phys = 0;
  size_t pages = 0;
};

struct Prps {
  uint64_t prp1 = 0;
  uint64_t prp2 = 0;      // 0, the second page, or the first list page
  size_t entries = 0;     // page addresses named, PRP1 included
  size_t list_pages = 0;  // list pages written
};

// For tests that must see a wrong address caught: entry `entry` (0 = PRP1, then one
// per page in order) is moved by `delta` bytes after it is computed.
struct PrpFault {
  int64_t entry = -1;
  int64_t delta = 0;
};

// How many list pages a transfer of `length` bytes starting `offset` bytes into its
// first page needs (0 when PRP1 and PRP2 suffice).
size_t PrpListPagesFor(uint64_t offset, uint64_t length);

// Describes the bytes of `segments` as PRPs, writing list entries into `list`.
// InvalidArgument: no bytes, a first byte that is not dword-aligned, a page boundary of
// the data that is not one in physical memory (say which byte, and where it sits).
// ResourceExhausted: more list pages needed than `list` has.
absl::StatusOr<Prps> BuildPrps(absl::Span<const hugemm::DmaSegment> segments,
                               const PrpListPages& list, const PrpFault& fault = {});

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_PRP_H_
