// Testing only: reaches into a Pinner to make races happen on purpose.
#ifndef HUGEMM_RUNTIME_GUP_PINNER_TEST_PEER_H_
#define HUGEMM_RUNTIME_GUP_PINNER_TEST_PEER_H_

#include <cstdint>
#include <functional>
#include <utility>

#include "hugemm/gup.h"

namespace hugemm::gup_internal {

class PinnerTestPeer {
 public:
  // Runs `hook` on the fast path between the grab and the re-check, inside the read
  // section, so that a test can change the entry there. The hook must not wait for a
  // grace period: Split and Protect are fine, an Unmap that frees tables is not. Set it
  // before the Pinner is shared between threads.
  static void SetAfterGrab(Pinner& pinner, std::function<void(uintptr_t va)> hook) {
    pinner.after_grab_ = std::move(hook);
  }
};

}  // namespace hugemm::gup_internal

#endif  // HUGEMM_RUNTIME_GUP_PINNER_TEST_PEER_H_
