// The CLI run by an ordinary user: no CAP_SYS_ADMIN (pagemap shows PFN 0, kpageflags is
// unreadable), no CAP_IPC_LOCK (registered bytes count against RLIMIT_MEMLOCK), and root's
// hugetlbfs mounts not writable. Each command either works or says what is missing.
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/page_size.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using testing::kCannotDropPrivileges;

// The child's exit codes besides the command's own checks.
constexpr int kWrongExit = 10;
constexpr int kMissingWords = 11;
constexpr int kCannotLowerMemlock = 12;

// Runs `hugemm <args>` as uid 65534 (with RLIMIT_MEMLOCK lowered to `memlock` bytes when
// not 0) and checks its exit code and that its output holds each of `words`.
int RunAsNobody(const std::string& args, int want_exit, const std::vector<std::string>& words,
                rlim_t memlock = 0) {
  return testing::RunUnprivileged([&] {
    const rlimit lim{memlock, memlock};
    if (memlock != 0 && ::setrlimit(RLIMIT_MEMLOCK, &lim) != 0) return kCannotLowerMemlock;
    int rc = -1;
    const std::string out =
        testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " " + args + " 2>&1", &rc);
    std::fprintf(stderr, "hugemm %s: exit %d\n%s\n", args.c_str(), rc, out.c_str());
    if (rc != want_exit) return kWrongExit;
    for (const std::string& w : words) {
      if (out.find(w) == std::string::npos) return kMissingWords;
    }
    return 0;
  });
}

constexpr const char* kCodes =
    "10: another exit code, 11: words missing (see above), 12: cannot "
    "lower RLIMIT_MEMLOCK, 99: could not become uid 65534";

#define HUGEMM_NEED_ROOT() HUGEMM_NEED(geteuid() == 0, "needs root to run a child as another user")

// libhugetlbfs passes over a mount the user may not write, as if there were none.
TEST(UnprivilegedCli, HugetlbfsNamesTheMountTheUserMayNotWrite) {
  HUGEMM_NEED_ROOT();
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a hugetlbfs mount with 2M pages");
  const int writable = testing::RunUnprivileged([&] { return ::access(mount.c_str(), W_OK); });
  HUGEMM_NEED(writable != 0, mount << " is writable by every user");
  EXPECT_EQ(RunAsNobody("bench pin -m 2 -r 1 --backing hugetlbfs", 1,
                        {mount, "not writable by this process"}),
            0)
      << kCodes;
}

// Pagemap shows PFN 0 without CAP_SYS_ADMIN: DMA segments are refused, saying why, rather
// than handed out at physical address 0.
TEST(UnprivilegedCli, SegmentsSayWhyNoPhysicalAddressIsKnown) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  EXPECT_EQ(RunAsNobody("bench pin -m 2 -r 1 --output segments", 1,
                        {"PFN", "is unknown", "CAP_SYS_ADMIN"}),
            0)
      << kCodes;
}

// Without CAP_IPC_LOCK the kernel's registration counts against RLIMIT_MEMLOCK.
TEST(UnprivilegedCli, KernelComparisonNamesRlimitMemlock) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  EXPECT_EQ(RunAsNobody("bench pin -m 8 -r 1 --compare kernel", 1,
                        {"RLIMIT_MEMLOCK (4 MiB) is too low", "CAP_IPC_LOCK"}, 4 << 20),
            0)
      << kCodes;
}

// The soak takes the refusals hidden PFNs bring (DMA segments, registering external
// memory) and a low RLIMIT_MEMLOCK brings (kernel pins) as documented, not as broken
// promises.
TEST(UnprivilegedCli, StressCountsWhatHiddenPfnsRefuseAsDocumented) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 64);
  EXPECT_EQ(RunAsNobody("stress --seconds 0.5 --threads 2", 0,
                        {"refused as documented: register external: PERMISSION_DENIED", "all held"},
                        8 << 20),
            0)
      << kCodes;
}

// A user who may start no more processes (RLIMIT_NPROC, which root is not held to) gets
// no thread for the soak: the run fails with a message and, with --json, the error object
// on stdout (the program ended on an uncaught std::system_error instead).
TEST(UnprivilegedCli, StressWithoutThreadsFailsSaying) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int rc = testing::RunUnprivileged([] {
    int exit_code = -1;
    const std::string out =
        testing::RunCommand(std::string("prlimit --nproc=1 ") + HUGEMM_CLI_PATH +
                                " stress --seconds 0.01 --threads 2 --json 2>/dev/null",
                            &exit_code);
    std::fprintf(stderr, "hugemm stress: exit %d\n%s\n", exit_code, out.c_str());
    if (exit_code != 1) return kWrongExit;
    const nlohmann::json j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) return kMissingWords;
    const nlohmann::json& e = j["error"];
    if (j.value("ok", true) || e.value("errno", 0) != EAGAIN ||
        e.value("message", "").find("stress: start a thread") == std::string::npos) {
      return kMissingWords;
    }
    return 0;
  });
  EXPECT_EQ(rc, 0) << kCodes << " (11 here: no error object naming EAGAIN)";
}

// `hugemm info` tells an ordinary user what it cannot do: read PFNs or kpageflags, or
// create files in root's hugetlbfs mounts.
TEST(UnprivilegedCli, InfoSaysWhatThisUserCannotDo) {
  HUGEMM_NEED_ROOT();
  std::vector<std::string> words = {"PFNs readable   no (needs CAP_SYS_ADMIN)",
                                    "kpageflags      not readable (root only)"};
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  if (!mount.empty() &&
      testing::RunUnprivileged([&] { return ::access(mount.c_str(), W_OK); }) != 0) {
    words.push_back(mount + "  (not writable by this user)");
  }
  EXPECT_EQ(RunAsNobody("info", 0, words), 0) << kCodes;
}

// `hugemm verify` cannot hold frames against the kernel without PFNs: it fails, saying
// why once (not once per page size).
TEST(UnprivilegedCli, VerifySaysOnceThatPagemapHidesPfns) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int rc = testing::RunUnprivileged([] {
    int exit_code = -1;
    const std::string out =
        testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " verify 2>&1", &exit_code);
    std::fprintf(stderr, "hugemm verify: exit %d\n%s\n", exit_code, out.c_str());
    const std::string why = "pagemap hides PFNs (needs CAP_SYS_ADMIN)";
    const size_t first = out.find(why);
    if (exit_code != 1) return kWrongExit;
    if (first == std::string::npos || out.find(why, first + 1) != std::string::npos) {
      return kMissingWords;
    }
    return 0;
  });
  EXPECT_EQ(rc, 0) << kCodes << " (11 here: not said exactly once)";
}

// demo maps the pages but cannot hold them against the kernel's frames: that is no
// success (exit 1, as verify's), and it says why.
TEST(UnprivilegedCli, DemoThatCannotReadPfnsFails) {
  HUGEMM_NEED_ROOT();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int rc = testing::RunUnprivileged([] {
    int exit_code = -1;
    const std::string out =
        testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " demo 2>&1", &exit_code);
    std::fprintf(stderr, "hugemm demo: exit %d\n%s\n", exit_code, out.c_str());
    if (exit_code != 1) return kWrongExit;
    if (out.find("need CAP_SYS_ADMIN") == std::string::npos ||
        out.find("mapped but not checked") == std::string::npos) {
      return kMissingWords;
    }
    return 0;
  });
  EXPECT_EQ(rc, 0) << kCodes;
}

}  // namespace
}  // namespace hugemm
