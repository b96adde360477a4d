// The owner of one external registration's borrowed folio descriptors.
#ifndef HUGEMM_RUNTIME_PGTABLE_EXTERNAL_REGION_H_
#define HUGEMM_RUNTIME_PGTABLE_EXTERNAL_REGION_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "hugemm/pgtable.h"

namespace hugemm {

// The descriptors hold one reference each (this region's) and are freed with the region,
// after every mapping of them is gone and a grace period has passed; never to a pool.
class PageTable::ExternalRegion : public FolioOwner {
 public:
  // One page the kernel maps, as a folio, with the protection the kernel gives it.
  struct Borrowed {
    std::unique_ptr<Folio> folio;
    Prot prot;
  };
  uintptr_t va = 0;
  size_t length = 0;
  std::vector<Borrowed> folios;
  // An unregistration of it is under way (under the table's external_mu_): the region
  // stays in the table's map until that succeeds, so its descriptors are freed only then.
  bool leaving = false;
  void ReleaseFolio(Folio* /*folio*/) override {}
};

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_PGTABLE_EXTERNAL_REGION_H_
