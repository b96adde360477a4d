// Reader registration with liburcu, undone at the very end of a thread's life.
#include "runtime/pgtable/rcu.h"

#include <pthread.h>

namespace hugemm::pgtable_internal {
namespace {

void Unregister(void* /*value*/) {
  urcu_memb_unregister_thread();
  // A pthread key destructor of another library that reads the table after this one
  // registers the thread again (and sets the key, so this runs once more).
  t_rcu_registered = false;
}

// Without a key (the process ran out of them): a thread_local whose destructor
// unregisters, which covers every thread_local made after the first read section.
struct UnregisterAtThreadExit {
  ~UnregisterAtThreadExit() {
    if (t_rcu_registered) Unregister(nullptr);
  }
};

pthread_key_t g_key;

}  // namespace

void RegisterRcuReader() {
  static const bool keyed = pthread_key_create(&g_key, &Unregister) == 0;
  urcu_memb_register_thread();
  t_rcu_registered = true;
  if (keyed && pthread_setspecific(g_key, &t_rcu_registered) == 0) return;
  static thread_local UnregisterAtThreadExit fallback;
  (void)fallback;
}

}  // namespace hugemm::pgtable_internal
