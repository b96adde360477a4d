// The storage benchmark's run: the target prepared, then every job with each candidate
// in turn.
#include "perf/bench_io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"
#include "hugemm/runtime.h"
#include "perf/fio_job.h"
#include "perf/io_loop.h"
#include "runtime/util/format.h"

namespace hugemm::perf {
namespace {

using io_internal::FioJob;
using io_internal::LoopJob;

// The system call's failure, with its errno (the status code follows it: EACCES is
// PermissionDenied, ENOSPC ResourceExhausted, ...), as --json reports it.
absl::Status Errno(const std::string& what) { return ErrnoStatus(errno, what); }

// The target, open for O_DIRECT; a file it made is removed when it goes.
class Target {
 public:
  ~Target() {
    if (fd_ >= 0) ::close(fd_);
    if (created_) ::unlink(path_.c_str());
  }

  absl::Status Open(const IoBenchConfig& c, const IoBenchHooks& hooks) {
    const bool writes = [&] {
      for (IoPattern p : c.patterns) {
        if (p == IoPattern::kRandWrite) return true;
      }
      return false;
    }();
    if (c.file.empty()) {
      path_ = absl::StrCat(c.dir, "/hugemm-bench-io.", ::getpid());
      fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
      if (fd_ < 0) return Errno(absl::StrCat("create ", path_, " with O_DIRECT"));
      created_ = true;
      size_ = c.size;
      if (hooks.note) hooks.note(absl::StrCat("writing ", HumanBytes(size_), " to ", path_));
      return Fill();
    }
    path_ = c.file;
    if (writes && !c.write_existing) {
      return absl::InvalidArgumentError(
          absl::StrCat("--file ", path_,
                       ": random writes would overwrite it; add --write-existing, or "
                       "--rw randread"));
    }
    fd_ = ::open(path_.c_str(), (writes ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
    if (fd_ < 0) return Errno(absl::StrCat("--file ", path_, ": open with O_DIRECT"));
    struct stat st;
    if (::fstat(fd_, &st) != 0) return Errno(absl::StrCat("fstat ", path_));
    uint64_t bytes = static_cast<uint64_t>(st.st_size);
    if (S_ISBLK(st.st_mode) && ::ioctl(fd_, BLKGETSIZE64, &bytes) != 0) {
      return Errno(absl::StrCat("BLKGETSIZE64 of ", path_));
    }
    size_ = c.size == 0 ? bytes : std::min<uint64_t>(c.size, bytes);
    if (size_ == 0) return absl::InvalidArgumentError(absl::StrCat("--file ", path_, " is empty"));
    // Each I/O lands on a whole block inside the first size_ bytes: one must fit.
    const uint32_t largest = *std::max_element(c.block_sizes.begin(), c.block_sizes.end());
    if (size_ < largest) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--file ", path_, ": ", size_, " bytes", c.size != 0 && c.size < bytes ? " (--size)" : "",
          " are fewer than the largest block, ", largest));
    }
    return absl::OkStatus();
  }

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool created() const { return created_; }

 private:
  // Real data under every block: a fresh file's unwritten extents read as zeroes with no
  // I/O at all.
  absl::Status Fill() {
    constexpr size_t kChunk = 1 << 20;
    void* p = nullptr;
    if (::posix_memalign(&p, 4096, kChunk) != 0) return absl::ResourceExhaustedError("buffer");
    std::unique_ptr<void, decltype(&std::free)> chunk(p, &std::free);
    auto* words = static_cast<uint64_t*>(p);
    for (uint64_t off = 0; off < size_; off += kChunk) {
      for (size_t i = 0; i < kChunk / 8; ++i) words[i] = (off + i * 8) * 0x9E3779B97F4A7C15ull;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, size_ - off));
      const ssize_t wrote = ::pwrite(fd_, p, n, static_cast<off_t>(off));
      if (wrote < 0) return Errno(absl::StrCat("write ", path_));
      if (static_cast<size_t>(wrote) != n) {
        // A short write sets no errno: the file system is full, or RLIMIT_FSIZE reached.
        return absl::ResourceExhaustedError(
            Format("write %s: %d of %d bytes at offset %d written (the file system full, or the "
                   "file size limit reached)",
                   path_, wrote, n, off));
      }
    }
    if (::fsync(fd_) != 0) return Errno(absl::StrCat("fsync ", path_));
    return absl::OkStatus();
  }

  std::string path_;
  int fd_ = -1;
  bool created_ = false;
  uint64_t size_ = 0;
};

}  // namespace

const char* IoCandidateName(IoCandidate c) {
  switch (c) {
    case IoCandidate::kPlain:
      return "plain";
    case IoCandidate::kFixed:
      return "fixed";
    case IoCandidate::kFixedPinned:
      return "fixed+pins";
    case IoCandidate::kFio:
      return "fio";
  }
  return "?";
}

const char* IoPatternName(IoPattern p) {
  return p == IoPattern::kRandRead ? "randread" : "randwrite";
}

