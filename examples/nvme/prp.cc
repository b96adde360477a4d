#include "nvme/prp.h"

#include "absl/strings/str_format.h"
#include "nvme/nvme_spec.h"

namespace nvme {
namespace {

constexpr uint64_t kPageMask = kPageSize - 1;

size_t ListPagesForEntries(size_t list_entries) {
  if (list_entries == 0) return 0;
  // Every list page but the last gives its final slot to the chain pointer.
  if (list_entries <= kPrpEntriesPerPage) return 1;
  return (list_entries - 1 + (kPrpEntriesPerPage - 1) - 1) / (kPrpEntriesPerPage - 1);
}

size_t ListEntriesFor(size_t entries) { return entries > 2 ? entries - 1 : 0; }

// Walks the segments in data order: the physical address of a byte of the transfer.
class SegmentCursor {
 public:
  explicit SegmentCursor(absl::Span<const hugemm::DmaSegment> segments) : segments_(segments) {}
  // `offset` only grows from call to call.
  uint64_t PhysAt(uint64_t offset) {
    while (offset >= start_ + segments_[i_].length) start_ += segments_[i_++].length;
    return segments_[i_].phys_addr + (offset - start_);
  }

 private:
  absl::Span<const hugemm::DmaSegment> segments_;
  size_t i_ = 0;
  uint64_t start_ = 0;  // data offset of segments_[i_]
};

}  // namespace

size_t PrpListPagesFor(uint64_t offset, uint64_t length) {
  if (length == 0) return 0;
  const size_t entries = ((offset & kPageMask) + length + kPageSize - 1) / kPageSize;
  return ListPagesForEntries(ListEntriesFor(entries));
}

absl::StatusOr<Prps> BuildPrps(absl::Span<const hugemm::DmaSegment> segments,
                               const PrpListPages& list, const PrpFault& fault) {
  uint64_t length = 0;
  for (const hugemm::DmaSegment& s : segments) {
    if (s.length == 0) return absl::InvalidArgumentError("PRPs: an empty DMA segment");
    length += s.length;
  }
  if (length == 0) return absl::InvalidArgumentError("PRPs: no bytes to describe");
  const uint64_t first = segments[0].phys_addr;
  if (first & 3) {
    return absl::InvalidArgumentError(
        absl::StrFormat("PRPs: the first byte at physical 0x%x is not dword-aligned", first));
  }
  Prps out;
  out.entries = ((first & kPageMask) + length + kPageSize - 1) / kPageSize;
  const size_t list_entries = ListEntriesFor(out.entries);
  out.list_pages = ListPagesForEntries(list_entries);
  if (out.list_pages > list.pages) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("PRPs: %u bytes need %u list pages, the command has %u", length,
                        out.list_pages, list.pages));
  }
  auto faulted = [&](size_t index, uint64_t address) {
    return static_cast<int64_t>(index) == fault.entry ? address + fault.delta : address;
  };
  out.prp1 = faulted(0, first);

  // Entry i >= 1 names the page holding data byte i * 4K - (first's offset).
  SegmentCursor cursor(segments);
  size_t slot = 0;  // in the current list page
  size_t page = 0;  // list page being written
  size_t left = list_entries;
  for (size_t i = 1; i < out.entries; ++i) {
    const uint64_t offset = i * kPageSize - (first & kPageMask);
    const uint64_t phys = cursor.PhysAt(offset);
    if (phys & kPageMask) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "PRPs: byte %u of the transfer starts a page but sits at physical 0x%x, inside one",
          offset, phys));
    }
    const uint64_t entry = faulted(i, phys);
    if (list_entries == 0) {
      out.prp2 = entry;
      continue;
    }
    if (slot == kPrpEntriesPerPage - 1 && left > 1) {
      // This page is full but for its last slot, and more than one entry remains.
      list.va[page * kPrpEntriesPerPage + slot] = list.phys + (page + 1) * kPageSize;
      ++page;
      slot = 0;
    }
    list.va[page * kPrpEntriesPerPage + slot++] = entry;
    --left;
  }
  if (list_entries != 0) out.prp2 = list.phys;
  return out;
}

}  // namespace nvme
