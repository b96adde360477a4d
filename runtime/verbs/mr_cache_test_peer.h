// Tests only: reaches into an MrCache to switch its validity check off, to show that the
// check is what keeps the cache from handing out stale registrations.
#ifndef HUGEMM_RUNTIME_VERBS_MR_CACHE_TEST_PEER_H_
#define HUGEMM_RUNTIME_VERBS_MR_CACHE_TEST_PEER_H_

#include "hugemm/verbs.h"
#include "runtime/verbs/cache_core.h"

namespace hugemm::verbs_internal {

class MrCacheTestPeer {
 public:
  // With the check off, a registration is never dropped when its memory changes and a
  // hit never compares sequence words: an address-keyed cache with no invalidation.
  static void SetValidityCheck(MrCache& cache, bool on) { cache.core_->set_check_validity(on); }
};

}  // namespace hugemm::verbs_internal

#endif  // HUGEMM_RUNTIME_VERBS_MR_CACHE_TEST_PEER_H_