absl::Status CheckIoBenchConfig(const IoBenchConfig& c) {
  if (c.patterns.empty() || c.block_sizes.empty() || c.depths.empty() || c.candidates.empty()) {
    return absl::InvalidArgumentError("--rw, --bs, --qd and --candidates need a value each");
  }
  // A job reports its candidates by name: one given twice would be run twice and
  // reported once.
  for (size_t i = 0; i < c.candidates.size(); ++i) {
    if (std::find(c.candidates.begin(), c.candidates.begin() + i, c.candidates[i]) !=
        c.candidates.begin() + i) {
      return absl::InvalidArgumentError(
          absl::StrCat("--candidates: ", IoCandidateName(c.candidates[i]), " given twice"));
    }
  }
  uint32_t largest = 0;
  for (uint32_t bs : c.block_sizes) {
    if (bs == 0 || bs % kPageSize4K != 0 || bs > kPageSize2M) {
      return absl::InvalidArgumentError(
          absl::StrCat("--bs ", bs, ": a multiple of 4K up to 2M (one folio per buffer)"));
    }
    largest = std::max(largest, bs);
  }
  for (unsigned qd : c.depths) {
    if (qd == 0 || qd > 4096) {
      return absl::InvalidArgumentError(absl::StrCat("--qd ", qd, ": 1 to 4096"));
    }
  }
  if (!(c.seconds > 0) || c.seconds > 3600) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seconds ", c.seconds, ": above 0, at most 3600"));
  }
  if (c.file.empty() && c.size < largest) {
    return absl::InvalidArgumentError(
        absl::StrCat("--size ", c.size, ": smaller than the largest block, ", largest));
  }
  const std::string where = c.file.empty() ? c.dir : c.file;
  struct statfs fs;
  if (::statfs(where.c_str(), &fs) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(c.file.empty() ? "--dir " : "--file ", where, ": ", std::strerror(errno)));
  }
  struct stat st {};  // zero (no block device) should stat fail below
  if (::stat(where.c_str(), &st) == 0) {
    if (c.file.empty() && !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat("--dir ", where, ": not a directory"));
    }
    if (!c.file.empty() && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--file ", where, ": neither a regular file nor a block device"));
    }
  }
  if (!c.file.empty() && !c.write_existing) {
    for (IoPattern p : c.patterns) {
      if (p == IoPattern::kRandWrite) {
        return absl::InvalidArgumentError(
            absl::StrCat("--file ", c.file,
                         ": random writes would overwrite it; add --write-existing, or "
                         "--rw randread"));
      }
    }
  }
  const bool device = !c.file.empty() && S_ISBLK(st.st_mode);
  if (!device && fs.f_type == TMPFS_MAGIC) {
    return absl::InvalidArgumentError(absl::StrCat(
        c.file.empty() ? "--dir " : "--file ", where,
        " is on tmpfs, which takes O_DIRECT but does buffered I/O: not a valid target; use a "
        "disk-backed file system or a block device"));
  }
  return absl::OkStatus();
}

absl::StatusOr<IoBenchResult> RunIoBench(const IoBenchConfig& c, const IoBenchHooks& hooks) {
  if (absl::Status st = CheckIoBenchConfig(c); !st.ok()) return st;
  Target target;
  if (absl::Status st = target.Open(c, hooks); !st.ok()) return st;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  if (!rt.ok()) return rt.status();

  IoBenchResult result;
  result.target = target.path();
  result.created = target.created();
  result.size = target.size();
  bool with_fio = false;
  for (IoCandidate cand : c.candidates) with_fio |= cand == IoCandidate::kFio;
  if (with_fio) result.fio_version = io_internal::FioVersion(c.fio);
  absl::StatusOr<std::string> mount = Os::Default().HugetlbfsMountFor(kPageSize2M);

  const size_t jobs = c.patterns.size() * c.block_sizes.size() * c.depths.size();
  size_t job_no = 0;
  for (IoPattern pattern : c.patterns) {
    for (uint32_t bs : c.block_sizes) {
      for (unsigned qd : c.depths) {
        ++job_no;
        // The job's buffers: one folio each, written once so writes carry data.
        std::vector<Buffer> held;
        std::vector<std::byte*> buffers;
        for (unsigned i = 0; i < qd; ++i) {
          absl::StatusOr<Buffer> b = (*rt)->Allocate(bs);
          if (!b.ok()) return b.status();
          std::memset(b->data(), static_cast<int>(0x41 + i % 26), bs);
          buffers.push_back(b->data());
          held.push_back(std::move(*b));
        }
        const std::string name =
            absl::StrCat(IoPatternName(pattern), " ", PageSizeName(bs), " qd", qd);
        for (size_t k = 0; k < c.candidates.size(); ++k) {
          const IoCandidate cand = c.candidates[k];
          if (hooks.progress) {
            hooks.progress(absl::StrCat(name, ": ", IoCandidateName(cand), " (", k + 1, "/",
                                        c.candidates.size(), "), job ", job_no, "/", jobs));
          }
          absl::StatusOr<IoRun> run;
          if (cand == IoCandidate::kFio) {
            run = io_internal::RunFio({.fio = c.fio,
                                       .target = target.path(),
                                       .size = target.size(),
                                       .pattern = pattern,
                                       .block_size = bs,
                                       .depth = qd,
                                       .seconds = c.seconds,
                                       .hugetlbfs_mount = mount.ok() ? *mount : ""});
          } else {
            run = io_internal::RunLoop(**rt, buffers, cand,
                                       {.fd = target.fd(),
                                        .size = target.size(),
                                        .pattern = pattern,
                                        .block_size = bs,
                                        .depth = qd,
                                        .seconds = c.seconds,
                                        .seed = c.seed + job_no},
                                       &result.fixed_mode);
          }
          if (!run.ok()) {
            return absl::Status(run.status().code(), absl::StrCat(name, ", ", IoCandidateName(cand),
                                                                  ": ", run.status().message()));
          }
          run->candidate = cand;
          run->pattern = pattern;
          run->block_size = bs;
          run->depth = qd;
          result.runs.push_back(*run);
        }
      }
    }
  }
  return result;
}

}  // namespace hugemm::perf
