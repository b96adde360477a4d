// `hugemm bench pin`, as a reader of its output checks it: every ratio in the JSON is the
// quotient of the two medians it names, every key it prints is one doc/benchmarks.md
// lists, the text counts the samples its medians are of, and bad flags exit 2 leaving no
// file behind. Small buffers and few repeats: the speed is the benchmark's business.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"
#include "nlohmann/json.hpp"
#include "perf/bench_pin.h"
#include "perf/pin_passes.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

std::string RunCli(const std::string& args, int* exit_code) {
  return testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " " + args, exit_code);
}

Json RunJson(const std::string& args) {
  int rc = 0;
  const std::string out = RunCli("bench pin --json " + args, &rc);
  EXPECT_EQ(rc, 0) << args << ": " << out;
  Json json = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(json.is_object()) << args << ": " << out;
  return json;
}

double Median(const Json& j, const char* key) { return j.at(key).at("median").get<double>(); }
double Min(const Json& j, const char* key) { return j.at(key).at("min").get<double>(); }

// a / b, as the benchmark computed it (the same doubles, the same division).
void ExpectQuotient(const Json& j, const char* ratio, double a, double b) {
  ASSERT_TRUE(j.contains(ratio)) << ratio;
  EXPECT_DOUBLE_EQ(j[ratio].get<double>(), a / b) << ratio;
}

void ExpectSummary(const Json& j, const char* key) {
  ASSERT_TRUE(j.contains(key)) << key;
  EXPECT_GT(j[key]["min"].get<double>(), 0) << key;
  EXPECT_LE(j[key]["min"].get<double>(), j[key]["median"].get<double>()) << key;
}

TEST(BenchPinCli, PageArrayRatiosAreTheirMediansQuotients) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  const Json j = RunJson("-m 32 -r 3 --output pages --compare kernel,page");
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["size_mib"].get<int>(), 32);
  EXPECT_EQ(j["repeats"].get<int>(), 3);
  for (const char* k : {"pin_us", "unpin_us", "per_page_pin_us", "per_page_unpin_us",
                        "kernel_pin_us", "kernel_unpin_us"}) {
    ExpectSummary(j, k);
  }
  ExpectQuotient(j, "pin_over_floor", Median(j, "pin_us"), j["floor_us"].get<double>());
  ExpectQuotient(j, "per_page_over_per_folio", Median(j, "per_page_pin_us"), Median(j, "pin_us"));
  ExpectQuotient(j, "kernel_pin_over_pin", Median(j, "kernel_pin_us"), Median(j, "pin_us"));
  ExpectQuotient(j, "kernel_unpin_over_unpin", Median(j, "kernel_unpin_us"), Median(j, "unpin_us"));
}

TEST(BenchPinCli, FolioSpanCallFloorRatiosAreTheirQuotients) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  const Json j = RunJson("-m 32 -r 3 -n -1 --output folios");
  ASSERT_TRUE(j.is_object());
  const double floor = j["floor_us"].get<double>(), call_floor = j["call_floor_us"].get<double>();
  ExpectQuotient(j, "pin_over_floor", Median(j, "pin_us"), floor);
  ExpectQuotient(j, "call_floor_over_floor", call_floor, floor);
  ExpectQuotient(j, "pin_over_call_floor", Median(j, "pin_us"), call_floor);
}

TEST(BenchPinCli, ThreadThroughputIsOneThreadsWorkOverTheWallTime) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  for (const char* disjoint : {"", "--disjoint"}) {
    SCOPED_TRACE(disjoint);
    const Json j = RunJson(std::string("-m 32 -r 3 -j 2 --compare kernel ") + disjoint);
    ASSERT_TRUE(j.is_object());
    // Disjoint threads share the range's work; otherwise each does all of it.
    const double work = *disjoint ? 1 : 2;
    ExpectQuotient(j, "threads_over_one_pin", work * Median(j, "one_thread_pin_us"),
                   Median(j, "wall_pin_us"));
    ExpectQuotient(j, "threads_over_one_unpin", work * Median(j, "one_thread_unpin_us"),
                   Median(j, "wall_unpin_us"));
    // The same of the fastest repeats.
    ExpectQuotient(j, "threads_over_one_pin_best", work * Min(j, "one_thread_pin_us"),
                   Min(j, "wall_pin_us"));
    ExpectQuotient(j, "threads_over_one_unpin_best", work * Min(j, "one_thread_unpin_us"),
                   Min(j, "wall_unpin_us"));
    // The whole-range baselines are set against one thread over the whole range.
    ExpectQuotient(j, "pin_over_floor", Median(j, "one_thread_pin_us"),
                   j["floor_us"].get<double>());
    ExpectQuotient(j, "kernel_pin_over_pin", Median(j, "kernel_pin_us"),
                   Median(j, "one_thread_pin_us"));
    ExpectQuotient(j, "kernel_unpin_over_unpin", Median(j, "kernel_unpin_us"),
                   Median(j, "one_thread_unpin_us"));
    EXPECT_GT(j["cpu_scaling"].get<double>(), 0);
    EXPECT_GT(j["write_scaling"].get<double>(), 0);
    EXPECT_GT(j["atomic_scaling"].get<double>(), 0);
  }
}

