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

void ReserveDescriptors::Put(Folio* folio) {
  folio->owner_private[0] = reinterpret_cast<uint64_t>(free_);
  free_ = folio;
  --in_use_;
}

}  // namespace hugemm::alloc_internal
