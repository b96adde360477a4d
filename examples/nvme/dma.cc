#include "nvme/dma.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace nvme {

std::string MemorySpec::Name() const {
  if (backing == hugemm::BackingKind::kDevDax) return absl::StrCat("devdax ", devdax_path);
  return absl::StrCat(hugemm::BackingKindName(backing), " ", hugemm::PageSizeName(page_size),
                      node >= 0 ? absl::StrCat(" node ", node) : "");
}

absl::StatusOr<size_t> MemorySpec::PageSize() const {
  if (backing != hugemm::BackingKind::kDevDax) return page_size;
  absl::StatusOr<hugemm::DaxDeviceInfo> dax = hugemm::ReadDaxDevice(devdax_path);
  if (!dax.ok()) return dax.status();
  return dax->align;
}

hugemm::AllocOptions MemorySpec::ForAllocator() const {
  // Field by field: a designated initializer leaving fields out warns under -Wextra.
  hugemm::AllocOptions options;
  options.backing = backing;
  options.page_size = backing == hugemm::BackingKind::kDevDax ? 0 : page_size;
  options.node = node;
  options.devdax_path = devdax_path;
  return options;
}

hugemm::BufferOptions MemorySpec::ForBuffer() const {
  // Field by field: a designated initializer leaving fields out warns under -Wextra.
  hugemm::BufferOptions options;
  options.backing = backing;
  options.page_size = backing == hugemm::BackingKind::kDevDax ? 0 : page_size;
  options.node = node;
  options.devdax_path = devdax_path;
  return options;
}

absl::StatusOr<MemorySpec> ParseMemorySpec(absl::string_view text) {
  const absl::string_view whole = text;
  MemorySpec spec;
  if (absl::ConsumePrefix(&text, "devdax:") && !text.empty()) {
    spec.backing = hugemm::BackingKind::kDevDax;
    spec.page_size = 0;
    spec.devdax_path = std::string(text);
    return spec;
  }
  if (absl::ConsumePrefix(&text, "hugetlb:")) {
    absl::StatusOr<size_t> size = hugemm::ParsePageSize(text);
    if (size.ok() && *size >= hugemm::kPageSize2M) {
      spec.page_size = *size;
      return spec;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("memory \"", whole, "\": want hugetlb:2M, hugetlb:1G or devdax:/dev/daxX.Y"));
}

absl::StatusOr<DmaRegion> DmaRegion::Allocate(hugemm::Runtime& rt, size_t bytes,
                                              const MemorySpec& spec,
                                              const hugemm::IovaMapper* iova) {
  DmaRegion region;
  absl::StatusOr<hugemm::Buffer> buffer = rt.Allocate(bytes, spec.ForAllocator());
  if (!buffer.ok()) return buffer.status();
  region.buffer_ = std::move(*buffer);
  // The controller reads and writes this memory for as long as the driver runs.
  absl::StatusOr<hugemm::PinnedRange> pin = rt.pinner().Pin(
      region.data(), region.size(), hugemm::kGupPin | hugemm::kGupWrite | hugemm::kGupLongterm);
  if (!pin.ok()) return pin.status();
  region.pin_ = std::move(*pin);
  absl::StatusOr<std::vector<hugemm::DmaSegment>> segments =
      iova != nullptr ? iova->Segments(region.pin_) : region.pin_.Segments();
  if (!segments.ok()) return segments.status();
  if (segments->size() != 1) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: %s at %p is %u physical runs, not one", spec.Name(),
                        hugemm::HumanBytes(region.size()), region.data(), segments->size()));
  }
  region.phys_ = (*segments)[0].phys_addr;
  return region;
}

IoPin::IoPin(IoPin&& other) noexcept { *this = std::move(other); }

IoPin& IoPin::operator=(IoPin&& other) noexcept {
  if (this != &other) {
    Release();
    pinner_ = std::exchange(other.pinner_, nullptr);
    dirty_ = other.dirty_;
    spans_ = std::move(other.spans_);
    other.spans_.clear();
  }
  return *this;
}

absl::StatusOr<size_t> IoPin::Pin(hugemm::Runtime& rt, const void* va, size_t length,
                                  bool device_writes, uint64_t max_segment,
                                  absl::Span<hugemm::DmaSegment> segments, bool hold,
                                  hugemm::IovaMapper* iova) {
  Release();
  const hugemm::GupFlags flags =
      hugemm::kGupPin | (device_writes ? hugemm::kGupWrite : hugemm::kGupNone);
  spans_.clear();
  absl::StatusOr<size_t> n =
      iova != nullptr ? iova->PinSegments(va, length, flags, max_segment, segments, &spans_)
                      : rt.pinner().PinSegments(va, length, flags, max_segment, segments, &spans_);
  if (!n.ok()) return n.status();
  pinner_ = &rt.pinner();
  dirty_ = device_writes;
  if (!hold) Release();
  return n;
}

void IoPin::Release() {
  if (pinner_ == nullptr) return;
  pinner_->UnpinFolios(spans_, hugemm::RefKind::kPin, dirty_);
  spans_.clear();
  pinner_ = nullptr;
}

}  // namespace nvme
