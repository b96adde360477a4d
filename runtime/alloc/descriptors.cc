#include "runtime/alloc/descriptors.h"

#include <new>

namespace hugemm::alloc_internal {

Folio* SystemDescriptors::Get() {
  if (free_ == nullptr) {
    chunks_.push_back(std::make_unique<Folio[]>(kPerChunk));
    Folio* chunk = chunks_.back().get();
    for (size_t i = 0; i < kPerChunk; ++i) {
      chunk[i].owner_private[0] = reinterpret_cast<uint64_t>(free_);
      free_ = &chunk[i];
    }
  }
  Folio* f = free_;
  free_ = reinterpret_cast<Folio*>(f->owner_private[0]);
  f->owner_private[0] = 0;
  ++in_use_;
  return f;
}

void SystemDescriptors::Put(Folio* folio) {
  folio->owner_private[0] = reinterpret_cast<uint64_t>(free_);
  free_ = folio;
  --in_use_;
}

Folio* SystemDescriptors::GetRun() {
  if (free_runs_.empty()) {
    runs_.push_back(std::make_unique<Folio[]>(kRun));
    // Room to take every run back, so PutRun never allocates.
    if (free_runs_.capacity() < runs_.capacity()) free_runs_.reserve(runs_.capacity());
    return runs_.back().get();
  }
  Folio* run = free_runs_.back();
  free_runs_.pop_back();
  return run;
}

void SystemDescriptors::PutRun(Folio* run) { free_runs_.push_back(run); }

Folio* ReserveDescriptors::Get() {
  Folio* f = nullptr;
  if (free_ != nullptr) {
    f = free_;
    free_ = reinterpret_cast<Folio*>(f->owner_private[0]);
    f->owner_private[0] = 0;
  } else if (next_ < slots_) {
    // The reserve is device memory with whatever the device held: construct in place.
    f = new (base_ + next_++ * sizeof(Folio)) Folio();
  } else {
    return nullptr;
  }
  ++in_use_;
  return f;
}

Folio* ReserveDescriptors::GetRun(size_t n) {
  if (slots_ - next_ < n) return nullptr;
  Folio* run = reinterpret_cast<Folio*>(base_ + next_ * sizeof(Folio));
  for (size_t i = 0; i < n; ++i) new (base_ + (next_ + i) * sizeof(Folio)) Folio();
  next_ += n;
  in_use_ += n;
  return run;
}

void ReserveDescriptors::Put(Folio* folio) {
  folio->owner_private[0] = reinterpret_cast<uint64_t>(free_);
  free_ = folio;
  --in_use_;
}

}  // namespace hugemm::alloc_internal
