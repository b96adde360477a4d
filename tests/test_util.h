// Shared test helpers: huge page availability, and the skip-or-fail rule.
//
// A test that needs something this machine may not have (free 1G pages, a hugetlbfs
// mount, a /dev/dax device) calls HUGEMM_NEED(condition, reason). Without
// HUGEMM_REQUIRE_HUGEPAGES=1 a missing resource skips the test with the reason; with it
// (CI, where the resources are set up) the test fails instead.
#ifndef HUGEMM_TESTS_TEST_UTIL_H_
#define HUGEMM_TESTS_TEST_UTIL_H_

#include <signal.h>
#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <string>

#include "gtest/gtest.h"
#include "hugemm/backing.h"

namespace hugemm::testing {

inline bool RequireHugePages() {
  const char* v = std::getenv("HUGEMM_REQUIRE_HUGEPAGES");
  return v != nullptr && std::string(v) == "1";
}

// Free pages in the kernel pool of this size (0 when the size is unsupported).
int64_t FreeHugePages(size_t page_size);

// Whether `count` pages of this size are free, waiting up to a few seconds for them: a
// process that just exited may still hold its huge pages for a moment (the kernel tears
// an io_uring instance down, and drops its registered buffers' pins, in the background).
bool WaitForFreeHugePages(size_t page_size, int64_t count);
// Whether the kernel has huge pages of `page_size` at all (a CPU without 1G pages, such
// as some virtual ones, has no 1G pool to reserve from).
bool KernelHasHugePageSize(size_t page_size);

// A hugetlbfs mount of this page size, or "" when there is none.
std::string HugetlbfsMountFor(size_t page_size);

// Runs `command` through the shell and returns its stdout (add "2>&1" for stderr too);
// `exit_code` gets its exit status, or -1 when it did not exit.
std::string RunCommand(const std::string& command, int* exit_code);

// SIGALRM to the thread that makes it every `period_ns`, to `handler`, installed with or
// without SA_RESTART (as a profiler's timer would be). The timer goes, and the old
// handler comes back, with the object.
class ThreadTicker {
 public:
  ThreadTicker(long period_ns, bool restart, void (*handler)(int));
  ~ThreadTicker();
  ThreadTicker(const ThreadTicker&) = delete;
  ThreadTicker& operator=(const ThreadTicker&) = delete;

 private:
  struct sigaction old_ = {};
  timer_t timer_ = {};
};

// This process's VmPin in kB (memory the kernel pins for it), or -1 when unreadable.
int64_t VmPinKb();
// VmPinKb once it holds still: a ring an earlier test closed lets its buffers go in the
// kernel's own time (io_uring ends a ring in a worker), so a baseline taken at once may
// still count them. Waits at most about 2 s.
int64_t SettledVmPinKb();

// The descriptors this process has open.
size_t OpenFds();

// The calling thread's memory policy as the kernel reports it (get_mempolicy(2) called
// directly, not through an Os), mode -1 when it refuses; and set_mempolicy(2) of one,
// false when refused. For tests that check a call gives the thread its policy back.
MemoryPolicy ThreadPolicyNow();
bool SetThreadPolicy(const MemoryPolicy& policy);
// "mode 0x8002 nodes 0,1" for a failure message.
std::string DescribePolicy(const MemoryPolicy& policy);
// A policy of `mode` (with its flags) over `nodes`.
MemoryPolicy PolicyOf(int mode, std::initializer_list<int> nodes);

// Runs `body` in a child of fork() that first becomes uid and gid 65534 with no
// supplementary groups and no capabilities, as a program run by an ordinary user is.
// Returns the child's exit code: body's result, kCannotDropPrivileges when the drop
// failed (the test process is not root), or -1 when it did not exit.
inline constexpr int kCannotDropPrivileges = 99;
int RunUnprivileged(const std::function<int()>& body);

// Runs `body` in a child of fork() with a mount namespace of its own, in which a hugetlbfs
// of `page_size` pages (2M or 1G) limited to `size` bytes (its size= option) is mounted:
// what a program meets when a mount it shares fills up, without touching the machine's
// pools. The mount is the child's alone and goes with it. Returns the child's exit code:
// body's result, kCannotMount when the namespace or the mount is refused (not root), or -1
// when it did not exit.
inline constexpr int kCannotMount = 98;
int RunWithSmallHugetlbfs(size_t size, const std::function<int(const std::string& mount)>& body,
                          size_t page_size = 2 << 20);

// The device-DAX device under test ($HUGEMM_TEST_DAX), or "".
inline std::string TestDaxDevice() {
  const char* v = std::getenv("HUGEMM_TEST_DAX");
  return v ? std::string(v) : std::string();
}

// A fresh temporary directory, removed with its contents when this object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  // Writes `contents` to path()/relative, creating parent directories.
  void WriteFile(const std::string& relative, const std::string& contents) const;

 private:
  std::string path_;
};

}  // namespace hugemm::testing

#define HUGEMM_NEED(condition, reason)                                      \
  do {                                                                      \
    if (!(condition)) {                                                     \
      if (::hugemm::testing::RequireHugePages()) {                          \
        FAIL() << "HUGEMM_REQUIRE_HUGEPAGES=1 but unavailable: " << reason; \
      } else {                                                              \
        GTEST_SKIP() << reason;                                             \
      }                                                                     \
    }                                                                       \
  } while (0)

// Needs `count` free huge pages of `page_size` in the kernel pool. A page size the kernel
// does not have at all is a skip even under HUGEMM_REQUIRE_HUGEPAGES: no setup can
// reserve it on this machine.
#define HUGEMM_NEED_HUGEPAGES(page_size, count)                                                   \
  do {                                                                                            \
    if (!::hugemm::testing::KernelHasHugePageSize(page_size)) {                                   \
      GTEST_SKIP() << "this kernel has no " << ::hugemm::PageSizeName(page_size)                  \
                   << " huge pages (the CPU lacks them)";                                         \
    }                                                                                             \
    HUGEMM_NEED(::hugemm::testing::WaitForFreeHugePages(page_size, count),                        \
                "needs " << (count) << " free " << ::hugemm::PageSizeName(page_size)              \
                         << " huge pages, have " << ::hugemm::testing::FreeHugePages(page_size)); \
  } while (0)

#define HUGEMM_ASSERT_OK(expr)                                    \
  do {                                                            \
    const ::absl::Status _st = ::hugemm::testing::AsStatus(expr); \
    ASSERT_TRUE(_st.ok()) << _st;                                 \
  } while (0)

namespace hugemm::testing {
inline absl::Status AsStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_TEST_UTIL_H_
