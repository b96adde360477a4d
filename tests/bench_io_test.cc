// `hugemm bench io`: briefly, on a small file under the build tree (disk-backed, never
// tmpfs), every candidate runs and reports numbers that can be true, the JSON has the keys
// doc/benchmarks.md names, the file is removed, and bad configs are refused by name. The
// speed itself is the benchmark's business, not this test's.
#include "perf/bench_io.h"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "perf/fio_job.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using Json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

// Runs the CLI and returns its stdout (add "2>&1" to `args` for stderr too).
std::string RunCli(const std::string& args, int* exit_code) {
  return testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " " + args, exit_code);
}

// Files the bench left in `dir`: it must leave none.
int Leftovers(const std::string& dir) {
  int n = 0;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) n += std::string(e->d_name).rfind("hugemm-bench-io.", 0) == 0;
  closedir(d);
  return n;
}

// A directory of the test's own under BENCH_IO_DIR (on disk, in the build tree), removed
// with what is in it: tests run in parallel must not count each other's files.
class ScratchDir {
 public:
  ScratchDir() {
    const ::testing::TestInfo* t = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::string(BENCH_IO_DIR) + "/" + t->test_suite_name() + "." + t->name() + "." +
            std::to_string(::getpid());
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool FioInstalled() { return !perf::io_internal::FioVersion("fio").empty(); }

TEST(BenchIo, EveryCandidateRunsOnASmallFileAndTheFileGoes) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  int rc = 0;
  const std::string out =
      RunCli("bench io --json --size 8M --seconds 0.2 --qd 1,8 --bs 4K,128K --dir " + dir, &rc);
  if (out.find("huge pages") != std::string::npos && rc != 0) {
    GTEST_SKIP() << "no free huge pages: " << out;
  }
  ASSERT_EQ(rc, 0) << out;
  const Json json = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << out;
  EXPECT_TRUE(json["created"].get<bool>());
  EXPECT_EQ(json["size"].get<uint64_t>(), uint64_t{8} << 20);
  EXPECT_THAT(json["fixed_mode"].get<std::string>(), ::testing::AnyOf("clone", "iovec"));
  ASSERT_EQ(json["jobs"].size(), 8u);  // 2 patterns x 2 sizes x 2 depths
  for (const Json& job : json["jobs"]) {
    SCOPED_TRACE(job.dump());
    for (const char* name : {"plain", "fixed", "fixed+pins", "fio"}) {
      ASSERT_TRUE(job["candidates"].contains(name)) << name;
      const Json& c = job["candidates"][name];
      if (std::string(name) == "fio" && !FioInstalled()) {
        EXPECT_TRUE(c.contains("skipped"));
        continue;
      }
      ASSERT_FALSE(c.contains("skipped")) << name << ": " << c.dump();
      EXPECT_GT(c["ios"].get<uint64_t>(), 0u) << name;
      EXPECT_GT(c["iops"].get<double>(), 0) << name;
      EXPECT_GT(c["p50_us"].get<double>(), 0) << name;
      EXPECT_GE(c["p99_us"].get<double>(), c["p50_us"].get<double>()) << name;
      EXPECT_GT(c["cpu_us_per_io"].get<double>(), 0) << name;
    }
    for (const char* ratio :
         {"fixed_cpu_over_plain", "pins_cpu_over_fixed", "pins_iops_over_fixed"}) {
      EXPECT_TRUE(job["ratios"].contains(ratio)) << ratio;
    }
    if (FioInstalled()) {
      EXPECT_TRUE(job["ratios"].contains("pins_iops_over_fio"));
    }
  }
  EXPECT_EQ(Leftovers(dir), 0);
}

// Every key the JSON prints, at every level, is named in backquotes in doc/benchmarks.md's
// storage section.
// SIGTERM in the middle of a run removes the file it created in --dir.
TEST(BenchIo, ASignalMidRunRemovesTheFileItCreated) {
  const ScratchDir scratch;
  const std::string& dir = scratch.path();
  // SIGPIPE too: a reader of the output that goes away (`| jq` failing on a progress line)
  // ends the run that way; SIGQUIT (Ctrl-\) ends it with a core dump where core dumps are on.
  for (const auto& [sig, status] : {std::pair{"TERM", "143\n"}, std::pair{"PIPE", "141\n"},
                                    std::pair{"QUIT", "131\n"}, std::pair{"USR1", "138\n"}}) {
    const std::string script = "ulimit -c 0; env --default-signal=INT,QUIT " +
                               std::string(HUGEMM_CLI_PATH) +
                               " bench io --size 8M --seconds 100 --candidates plain --dir " + dir +
                               " >/dev/null 2>&1 & pid=$!; "
                               "for i in $(seq 200); do ls " +
                               dir +
                               " | grep -q '^hugemm-bench-io' && break; "
                               "sleep 0.05; done; sleep 0.5; kill -" +
                               sig + " $pid; wait $pid; echo $?";
    int rc = 0;
    EXPECT_EQ(testing::RunCommand(script, &rc), status) << sig;
    EXPECT_EQ(Leftovers(dir), 0) << sig;
    testing::RunCommand("rm -f " + dir + "/hugemm-bench-io.*", &rc);  // what a failure left
  }
}

// fio, run by the benchmark, ends with it: a SIGTERM to the benchmark alone (not to its
// process group, as kill or a supervisor sends it) must not leave fio running its seconds
// on the file the benchmark removed, nor its hugetlbfs file holding huge pages.
TEST(BenchIo, FioEndsWhenASignalEndsTheRun) {
  if (!FioInstalled()) GTEST_SKIP() << "fio is not installed";
  const ScratchDir scratch;
  const std::string script =
      "env --default-signal=INT " + std::string(HUGEMM_CLI_PATH) +
      " bench io --size 8M --seconds 100 --candidates fio --rw randread --bs 4K --qd 1 --dir " +
      scratch.path() +
      " >/dev/null 2>&1 & pid=$!; "
      "for i in $(seq 400); do fio=$(pgrep -P $pid -f -- --name=hugemm) && break; sleep 0.05; "
      "done; "
      "if [ -z \"$fio\" ]; then kill $pid; wait $pid; echo no fio; exit; fi; "
      "kill -TERM $pid; wait $pid; "
      "for i in $(seq 600); do "
      "  [ -e /proc/$fio ] && ! grep -q ') Z' /proc/$fio/stat || { echo gone; exit; }; "
      "  sleep 0.05; "
      "done; kill -TERM $fio; echo running";
  int rc = 0;
  const std::string out = testing::RunCommand(script, &rc);
  if (out == "no fio\n") GTEST_SKIP() << "fio did not start (no hugetlbfs mount or huge pages)";
  EXPECT_EQ(out, "gone\n");
  EXPECT_EQ(Leftovers(scratch.path()), 0);
}

// A --fio that fails is named, with what it said: nothing here, so no dangling colon.
TEST(BenchIo, AFailingFioIsNamedWithWhatItSaid) {
  const ScratchDir scratch;
  int rc = 0;
  const std::string err = RunCli(
      "bench io --fio false --candidates fio --rw randread --bs 4K --qd 1 --size 8M "
      "--seconds 0.01 --dir " +
          scratch.path() + " 2>&1",
      &rc);
  if (rc == 0 && err.find("skipped") != std::string::npos) GTEST_SKIP() << err;
  EXPECT_EQ(rc, 1) << err;
  EXPECT_THAT(err, ::testing::EndsWith("fio: false exited with 1\n"));
  EXPECT_EQ(Leftovers(scratch.path()), 0);
}

// A --fio that is there but cannot be executed (here a directory) is skipped as such, not
// as not found.
TEST(BenchIo, AFioThatCannotRunIsSkippedSaying) {
  const ScratchDir scratch;
  int rc = 0;
  const std::string out = RunCli("bench io --fio " + scratch.path() +
                                     " --candidates fio --rw randread --bs 4K --qd 1 --size 8M "
                                     "--seconds 0.01 --dir " +
                                     scratch.path() + " 2>&1",
                                 &rc);
  EXPECT_EQ(rc, 0) << out;
  if (out.find("no 2M hugetlbfs mount") != std::string::npos) GTEST_SKIP() << out;
  EXPECT_THAT(out, HasSubstr("skipped: " + scratch.path() + " cannot be run"));
}

TEST(BenchIo, EveryJsonKeyIsDocumented) {
  std::ifstream in(std::string(HUGEMM_SOURCE_DIR) + "/doc/benchmarks.md");
  ASSERT_TRUE(in.good());
  std::stringstream whole;
  whole << in.rdbuf();
  const size_t start = whole.str().find("### The storage benchmark");
  ASSERT_NE(start, std::string::npos);
  const std::string doc = whole.str().substr(start);
  const ScratchDir scratch;
  int rc = 0;
  const std::string out =
      RunCli(std::string("bench io --json --size 4M --seconds 0.05 --rw randread --bs 4K ") +
                 "--qd 1 --candidates plain,fixed,fixed+pins,fio --fio /nonexistent/fio --dir " +
                 scratch.path(),
             &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(json.is_object()) << out;
  std::function<void(const Json&, const std::string&)> check = [&](const Json& o,
                                                                   const std::string& parent) {
    for (const auto& [key, value] : o.items()) {
      // Array indices are no keys; candidates are named by the --candidates values.
      if (!o.is_array() && parent != "candidates") {
        EXPECT_NE(doc.find("`" + key + "`"), std::string::npos) << key << " under " << parent;
      }
      if (value.is_structured()) check(value, key);
    }
  };
  check(json, "");
  EXPECT_EQ(Leftovers(scratch.path()), 0);
}

TEST(BenchIo, TheTextTableHasARowPerCandidate) {
  const ScratchDir scratch;
  int rc = 0;
  const std::string out =
      RunCli(std::string("bench io --size 4M --seconds 0.05 --rw randread ") +
                 "--bs 4K --qd 4 --candidates plain,fixed+pins --dir " + scratch.path(),
             &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("randread 4K qd4"));
  EXPECT_THAT(out, HasSubstr("plain"));
  EXPECT_THAT(out, HasSubstr("fixed+pins"));
  EXPECT_EQ(Leftovers(scratch.path()), 0);
}

TEST(BenchIo, BadConfigsAreRefusedByName) {
  perf::IoBenchConfig c;
  c.dir = "/dev/shm";
  absl::Status st = perf::CheckIoBenchConfig(c);
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_THAT(st.message(), HasSubstr("tmpfs"));

  const ScratchDir scratch;
  c = {};
  c.dir = scratch.path();
  c.block_sizes = {1000};
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(), HasSubstr("--bs 1000"));
  c.block_sizes = {4096};
  c.depths = {0};
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(), HasSubstr("--qd 0"));
  c.depths = {1};
  c.size = 1024;
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(), HasSubstr("--size 1024"));
  c.size = 1 << 20;
  c.candidates.clear();
  EXPECT_TRUE(absl::IsInvalidArgument(perf::CheckIoBenchConfig(c)));
  // Run twice, reported once (the JSON keys candidates by name): refused.
  c.candidates = {perf::IoCandidate::kPlain, perf::IoCandidate::kFixed, perf::IoCandidate::kPlain};
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(), HasSubstr("--candidates: plain given twice"));
  c.candidates = {perf::IoCandidate::kPlain};
  c = {};
  c.dir = "/nonexistent-hugemm-dir";
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(), HasSubstr("--dir /nonexistent"));
  // A --file that is not there is named so, before any refusal to overwrite it.
  c = {};
  c.file = "/nonexistent-hugemm-file";
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(),
              AllOf(HasSubstr("--file /nonexistent-hugemm-file: No such file"),
                    Not(HasSubstr("overwrite"))));

  // A --file that is a directory or a character device, a --dir that is a file: refused
  // by name (they failed later, exit 1, with open's EINVAL or a tmpfs message for
  // /dev/null).
  c = {};
  c.patterns = {perf::IoPattern::kRandRead};
  for (const std::string& path : {scratch.path(), std::string("/dev/null")}) {
    c.file = path;
    EXPECT_THAT(perf::CheckIoBenchConfig(c).message(),
                HasSubstr("--file " + path + ": neither a regular file nor a block device"));
  }
  c = {};
  c.dir = "/proc/self/status";
  EXPECT_THAT(perf::CheckIoBenchConfig(c).message(),
              HasSubstr("--dir /proc/self/status: not a directory"));

  // Writes to a given file need --write-existing; the file is left as it was.
  int rc = 0;
  const std::string path = scratch.path() + "/bench-io-given";
  {
    FILE* f = fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::string block(1 << 20, 'x');
    fwrite(block.data(), 1, block.size(), f);
    fclose(f);
  }
  const std::string out = RunCli("bench io --seconds 0.05 --file " + path + " 2>&1", &rc);
  EXPECT_EQ(rc, 2) << out;
  EXPECT_THAT(out, HasSubstr("--write-existing"));
  // A file (or the --size of it) smaller than a block has no block to read: refused, not
  // a division by zero.
  const std::string small = RunCli(
      "bench io --seconds 0.05 --rw randread --bs 4K,128K --size 64K --file " + path + " 2>&1",
      &rc);
  EXPECT_EQ(rc, 1) << small;
  EXPECT_THAT(small, HasSubstr("fewer than the largest block, 131072"));
  unlink(path.c_str());

  EXPECT_EQ(RunCli("bench io --bs 3K 2>&1", &rc).find("multiple of 4K") != std::string::npos, true);
  EXPECT_EQ(rc, 2);
  // 4G + 4K: refused as given, not taken modulo 2^32 as a 4K block.
  EXPECT_THAT(RunCli("bench io --bs 4294971392 2>&1", &rc), HasSubstr("--bs 4294971392"));
  EXPECT_EQ(rc, 2);
}

