// A file a benchmark creates is removed when the run ends, by the run itself; a SIGINT,
// SIGTERM, SIGHUP, SIGQUIT, SIGPIPE (a reader of the output gone), SIGALRM, SIGUSR1,
// SIGUSR2, SIGXCPU or SIGXFSZ ends the process before that.
// A file in a hugetlbfs mount would keep its huge pages out of the pool until someone
// removed it, a created I/O target would keep its gigabyte on disk. RemoveOnSignal names
// such a file for the time of the run: one of those signals removes it and then ends the
// process as the signal would have (a signal the caller ignores, as a shell does for a
// background job, stays ignored).
#ifndef HUGEMM_RUNTIME_CLI_REMOVE_ON_SIGNAL_H_
#define HUGEMM_RUNTIME_CLI_REMOVE_ON_SIGNAL_H_

#include <string>

namespace hugemm::cli {

// Thread-compatible: made and destroyed by the thread that runs the command; the signal
// handler only reads what the constructor published.
class RemoveOnSignal {
 public:
  // Names `path` (nothing when it is empty or already exists: only a file the run is
  // about to create is the run's to remove).
  explicit RemoveOnSignal(const std::string& path);
  // The run has removed the file itself (or kept it): a signal now leaves it alone.
  ~RemoveOnSignal();
  RemoveOnSignal(const RemoveOnSignal&) = delete;
  RemoveOnSignal& operator=(const RemoveOnSignal&) = delete;

 private:
  int slot_ = -1;
};

}  // namespace hugemm::cli

#endif  // HUGEMM_RUNTIME_CLI_REMOVE_ON_SIGNAL_H_