// Every key the JSON prints is named, in backquotes, in doc/benchmarks.md's list of the
// pin benchmark's keys (the paragraph after "--json` prints one object").
TEST(BenchPinCli, EveryJsonKeyIsDocumented) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  std::ifstream in(std::string(HUGEMM_SOURCE_DIR) + "/doc/benchmarks.md");
  ASSERT_TRUE(in.good());
  std::stringstream whole;
  whole << in.rdbuf();
  const size_t start = whole.str().find("`--json` prints one object with these keys:");
  ASSERT_NE(start, std::string::npos);
  const std::string keys = whole.str().substr(start, whole.str().find("\n\n", start) - start);
  for (const char* args : {"-m 32 -r 1 --output folios --compare kernel,page",
                           "-m 32 -r 1 -j 2 --disjoint --output segments"}) {
    const Json j = RunJson(args);
    ASSERT_TRUE(j.is_object());
    for (const auto& [key, value] : j.items()) {
      EXPECT_THAT(keys, HasSubstr("`" + key + "`")) << args;
    }
  }
}

// The text's median is of one sample per thread per repeat, and it says how many.
TEST(BenchPinCli, TextCountsTheSamplesOfItsMedians) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 16);
  int rc = 0;
  const std::string out = RunCli("bench pin -m 32 -r 3 -j 2", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("median of 6 (3 repeats x 2 threads):"));
  size_t lines = 0;
  for (size_t at = out.find("PIN_FAST_BENCHMARK: Time: get:"); at != std::string::npos;
       at = out.find("PIN_FAST_BENCHMARK: Time: get:", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 6u);
}

// Progress into a log (stderr not a terminal) is at most a line per tenth of the run,
// never a carriage return per repeat. (The run tells progress once it has run a second.)
TEST(BenchPinCli, ProgressIntoALogIsALinePerTenth) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 32);
  int rc = 0;
  const std::string err = RunCli("bench pin -m 64 -r 40000 2>&1 >/dev/null", &rc);
  ASSERT_EQ(rc, 0) << err;
  EXPECT_EQ(err.find('\r'), std::string::npos) << err.substr(0, 200);
  size_t lines = 0;
  for (size_t at = err.find("hugemm bench pin: repeat "); at != std::string::npos;
       at = err.find("hugemm bench pin: repeat ", at + 1)) {
    ++lines;
  }
  EXPECT_LE(lines, 11u) << err.substr(0, 200);
  if (lines > 0) {
    EXPECT_THAT(err, HasSubstr("repeat 40000/40000\n"));
  }
}

// With fewer free huge pages than -m needs, the run is the size the free pages hold
// (doc/benchmarks.md): -m is counted in whole pages, a part of a page taking one, so that
// -m 4500 of 1G pages with 4 free runs 4096 MiB rather than failing to map 5 GiB.
TEST(BenchPinCli, ASizeTheFreePagesDoNotHoldIsCutToTheirs) {
  EXPECT_EQ(perf::PinSizeThatFits(4500, kPageSize1G, 4), 4096u);
  EXPECT_EQ(perf::PinSizeThatFits(6145, kPageSize2M, 3072), 6144u);
  EXPECT_EQ(perf::PinSizeThatFits(1, kPageSize1G, 1), 1u);  // one page, partly pinned
  EXPECT_EQ(perf::PinSizeThatFits(4096, kPageSize1G, 4), 4096u);
  EXPECT_EQ(perf::PinSizeThatFits(6144, kPageSize2M, 3072), 6144u);
  EXPECT_EQ(perf::PinSizeThatFits(16384, kPageSize2M, 100), 200u);
  EXPECT_EQ(perf::PinSizeThatFits(2048, kPageSize1G, 0), 2048u);  // none free: the map says
}