// A run that could not be done (exit 1) with --json still prints one object on stdout:
// the command line, "ok": false, and the error, whose message stderr got too. A usage
// error (exit 2) prints nothing there.
// A system call's failure keeps its errno in the error object (the README's "errno"), and
// a short write, which sets none, says what it is rather than naming a stale errno.
TEST(BenchIo, AWriteTheFileSizeLimitStopsSaysWhy) {
  const ScratchDir scratch;
  struct Case {
    const char* limit_kib;  // `ulimit -f`, in KiB: 4096 ends at a 1M chunk, 4100 inside one
    const char* code;
    int err;  // 0: no errno key
    const char* says;
  };
  for (const Case& c : {Case{"4096", "OUT_OF_RANGE", EFBIG, "File too large"},
                        Case{"4100", "RESOURCE_EXHAUSTED", 0, "of 1048576 bytes at offset"}}) {
    SCOPED_TRACE(c.limit_kib);
    int rc = 0;
    // SIGXFSZ ignored, as a program would: the write past the limit then fails with EFBIG.
    const std::string out = testing::RunCommand(
        absl::StrCat("trap '' XFSZ; ulimit -f ", c.limit_kib, "; ", HUGEMM_CLI_PATH,
                     " bench io --json --seconds 0.05 --rw randread --bs 4K --size 8M --dir ",
                     scratch.path(), " 2>/dev/null"),
        &rc);
    EXPECT_EQ(rc, 1) << out;
    const Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << out;
    EXPECT_EQ(j["error"].value("code", ""), c.code) << out;
    EXPECT_EQ(j["error"].value("errno", 0), c.err) << out;
    EXPECT_THAT(j["error"].value("message", ""), HasSubstr(c.says)) << out;
    EXPECT_EQ(Leftovers(scratch.path()), 0);
  }
}

