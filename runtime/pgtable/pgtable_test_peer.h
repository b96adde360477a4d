// Testing only: what a PageTable keeps to itself.
#ifndef HUGEMM_RUNTIME_PGTABLE_PGTABLE_TEST_PEER_H_
#define HUGEMM_RUNTIME_PGTABLE_PGTABLE_TEST_PEER_H_

#include <atomic>
#include <cstddef>

#include "hugemm/pgtable.h"

namespace hugemm::pgtable_internal {

class PageTableTestPeer {
 public:
  // Tables that exist: the root, live tables, deposited ones and those not yet reclaimed.
  // 1 once everything is unmapped.
  static size_t TableCount(const PageTable& table) {
    return table.tables_.load(std::memory_order_relaxed);
  }
  // Calls `hook(arg)` each time a change of a range lets go of a leaf that sticks out of
  // it, just before splitting it. Not thread-safe: set it before the table is shared.
  static void SetBeforeSplit(PageTable& table, void (*hook)(void*), void* arg) {
    table.before_split_ = hook;
    table.before_split_arg_ = arg;
  }
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_PGTABLE_TEST_PEER_H_