// The JSON records the command line, which is bytes: a file name that is not UTF-8 is
// printed with U+FFFD for its bad bytes, and the output still parses (it ended the
// program with nlohmann's type_error instead).
TEST(BenchPinCli, JsonOfACommandLineThatIsNotUtf8Parses) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  if (mount.empty()) GTEST_SKIP() << "no 2M hugetlbfs mount";
  const std::string file = mount + "/bench-pin-cli-\xff-test";
  int rc = 0;
  const std::string out = RunCli("bench pin --json -m 2 -r 1 -f '" + file + "'", &rc);
  EXPECT_EQ(rc, 0) << out;
  const Json json = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << out;
  EXPECT_THAT(json["command"].get<std::string>(), HasSubstr("bench-pin-cli-\xEF\xBF\xBD-test"));
  struct stat st;
  EXPECT_NE(::stat(file.c_str(), &st), 0) << file << " was left behind";
  ::unlink(file.c_str());
}

// A usage error exits 2 with one line naming the flag, before anything is mapped or
// created.
TEST(BenchPinCli, BadFlagsExitTwoAndLeaveNoFile) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  const std::string file = (mount.empty() ? std::string("/tmp") : mount) + "/bench-pin-cli-test";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"-m 0", "-m"},
      {"-n 0", "-n"},
      {"-j 0", "-j"},
      {"-r 0", "-r"},
      {"--page-size 3M", "--page-size"},
      {"--page-size 4K", "--page-size 4K"},  // hugetlb, the default backing, has no 4K pages
      {"--output bogus", "--output"},
      {"-f /nonexistent/file", "-f"},
      {"--backing devdax", "--backing devdax"},
      {"--backing anon -f " + file, "--backing anon"},
      {"--backing devdax -f " + file, "--backing devdax"},
  };
  for (const auto& [args, names] : cases) {
    SCOPED_TRACE(args);
    int rc = 0;
    const std::string err = RunCli("bench pin -m 2 -r 1 " + args + " 2>&1 >/dev/null", &rc);
    EXPECT_EQ(rc, 2) << err;
    EXPECT_THAT(err, HasSubstr(names));
    EXPECT_THAT(err, ::testing::StartsWith("hugemm bench pin: "));
    // Every usage error, CLI11's or the benchmark's own, says where to look.
    EXPECT_THAT(err, HasSubstr("Run 'hugemm bench pin --help' for its flags."));
    struct stat st;
    EXPECT_NE(::stat(file.c_str(), &st), 0) << file << " was left behind";
  }
}

// A file in a directory below a hugetlbfs mount is refused as such, not as a file outside
// every mount, and nothing is created there.
TEST(BenchPinCli, AFileBelowAMountsTopDirectoryIsRefusedSaying) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "no hugetlbfs mount of 2M pages");
  const std::string dir = mount + "/bench-pin-cli-test-dir";
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0) << dir << ": " << std::strerror(errno);
  int rc = 0;
  const std::string err = RunCli("bench pin -m 2 -r 1 -f " + dir + "/f 2>&1 >/dev/null", &rc);
  struct stat st;
  const bool left = ::stat((dir + "/f").c_str(), &st) == 0;
  ::unlink((dir + "/f").c_str());
  ::rmdir(dir.c_str());
  EXPECT_EQ(rc, 2) << err;
  EXPECT_THAT(err, HasSubstr("directly in the hugetlbfs mount " + mount)) << err;
  EXPECT_FALSE(left) << "the run created a file below the mount";
}

// --disjoint gives each thread whole folios of its own: with fewer folios than threads
// the command line is refused, rather than a thread that pinned nothing timing zero.
TEST(BenchPinCli, DisjointThreadsNeedAFolioEach) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  int rc = 0;
  std::string err = RunCli("bench pin -r 1 -m 2 -j 2 --disjoint 2>&1 >/dev/null", &rc);
  EXPECT_EQ(rc, 2) << err;
  EXPECT_THAT(err, HasSubstr("fewer than the threads")) << err;
  EXPECT_THAT(err, HasSubstr("-m 4 at least")) << err;
  err = RunCli("bench pin -r 1 -m 4 -j 2 --disjoint 2>&1 >/dev/null", &rc);
  EXPECT_EQ(rc, 0) << err;
}