TEST(BenchIo, AFailedRunPrintsTheErrorObject) {
  const ScratchDir scratch;
  const std::string path = scratch.path() + "/bench-io-small";
  {
    std::ofstream f(path);
    f << std::string(1 << 20, 'x');
  }
  const std::string args =
      "bench io --json --seconds 0.05 --rw randread --bs 4K,128K --size 64K --file " + path;
  const std::string err_path = scratch.path() + "/stderr";
  int rc = 0;
  const std::string out = RunCli(args + " 2>" + err_path, &rc);
  std::ifstream err_in(err_path);
  std::stringstream err;
  err << err_in.rdbuf();
  EXPECT_EQ(rc, 1) << err.str();
  const Json j = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object() && j.contains("error") && j["error"].is_object())
      << "stdout: " << out << "\nstderr: " << err.str();
  EXPECT_EQ(j["command"], "hugemm " + args);
  EXPECT_EQ(j["ok"], false);
  EXPECT_EQ(j["error"].value("code", ""), "INVALID_ARGUMENT") << out;
  EXPECT_FALSE(j["error"].contains("errno")) << out;
  const std::string message = j["error"].value("message", "");
  EXPECT_THAT(message, HasSubstr("fewer than the largest block, 131072"));
  EXPECT_THAT(err.str(), ::testing::EndsWith("hugemm bench io: " + message + "\n"));

  EXPECT_EQ(RunCli("bench io --json --seconds 0.05 --file " + path + " 2>/dev/null", &rc), "");
  EXPECT_EQ(rc, 2);  // random writes to a given file need --write-existing
}

