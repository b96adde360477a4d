// Whether this process is a child of fork() of the one that made an object. For the
// objects whose memory is MADV_DONTFORK (pool extents, the kernel pin ring's buffers): a
// child has none of it, so they refuse to hand it out or give it back there.
//
// The check is one relaxed load and no system call (getpid() costs about 150 ns): a
// pthread_atfork child handler, registered by the first ForkWatch, counts the process's
// forks. Where it could not be registered (pthread_atfork fails only for want of
// memory), the check asks getpid() instead.
//
// Thread safety: InChild may be called from any thread.
//
// libhugemm-verbs.so makes ForkWatches too, and a process has one count: so the class is
// in namespace hugemm::bridge, whose ForkWatch libhugemm.so exports by name for it
// (cmake/libhugemm.map). It is no API: no installed header declares it.
#ifndef HUGEMM_RUNTIME_SYS_FORK_WATCH_H_
#define HUGEMM_RUNTIME_SYS_FORK_WATCH_H_

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace hugemm {
namespace bridge {

class ForkWatch {
 public:
  ForkWatch() : forks_at_birth_(Register()) {}

  bool InChild() const {
    const uint64_t forks = count_.load(std::memory_order_relaxed);
    if (forks == kUnknown) [[unlikely]]
      return ::getpid() != pid_;
    return forks != forks_at_birth_;
  }
  // The process that made this object, for messages.
  pid_t pid() const { return pid_; }

 private:
  // Registers the child handler once; the count now.
  static uint64_t Register();
  static constexpr uint64_t kUnknown = ~uint64_t{0};
  // How many fork()s made this process, counted from the first ForkWatch's making.
  // Defined in libhugemm alone (fork_watch.cc), not inline in each library.
  static std::atomic<uint64_t> count_;

  pid_t pid_ = ::getpid();
  uint64_t forks_at_birth_;
};

}  // namespace bridge

using bridge::ForkWatch;

}  // namespace hugemm

#endif  // HUGEMM_RUNTIME_SYS_FORK_WATCH_H_
