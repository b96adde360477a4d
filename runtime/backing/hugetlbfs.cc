// hugetlbfs: a file in a hugetlbfs mount of the requested page size. Unlike a memfd, a
// named file can be opened by a second process (mode 0600: the same user only).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hugemm/page_size.h"
#include "runtime/backing/kind.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/status.h"

namespace hugemm::backing_internal {
namespace {

class HugetlbfsBacking final : public Kind {
 public:
  HugetlbfsBacking(size_t page_size, std::string mount, Os& os)
      : Kind(BackingKind::kHugetlbfs, page_size, os), mount_(std::move(mount)) {}

  std::string Describe() const override {
    return absl::StrCat("hugetlbfs ", PageSizeName(page_size()), " at ", mount_);
  }

  std::string FilePath(absl::string_view name) const override {
    return absl::StrCat(mount_, "/", name);
  }

  absl::StatusOr<Source> Prepare(const MapRequest& request) override {
    const uint64_t offset = request.offset.value_or(0);
    if (offset % page_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offset ", offset, " is not a multiple of the ", PageSizeName(page_size()), " page"));
    }
    if (request.name.empty() && offset != 0) {
      return absl::InvalidArgumentError("an offset needs a named file");
    }
    if (absl::StrContains(request.name, '/') || absl::StrContains(request.name, '\0') ||
        request.name == "." || request.name == "..") {
      // (A NUL would end the name the kernel sees early: another file than FilePath names.)
      return absl::InvalidArgumentError(absl::StrCat("file name \"", absl::CHexEscape(request.name),
                                                     "\" must be a plain name in ", mount_));
    }
    // The file's end, offset + length, must be a size a file can have (off_t).
    if (offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) ||
        request.length > static_cast<uint64_t>(std::numeric_limits<off_t>::max()) - offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          "offset ", offset, " + length ", request.length, " is past the largest file size"));
    }
    Source s;
    std::string path;
    absl::StatusOr<int> fd;
    if (request.name.empty()) {
      // A private file: create with a unique name and unlink at once, so nothing is left
      // behind in the mount whatever happens to this process.
      static std::atomic<uint64_t> counter{0};
      path = absl::StrCat(mount_, "/.hugemm-", ::getpid(), "-", counter.fetch_add(1));
      fd = os().Open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
      if (!fd.ok()) return fd.status();
      if (absl::Status st = os().Unlink(path); !st.ok()) {
        (void)os().Close(*fd);
        return st;
      }
    } else {
      // Created here unless another process made it first; a file this call created is
      // removed again if the mapping fails.
      path = FilePath(request.name);
      fd = os().Open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
      if (fd.ok()) {
        s.created_path = path;
      } else if (ErrnoOf(fd.status()) == EEXIST) {
        fd = os().Open(path, O_RDWR, 0);
      }
      if (!fd.ok() && ErrnoOf(fd.status()) == EISDIR) {
        return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a file"));
      }
      if (!fd.ok()) return fd.status();
    }
    // Everything below gives back the descriptor and the file it made.
    auto fail = [&](const absl::Status& status) {
      (void)os().Close(*fd);
      if (!s.created_path.empty()) (void)os().Unlink(s.created_path);
      return sys::Annotate(status, path);
    };
    absl::StatusOr<struct stat> st = os().Fstat(*fd);
    if (!st.ok()) return fail(st.status());
    // A FIFO or device node another program made in the mount holds no huge pages.
    if (!S_ISREG(st->st_mode)) return fail(absl::InvalidArgumentError("not a regular file"));
    const uint64_t end = offset + request.length;
    if (static_cast<uint64_t>(st->st_size) < end) {
      if (absl::Status trunc = os().Ftruncate(*fd, static_cast<off_t>(end)); !trunc.ok()) {
        return fail(trunc);
      }
    }
    s.fd = *fd;
    s.owns_fd = true;
    s.offset = offset;
    s.flags = request.shared ? MAP_SHARED : MAP_PRIVATE;
    return s;
  }

  // A mount with a size= option refuses a mapping once its files would pass it, however
  // many pages the kernel's pool has free.
  std::string LimitHint() const override {
    absl::StatusOr<std::vector<sys::HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os());
    if (!mounts.ok()) return "";
    for (const sys::HugetlbfsMount& m : *mounts) {
      if (m.path == mount_ && m.size_limit != 0) {
        return absl::StrCat(mount_, " holds at most ", HumanBytes(m.size_limit),
                            " in all its files (its size= option)");
      }
    }
    return "";
  }

 private:
  std::string mount_;
};

// A path as a directory: lexically normal, with no trailing slash but the root's.
std::string SameSpelling(const std::string& path) {
  std::string out = std::filesystem::path(path).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Kind>> NewHugetlbfs(const BackingOptions& options, Os& os) {
  const size_t page_size = options.page_size ? options.page_size : kPageSize2M;
  if (absl::Status st = CheckHugePageSize(os, page_size); !st.ok()) return st;
  std::string mount = options.hugetlbfs_mount;
  if (mount.empty()) {
    absl::StatusOr<std::string> found = os.HugetlbfsMountFor(page_size);
    if (found.status().code() == absl::StatusCode::kNotFound) {
      // libhugetlbfs passes over a mount this process may not write (root's /dev/hugepages
      // for any other user): name it rather than say there is none.
      absl::StatusOr<std::vector<sys::HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os);
      if (mounts.ok()) {
        for (const sys::HugetlbfsMount& m : *mounts) {
          if (m.page_size != page_size) continue;
          return absl::PermissionDeniedError(absl::StrCat(
              "the hugetlbfs mount ", m.path, " with ", PageSizeName(page_size),
              " pages is not writable by this process (uid ", ::geteuid(),
              "): give it write access there (chown or chmod the mount, or mount one with "
              "uid=, gid= or mode=)"));
        }
      }
      return absl::NotFoundError(absl::StrCat("no hugetlbfs mount with ", PageSizeName(page_size),
                                              " pages (mount one: mount -t "
                                              "hugetlbfs -o pagesize=",
                                              PageSizeName(page_size), " none /dev/hugepages",
                                              PageSizeName(page_size), ")"));
    }
    if (!found.ok()) return found.status();
    mount = std::move(*found);
  } else {
    absl::StatusOr<std::vector<sys::HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os);
    if (!mounts.ok()) return mounts.status();
    // The same directory however it is spelled ("/dev/hugepages/", "/dev//hugepages/."),
    // without following links; the mount's own spelling names it from here on.
    const std::string wanted = SameSpelling(mount);
    const sys::HugetlbfsMount* match = nullptr;
    for (const sys::HugetlbfsMount& m : *mounts) {
      if (SameSpelling(m.path) == wanted) match = &m;
    }
    if (match == nullptr) {
      return absl::NotFoundError(absl::StrCat(mount, " is not a hugetlbfs mount"));
    }
    if (match->page_size != page_size) {
      return absl::InvalidArgumentError(absl::StrCat(mount, " has ", PageSizeName(match->page_size),
                                                     " pages, not ", PageSizeName(page_size)));
    }
    mount = match->path;
  }
  return std::make_unique<HugetlbfsBacking>(page_size, std::move(mount), os);
}

}  // namespace hugemm::backing_internal