TEST(FioJson, ReadsTheNumbersFio3Writes) {
  perf::io_internal::FioJob job{.pattern = perf::IoPattern::kRandRead};
  const std::string json = R"(note: both iodepth >= 1 and synchronous I/O engine
{"fio version":"fio-3.33","jobs":[{"jobname":"hugemm","job_runtime":2000,
 "usr_cpu":10.0,"sys_cpu":30.0,
 "read":{"iops":50000.0,"total_ios":100000,
  "lat_ns":{"percentile":{"50.000000":20000,"99.000000":90000}}},
 "write":{"iops":0,"total_ios":0}}]})";
  absl::StatusOr<perf::IoRun> run = perf::io_internal::ParseFioJson(json, job);
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_DOUBLE_EQ(run->iops, 50000);
  EXPECT_DOUBLE_EQ(run->p50_us, 20);
  EXPECT_DOUBLE_EQ(run->p99_us, 90);
  EXPECT_DOUBLE_EQ(run->seconds, 2);
  // 40% of 2 s over 100,000 I/Os.
  EXPECT_DOUBLE_EQ(run->cpu_us_per_io, 8);
  EXPECT_FALSE(perf::io_internal::ParseFioJson("fio: failed", job).ok());
  EXPECT_FALSE(perf::io_internal::ParseFioJson(R"({"jobs":[]})", job).ok());
}

}  // namespace
}  // namespace hugemm
