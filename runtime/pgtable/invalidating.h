// Announcing a change of the table to its subscribers, scoped.
#ifndef HUGEMM_RUNTIME_PGTABLE_INVALIDATING_H_
#define HUGEMM_RUNTIME_PGTABLE_INVALIDATING_H_

#include "hugemm/notify.h"

namespace hugemm::pgtable_internal {

// Announces a change for its lifetime: invalidate-start when made, invalidate-end when it
// goes out of scope. Made outside every table lock, as subscribers require.
class Invalidating {
 public:
  Invalidating(NotifierRegistry& notifiers, const Invalidation& inv)
      : notifiers_(notifiers), inv_(inv) {
    notifiers_.InvalidateStart(inv_);
  }
  ~Invalidating() { notifiers_.InvalidateEnd(inv_); }
  Invalidating(const Invalidating&) = delete;
  Invalidating& operator=(const Invalidating&) = delete;

 private:
  NotifierRegistry& notifiers_;
  const Invalidation inv_;
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_INVALIDATING_H_
