// hugemm_open with the address space nearly used up, in a process of its own: what the
// test can force depends on what the process already maps and keeps. A thread an earlier
// test joined leaves its stack in glibc's cache, and an open in a child of that process
// reuses it and needs no new mapping at all, so no limit can refuse it there.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "soak/footprint.h"

namespace {

// The address space nearly used up (RLIMIT_AS a little above what the process maps):
// hugemm_open answers -ENOMEM and leaves nothing behind, where an exception out of the
// runtime's tables used to end the program; with room enough it opens. Each headroom in
// a child of its own, whose limit is its own.
TEST(CApiExhaustion, NoAddressSpaceLeftIsEnomemFromOpenNotAnAbort) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizers reserve terabytes of address space of their own";
#endif
  int opened = 0;
  int refused = 0;
  for (size_t headroom = 0; headroom <= (size_t{4} << 20); headroom += size_t{128} << 10) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      size_t vm_kb = 0;
      if (FILE* f = std::fopen("/proc/self/status", "r")) {
        char line[256];
        while (std::fgets(line, sizeof line, f) != nullptr) {
          if (std::sscanf(line, "VmSize: %zu", &vm_kb) == 1) break;
        }
        std::fclose(f);
      }
      if (vm_kb == 0) _exit(2);
      const hugemm::soak::ProcessFootprint before = hugemm::soak::ProcessFootprint::Now();
      rlimit saved{};
      if (getrlimit(RLIMIT_AS, &saved) != 0) _exit(2);
      rlimit tight = saved;
      tight.rlim_cur = vm_kb * 1024 + headroom;
      if (setrlimit(RLIMIT_AS, &tight) != 0) _exit(2);
      hugemm_runtime* rt = nullptr;
      int rc = 0;
      try {
        rc = hugemm_open(nullptr, &rt);
      } catch (...) {
        _exit(7);  // a C program ends here (std::terminate)
      }
      const std::string message = hugemm_last_error();
      if (setrlimit(RLIMIT_AS, &saved) != 0) _exit(2);
      if (rc == 0) {
        hugemm_close(rt);
        _exit(0);
      }
      if (rc != -ENOMEM || message.empty() || rt != nullptr) {
        std::fprintf(stderr, "headroom %zu: %d (%s): %s\n", headroom, rc, std::strerror(-rc),
                     message.c_str());
        _exit(5);
      }
      const std::string leak = before.Diff(hugemm::soak::ProcessFootprint::Now());
      if (!leak.empty()) {
        std::fprintf(stderr, "headroom %zu: left behind: %s\n", headroom, leak.c_str());
        _exit(6);
      }
      _exit(1);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status))
        << "headroom " << headroom << " bytes: the child died of signal " << WTERMSIG(status);
    ASSERT_LE(WEXITSTATUS(status), 1)
        << "headroom " << headroom
        << " bytes: 2: setup; 5: wrong errno or no message; 6: something left behind; 7: an "
           "exception left hugemm_open";
    (WEXITSTATUS(status) == 0 ? opened : refused)++;
  }
  EXPECT_GT(refused, 0) << "no headroom was small enough to refuse the open";
  EXPECT_GT(opened, 0) << "no headroom was large enough to open";
}

}  // namespace
