// Where folio descriptors live. System memory by default: a per-pool slab of 56-byte
// descriptors, singly and in runs of 64 (a split region's 4K folios, region.h), never
// returned to the OS while the pool lives, so a stale Folio* always points at readable
// memory (the kernel's SLAB_TYPESAFE_BY_RCU idea). Or a reserve carved from the front of
// the extent itself (seed 002's vmem_altmap), falling back to the slab when the reserve
// is full; such folios carry kFolioReserveMeta.
#ifndef HUGEMM_RUNTIME_ALLOC_DESCRIPTORS_H_
#define HUGEMM_RUNTIME_ALLOC_DESCRIPTORS_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "hugemm/folio.h"

namespace hugemm::alloc_internal {

// A descriptor slab in system memory. Not thread-safe: the pool's mutex guards it.
class SystemDescriptors {
 public:
  SystemDescriptors() = default;
  SystemDescriptors(const SystemDescriptors&) = delete;
  SystemDescriptors& operator=(const SystemDescriptors&) = delete;

  Folio* Get();
  void Put(Folio* folio);
  // kRun contiguous descriptors (a region's order-0 run), and back.
  Folio* GetRun();
  void PutRun(Folio* run);
  size_t in_use() const { return in_use_; }
  // Every chunk and run held, in use or not, with its pointer in its list.
  size_t bytes() const { return chunks_.size() * kChunkBytes + runs_.size() * kRunBytes; }

  static constexpr size_t kPerChunk = 16;
  static constexpr size_t kChunkBytes = kPerChunk * sizeof(Folio) + sizeof(void*);
  static constexpr size_t kRun = 64;
  static constexpr size_t kRunBytes = kRun * sizeof(Folio) + 2 * sizeof(void*);

 private:
  std::vector<std::unique_ptr<Folio[]>> chunks_;
  Folio* free_ = nullptr;  // linked through owner_private[0]
  std::vector<std::unique_ptr<Folio[]>> runs_;
  std::vector<Folio*> free_runs_;  // capacity: one pointer per run, counted in kRunBytes
  size_t in_use_ = 0;
};

// Descriptors in device memory: `slots` descriptor-sized slots at `base`. Not thread-safe.
class ReserveDescriptors {
 public:
  ReserveDescriptors() = default;
  ReserveDescriptors(std::byte* base, size_t slots) : base_(base), slots_(slots) {}

  // nullptr when full.
  Folio* Get();
  void Put(Folio* folio);
  // n contiguous slots for good (until the extent goes), or nullptr when they do not fit.
  Folio* GetRun(size_t n);
  size_t slots() const { return slots_; }
  size_t in_use() const { return in_use_; }

 private:
  std::byte* base_ = nullptr;
  size_t slots_ = 0;
  size_t next_ = 0;        // slots below this have been handed out at least once
  Folio* free_ = nullptr;  // linked through owner_private[0]
  size_t in_use_ = 0;
};

}  // namespace hugemm::alloc_internal

#endif  // HUGEMM_RUNTIME_ALLOC_DESCRIPTORS_H_
