#include "runtime/sys/fork_watch.h"

#include <pthread.h>

namespace hugemm::bridge {

constinit std::atomic<uint64_t> ForkWatch::count_{0};

uint64_t ForkWatch::Register() {
  // Before any fork() the new object could be inherited by.
  [[maybe_unused]] static const bool registered = [] {
    if (pthread_atfork(nullptr, nullptr, [] { count_.fetch_add(1, std::memory_order_relaxed); }) !=
        0) {
      count_.store(kUnknown, std::memory_order_relaxed);
      return false;
    }
    return true;
  }();
  return count_.load(std::memory_order_relaxed);
}

}  // namespace hugemm::bridge
