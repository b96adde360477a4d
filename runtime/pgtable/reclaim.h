// What a writer unhooked from the tree, kept until no reader can still see it.
#ifndef HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_
#define HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "hugemm/folio.h"
#include "runtime/pgtable/table.h"

namespace hugemm::pgtable_internal {

// Freed by PageTable::Reclaim after a grace period, and the folio references dropped
// then too, so that a reader that still sees an entry never sees its folio freed.
struct Garbage {
  Table* tables = nullptr;  // linked through `next`, each with its deposits
  std::vector<ExclusiveRecord*> records;
  // Inline room for a few: the unmap of a buffer's folio needs no heap.
  absl::InlinedVector<std::pair<Folio*, int32_t>, 4> puts;
  bool unhooked = false;  // a table readers could reach was detached: hints go stale

  void Add(Table* t) {
    t->next = tables;
    tables = t;
  }
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_
