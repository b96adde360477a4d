#include "tests/test_util.h"

#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "runtime/sys/files.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::testing {

int64_t FreeHugePages(size_t page_size) {
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(Os::Default(), page_size);
  return pool.ok() ? pool->free - pool->resv : 0;
}

bool WaitForFreeHugePages(size_t page_size, int64_t count) {
  // Only pages the pool holds can come back: without them there is nothing to wait for.
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(Os::Default(), page_size);
  if (!pool.ok() || pool->nr + pool->overcommit < count) return false;
  for (int i = 0; i < 100; ++i) {
    if (FreeHugePages(page_size) >= count) return true;
    usleep(50 * 1000);
  }
  return FreeHugePages(page_size) >= count;
}

bool KernelHasHugePageSize(size_t page_size) {
  return sys::ReadHugePagePool(Os::Default(), page_size).ok();
}

std::string RunCommand(const std::string& command, int* exit_code) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    *exit_code = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

int RunUnprivileged(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    // Groups and gid first: once the uid is not 0 the process may change neither.
    constexpr uid_t kNobody = 65534;
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0) {
      ::_exit(kCannotDropPrivileges);
    }
    // Leaving uid 0 clears them already; say so to the kernel, and check.
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (::syscall(SYS_capset, &header, data) != 0 || ::geteuid() != kNobody) {
      ::_exit(kCannotDropPrivileges);
    }
    ::_exit(body());
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

int RunWithSmallHugetlbfs(size_t size, const std::function<int(const std::string& mount)>& body,
                          size_t page_size) {
  const TempDir dir;  // empty in this process: the mount is the child's
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const std::string options =
        "pagesize=" + std::to_string(page_size >> 20) + "M,size=" + std::to_string(size);
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("none", dir.path().c_str(), "hugetlbfs", 0, options.c_str()) != 0) {
      ::_exit(kCannotMount);
    }
    ::_exit(body(dir.path()));
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

ThreadTicker::ThreadTicker(long period_ns, bool restart, void (*handler)(int)) {
  struct sigaction act = {};
  act.sa_handler = handler;
  act.sa_flags = restart ? SA_RESTART : 0;
  sigemptyset(&act.sa_mask);
  EXPECT_EQ(::sigaction(SIGALRM, &act, &old_), 0);
  sigevent ev = {};
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = SIGALRM;
  ev._sigev_un._tid = ::gettid();  // sigev_notify_thread_id
  EXPECT_EQ(::timer_create(CLOCK_MONOTONIC, &ev, &timer_), 0);
  itimerspec spec = {};
  spec.it_interval.tv_sec = period_ns / 1'000'000'000;
  spec.it_interval.tv_nsec = period_ns % 1'000'000'000;
  spec.it_value = spec.it_interval;
  EXPECT_EQ(::timer_settime(timer_, 0, &spec, nullptr), 0);
}

ThreadTicker::~ThreadTicker() {
  ::timer_delete(timer_);
  ::sigaction(SIGALRM, &old_, nullptr);
}

MemoryPolicy ThreadPolicyNow() {
  MemoryPolicy policy;
  if (syscall(SYS_get_mempolicy, &policy.mode, policy.nodes.data(), MemoryPolicy::kMaxNodes + 1,
              nullptr, 0) != 0) {
    policy.mode = -1;
  }
  return policy;
}

bool SetThreadPolicy(const MemoryPolicy& policy) {
  return syscall(SYS_set_mempolicy, policy.mode, policy.nodes.data(),
                 MemoryPolicy::kMaxNodes + 1) == 0;
}

std::string DescribePolicy(const MemoryPolicy& policy) {
  std::string nodes;
  for (int n = 0; n < MemoryPolicy::kMaxNodes; ++n) {
    if (policy.HasNode(n)) {
      if (!nodes.empty()) nodes += ',';
      nodes += std::to_string(n);
    }
  }
  char mode[16];
  std::snprintf(mode, sizeof mode, "%#x", static_cast<unsigned>(policy.mode));
  return std::string("mode ") + mode + " nodes " + (nodes.empty() ? "none" : nodes);
}

MemoryPolicy PolicyOf(int mode, std::initializer_list<int> nodes) {
  MemoryPolicy policy;
  policy.mode = mode;
  for (int n : nodes) policy.AddNode(n);
  return policy;
}

int64_t VmPinKb() {
  absl::StatusOr<uint64_t> bytes = sys::ReadKibField(Os::Default(), "/proc/self/status", "VmPin");
  return bytes.ok() ? static_cast<int64_t>(*bytes >> 10) : -1;
}

int64_t SettledVmPinKb() {
  int64_t last = VmPinKb();
  for (int same = 0, i = 0; same < 3 && i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int64_t now = VmPinKb();
    same = now == last ? same + 1 : 0;
    last = now;
  }
  return last;
}

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::string HugetlbfsMountFor(size_t page_size) {
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(Os::Default());
  if (!mounts.ok()) return "";
  for (const HugetlbfsMount& m : *mounts) {
    if (m.page_size == page_size && ::access(m.path.c_str(), W_OK) == 0) return m.path;
  }
  return "";
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "hugemm-test-XXXXXX").string();
  char* made = ::mkdtemp(tmpl.data());
  if (made == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void TempDir::WriteFile(const std::string& relative, const std::string& contents) const {
  std::filesystem::path p = std::filesystem::path(path_) / relative;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << contents;
}

}  // namespace hugemm::testing
