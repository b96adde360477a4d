// The handler may run on any thread at any moment: it touches only fixed storage, atomics
// and async-signal-safe calls (unlink, raise).
#include "runtime/cli/remove_on_signal.h"

#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace hugemm::cli {
namespace {

constexpr int kSlots = 4;
char paths[kSlots][PATH_MAX];
std::atomic<bool> named[kSlots];
// Every signal whose default action ends the process and that a user, a supervisor or a
// limit sends: SIGPIPE too (a reader of the output that goes away ends the run that way),
// SIGQUIT (Ctrl-\), SIGXCPU and SIGXFSZ (ulimit -t, -f). Not the faults (SIGSEGV, SIGBUS,
// ...): after one of those the process's own state is not to be trusted.
constexpr int kSignals[] = {SIGINT,  SIGTERM, SIGHUP,  SIGPIPE, SIGQUIT,
                            SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU, SIGXFSZ};

void RemoveAndDie(int sig) {
  const int saved = errno;
  for (int i = 0; i < kSlots; ++i) {
    if (named[i].load(std::memory_order_acquire)) ::unlink(paths[i]);
  }
  errno = saved;
  // SA_RESETHAND made the action the default again; the signal, blocked while this
  // handler runs, arrives when it returns and ends the process with its own status.
  ::raise(sig);
}

void InstallOnce() {
  static const bool installed = [] {
    for (int sig : kSignals) {
      struct sigaction old = {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler == SIG_IGN) continue;
      struct sigaction act = {};
      act.sa_handler = RemoveAndDie;
      act.sa_flags = SA_RESETHAND;
      sigemptyset(&act.sa_mask);
      for (int other : kSignals) sigaddset(&act.sa_mask, other);
      ::sigaction(sig, &act, nullptr);
    }
    return true;
  }();
  (void)installed;
}

}  // namespace

RemoveOnSignal::RemoveOnSignal(const std::string& path) {
  struct stat st;
  if (path.empty() || path.size() >= PATH_MAX || ::stat(path.c_str(), &st) == 0 ||
      errno != ENOENT) {
    return;
  }
  for (int i = 0; i < kSlots; ++i) {
    if (named[i].load(std::memory_order_relaxed)) continue;
    std::memcpy(paths[i], path.c_str(), path.size() + 1);
    named[i].store(true, std::memory_order_release);
    slot_ = i;
    InstallOnce();
    return;
  }
}

RemoveOnSignal::~RemoveOnSignal() {
  if (slot_ >= 0) named[slot_].store(false, std::memory_order_release);
}

}  // namespace hugemm::cli