// A hugetlbfs mount whose size= holds less than -m: the run could not be done, exit 1,
// and with --json the error object on stdout says why (it printed nothing there); the
// file the run created is gone.
TEST(BenchPinCli, AMountTooSmallPrintsTheErrorObject) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  const int code = testing::RunWithSmallHugetlbfs(2 * kPageSize2M, [](const std::string& mount) {
    const std::string args = "bench pin --json -m 8 -r 1 -f " + mount + "/bench-pin-cli-test";
    int rc = 0;
    const std::string out = RunCli(args + " 2>/dev/null", &rc);
    std::fprintf(stderr, "hugemm %s: exit %d\n%s\n", args.c_str(), rc, out.c_str());
    if (rc != 1) return 2;
    const Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object()) return 3;
    if (j.value("command", "") != "hugemm " + args || j.value("ok", true) ||
        j["error"].value("code", "") != "RESOURCE_EXHAUSTED" ||
        j["error"].value("message", "").find("holds at most 4 MiB") == std::string::npos) {
      return 4;
    }
    return std::filesystem::is_empty(mount) ? 0 : 5;
  });
  HUGEMM_NEED(code != testing::kCannotMount, "needs to mount a hugetlbfs (root)");
  EXPECT_EQ(code, 0) << "2: another exit code; 3: no error object on stdout; 4: the object "
                        "does not say what failed; 5: a file was left";
}

// A thread the system refuses to start (here RLIMIT_NPROC, which an ordinary user is held
// to) fails the run with its errno, and with --json prints the error object; the
// program ended on an uncaught std::system_error instead. The scaling controls run on
// their own threads: they fail so too.
TEST(BenchPinCli, ThreadsTheSystemRefusesFailTheRun) {
  HUGEMM_NEED(geteuid() == 0, "needs root to run a child as another user");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const int rc = testing::RunUnprivileged([] {
    int exit_code = -1;
    const std::string out =
        testing::RunCommand(std::string("prlimit --nproc=1 ") + HUGEMM_CLI_PATH +
                                " bench pin --json -m 2 -r 1 -j 2 2>/dev/null",
                            &exit_code);
    std::fprintf(stderr, "hugemm bench pin -j 2: exit %d\n%s\n", exit_code, out.c_str());
    if (exit_code != 1) return 10;
    const Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object() ||
        j["error"].value("errno", 0) != EAGAIN) {
      return 11;
    }
    const rlimit one{1, 1};
    if (::setrlimit(RLIMIT_NPROC, &one) != 0) return 12;
    if (ErrnoOf(perf::pin_internal::CpuScaling(2).status()) != EAGAIN) return 13;
    if (ErrnoOf(perf::pin_internal::WriteScaling(2, 1024).status()) != EAGAIN) return 14;
    if (ErrnoOf(perf::pin_internal::AtomicScaling(2, {}).status()) != EAGAIN) return 15;
    return 0;
  });
  EXPECT_EQ(rc, 0) << "10: another exit code, 11: no error object naming EAGAIN, 12: cannot "
                      "lower RLIMIT_NPROC, 13: CpuScaling, 14: WriteScaling, 15: AtomicScaling, "
                      "99: could not become uid 65534";
}

// A signal that ends the run (Ctrl-C, kill, a closed terminal) removes the hugetlbfs file
// it created, whose huge pages would otherwise stay out of the pool, and the process
// still dies of that signal.
TEST(BenchPinCli, ASignalMidRunRemovesTheFileItCreated) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 32);
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  if (mount.empty()) GTEST_SKIP() << "no 2M hugetlbfs mount";
  const std::string file = mount + "/bench-pin-cli-signal-test";
  for (const auto& [sig, status] : {std::pair{"INT", 130}, {"TERM", 143}, {"HUP", 129}}) {
    SCOPED_TRACE(sig);
    // Started in the background, where a shell ignores SIGINT unless told otherwise; the
    // run outlasts the test by far unless the signal ends it.
    const std::string script = absl::StrFormat(
        "env --default-signal=INT %s bench pin -m 32 -r 1000000 -f %s >/dev/null 2>&1 & "
        "pid=$!; for i in $(seq 200); do [ -e %s ] && break; sleep 0.05; done; "
        "sleep 0.2; kill -%s $pid; wait $pid; echo $?",
        HUGEMM_CLI_PATH, file, file, sig);
    int rc = 0;
    const std::string out = testing::RunCommand(script, &rc);
    EXPECT_EQ(out, absl::StrCat(status, "\n"));
    struct stat st;
    EXPECT_NE(::stat(file.c_str(), &st), 0) << file << " was left behind";
    ::unlink(file.c_str());
  }
}

}  // namespace
}  // namespace hugemm
