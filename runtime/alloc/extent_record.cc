#include "runtime/alloc/extent_record.h"

#include <utility>

namespace hugemm::alloc_internal {

ExtentRecord::ExtentRecord(Extent mapped, int region_order, Folio* heads)
    : extent(std::move(mapped)),
      base(extent.data()),
      size(extent.size()),
      region_order(region_order),
      regions(size >> (region_order + kPageShift)),
      heads(heads) {}

ExtentRecord::~ExtentRecord() {
  std::atomic<Region*>* dir = split.load(std::memory_order_relaxed);
  if (dir == nullptr) return;
  for (size_t i = 0; i < regions; ++i) delete dir[i].load(std::memory_order_relaxed);
  delete[] dir;
}

Region* ExtentRecord::MakeSplitRecord(size_t i, size_t first_native, Folio* whole) {
  std::atomic<Region*>* dir = split.load(std::memory_order_relaxed);
  if (dir == nullptr) {
    dir = new std::atomic<Region*>[regions]();
    split.store(dir, std::memory_order_release);
  }
  Region* region = dir[i].load(std::memory_order_relaxed);
  if (region != nullptr) return region;
  region = new Region(RegionBase(i), region_order, this, first_native, &heads[i]);
  // Filled before it is published: a reader that finds the record finds the folio.
  if (whole != nullptr) region->Set(region_order, 0, whole);
  dir[i].store(region, std::memory_order_release);
  ++split_records;
  return region;
}

Folio* ExtentRecord::Find(const void* addr) const {
  const auto off = static_cast<size_t>(static_cast<const std::byte*>(addr) - base);
  if (off >= size) return nullptr;
  const size_t i = off >> (region_order + kPageShift);
  if (const Region* region = SplitRecord(i)) {
    return region->Find((off >> kPageShift) & ((size_t{1} << region_order) - 1));
  }
  return &heads[i];
}

size_t ExtentRecord::metadata_bytes() const {
  size_t bytes = sizeof(ExtentRecord) + extent.pfns().size() * sizeof(uint64_t);
  if (reserve != nullptr) bytes += sizeof(ReserveDescriptors);
  if (std::atomic<Region*>* dir = split.load(std::memory_order_relaxed)) {
    bytes += regions * sizeof(std::atomic<Region*>);
    for (size_t i = 0; i < regions; ++i) {
      if (const Region* r = dir[i].load(std::memory_order_relaxed)) bytes += r->metadata_bytes();
    }
  }
  return bytes;
}

}  // namespace hugemm::alloc_internal
