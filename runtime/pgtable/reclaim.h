// What a writer unhooked from the tree, kept until no reader can still see it.
#ifndef HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_
#define HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_

#include <cstdint>
#include <new>
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
  // Inline room for a few: the unmap of a buffer's folio needs no heap, and an unmap
  // whose heap ran out always has room again once its garbage is reclaimed.
  absl::InlinedVector<ExclusiveRecord*, 2> records;
  absl::InlinedVector<std::pair<Folio*, int32_t>, 4> puts;
  bool unhooked = false;  // a table readers could reach was detached: hints go stale

  // Room for one more put (and record, with `record`), grown from the heap when full:
  // false when the heap has none to give, and the leaf is then left as it is.
  bool MakeRoom(bool record) noexcept {
    try {
      if (puts.size() == puts.capacity()) puts.reserve(2 * puts.capacity());
      if (record && records.size() == records.capacity()) records.reserve(2 * records.capacity());
    } catch (const std::bad_alloc&) {
      return false;
    }
    return true;
  }

  void Add(Table* t) {
    t->next = tables;
    tables = t;
  }
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_RECLAIM_H_
