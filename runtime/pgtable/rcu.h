// The grace periods behind the shadow table: liburcu's memb flavour (readers pay a
// thread-local counter update; writers pay a membarrier). Each reader thread registers
// itself on first use and unregisters when it exits, after all its thread_local objects
// are destroyed: one of them (a Buffer, a PinnedRange) may still read the table then.
//
// ThreadSanitizer cannot see liburcu's barriers, so the read-side unlock releases and the
// end of a grace period acquires one word: a reader's loads from a table then happen
// before the writer frees it, which is exactly the guarantee RCU gives.
#ifndef HUGEMM_RUNTIME_PGTABLE_RCU_H_
#define HUGEMM_RUNTIME_PGTABLE_RCU_H_

#include "runtime/util/sanitizers.h"

// The inline read side (_LGPL_SOURCE) saves a call per read section. Under TSan the calls
// go to the uninstrumented library instead, whose internal wake-up word TSan would
// otherwise report.
#ifndef HUGEMM_TSAN
#define _LGPL_SOURCE 1
#endif
#include <urcu/urcu-memb.h>

#ifdef HUGEMM_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace hugemm::pgtable_internal {

#ifdef HUGEMM_TSAN
inline char tsan_grace_period;
#endif

// Whether this thread is registered with liburcu. Trivially destructible, so it stays
// readable while the thread's thread_local objects are destroyed.
inline thread_local bool t_rcu_registered = false;

// Registers this thread, and arranges its unregistration for after every thread_local
// destructor of the thread (a pthread key's destructor runs after them). An object whose
// destructor unregistered instead would run before the destructors of thread_locals made
// before the thread's first read section, which would then read the table unregistered:
// no grace period would wait for them.
void RegisterRcuReader();

inline void RcuReadLock() {
  if (!t_rcu_registered) [[unlikely]] {
    RegisterRcuReader();
  }
  urcu_memb_read_lock();
}

inline void RcuReadUnlock() {
#ifdef HUGEMM_TSAN
  __tsan_release(&tsan_grace_period);
#endif
  urcu_memb_read_unlock();
}

inline void RcuSynchronize() {
  urcu_memb_synchronize_rcu();
#ifdef HUGEMM_TSAN
  __tsan_acquire(&tsan_grace_period);
#endif
}

// The public ReadSection's inline twin for the table's own code (and GUP's fast path):
// the same read-side critical section, without a call.
class ReadLock {
 public:
  ReadLock() { RcuReadLock(); }
  ~ReadLock() { RcuReadUnlock(); }
  ReadLock(const ReadLock&) = delete;
  ReadLock& operator=(const ReadLock&) = delete;
};

}  // namespace hugemm::pgtable_internal

#endif  // HUGEMM_RUNTIME_PGTABLE_RCU_H_
