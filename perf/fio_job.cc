#include "perf/fio_job.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "runtime/util/format.h"

namespace hugemm::perf::io_internal {
namespace {

struct Output {
  int status = -1;  // the exit status, or -1 when it did not start
  std::string out;
  std::string err;
};

// Runs argv[0] (found in PATH) and collects its output.
Output Spawn(const std::vector<std::string>& args) {
  Output r;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return r;
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return r;
  }
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  // vfork, as posix_spawn does inside (no copy of the benchmark's page tables and pinned
  // buffers), to set what posix_spawn cannot: fio dies with the benchmark. A signal that
  // ends the benchmark (kill, a closed terminal) would otherwise leave fio running its
  // seconds on a target the benchmark removed. The child only makes system calls.
  const pid_t pid = ::vfork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);  // the benchmark is already gone
    const int null = ::open("/dev/null", O_RDONLY);
    if (null < 0 || ::dup2(null, 0) < 0 || ::dup2(out[1], 1) < 0 || ::dup2(err[1], 2) < 0) {
      ::_exit(126);
    }
    if (null != 0) ::close(null);
    ::execvp(argv[0], argv.data());
    ::_exit(errno == ENOENT ? 127 : 126);  // as a shell says it: not found, cannot run
  }
  const int rc = pid < 0 ? errno : 0;
  ::close(out[1]);
  ::close(err[1]);
  // fio writes its JSON at the end and little to stderr: read one, then the other.
  char buf[65536];
  for (int fd : {out[0], err[0]}) {
    std::string& into = fd == out[0] ? r.out : r.err;
    for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      into.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
  }
  if (rc != 0) return r;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

}  // namespace

std::vector<std::string> FioCommand(const FioJob& job, const std::string& huge_file) {
  const bool read = job.pattern == IoPattern::kRandRead;
  const double ramp = job.seconds / 10;
  return {job.fio,
          "--name=hugemm",
          "--filename=" + job.target,
          absl::StrCat("--size=", job.size),
          absl::StrCat("--rw=", read ? "randread" : "randwrite"),
          absl::StrCat("--bs=", job.block_size),
          absl::StrCat("--iodepth=", job.depth),
          "--numjobs=1",
          "--ioengine=io_uring",
          "--direct=1",
          "--fixedbufs",
          "--iomem=mmaphuge:" + huge_file,
          Format("--ramp_time=%dms", static_cast<int>(ramp * 1000)),
          Format("--runtime=%dms", static_cast<int>(job.seconds * 1000)),
          "--time_based",
          "--norandommap",
          "--randrepeat=0",
          "--lat_percentiles=1",
          "--output-format=json"};
}

absl::StatusOr<IoRun> ParseFioJson(const std::string& json, const FioJob& job) {
  // fio may print notes before its JSON.
  const size_t brace = json.find('{');
  nlohmann::json doc =
      nlohmann::json::parse(brace == std::string::npos ? json : json.substr(brace), nullptr,
                            /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("jobs") || doc["jobs"].empty()) {
    return absl::InvalidArgumentError("fio's output is not fio 3's JSON: no jobs");
  }
  const nlohmann::json& j = doc["jobs"][0];
  const nlohmann::json& d = j[job.pattern == IoPattern::kRandRead ? "read" : "write"];
  if (!d.contains("iops") || !d.contains("total_ios") || !j.contains("job_runtime")) {
    return absl::InvalidArgumentError("fio's JSON has no iops, total_ios or job_runtime");
  }
  IoRun run;
  run.candidate = IoCandidate::kFio;
  run.pattern = job.pattern;
  run.block_size = job.block_size;
  run.depth = job.depth;
  run.ran = true;
  run.ios = d["total_ios"].get<uint64_t>();
  run.seconds = j["job_runtime"].get<double>() / 1e3;
  run.iops = d["iops"].get<double>();
  const nlohmann::json& pct = d["lat_ns"].value("percentile", nlohmann::json::object());
  run.p50_us = pct.value("50.000000", 0.0) / 1e3;
  run.p99_us = pct.value("99.000000", 0.0) / 1e3;
  // fio gives CPU as a percentage of the job's run time.
  const double cpu = (j.value("usr_cpu", 0.0) + j.value("sys_cpu", 0.0)) / 100.0;
  run.cpu_us_per_io = run.ios > 0 ? cpu * run.seconds * 1e6 / static_cast<double>(run.ios) : 0;
  return run;
}

std::string FioVersion(const std::string& fio) {
  Output o = Spawn({fio, "--version"});
  if (o.status != 0) return "";
  return std::string(absl::StripAsciiWhitespace(o.out));
}

absl::StatusOr<IoRun> RunFio(const FioJob& job) {
  IoRun run;
  run.candidate = IoCandidate::kFio;
  run.pattern = job.pattern;
  run.block_size = job.block_size;
  run.depth = job.depth;
  if (job.hugetlbfs_mount.empty()) {
    run.skipped = "no 2M hugetlbfs mount for fio's iomem=mmaphuge";
    return run;
  }
  const std::string huge_file =
      absl::StrCat(job.hugetlbfs_mount, "/hugemm-bench-io-fio.", ::getpid());
  Output o = Spawn(FioCommand(job, huge_file));
  ::unlink(huge_file.c_str());  // fio's, should it leave it
  if (o.status < 0 || o.status == 126) {
    run.skipped = absl::StrCat(job.fio, " cannot be run (not installed?)");
    return run;
  }
  if (o.status == 127) {
    run.skipped = absl::StrCat(job.fio, " not found");
    return run;
  }
  if (o.status != 0) {
    // Named as given (--fio), with what it said, if anything.
    const absl::string_view said = absl::StripAsciiWhitespace(o.err);
    return absl::InternalError(
        absl::StrCat(job.fio, " exited with ", o.status, said.empty() ? "" : ": ", said));
  }
  return ParseFioJson(o.out, job);
}

}  // namespace hugemm::perf::io_internal
