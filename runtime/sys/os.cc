#include "runtime/sys/os.h"

#include <fcntl.h>
#include <numaif.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace hugemm::sys {
namespace {

Os& RealOs() {
  static Os* real = new Os();
  return *real;
}

Os* g_os = nullptr;

}  // namespace

absl::Status ErrnoStatus(int err, absl::string_view what) {
  const char* name = strerrorname_np(err);
  const char* text = strerrordesc_np(err);
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(what, ": ", text ? text : "unknown error", " (",
                                   name ? std::string(name) : absl::StrCat("errno ", err), ")"));
}

absl::StatusOr<void*> Os::Mmap(void* addr, size_t length, int prot, int flags, int fd,
                               off_t offset) {
  void* p = ::mmap(addr, length, prot, flags, fd, offset);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap");
  return p;
}

absl::Status Os::Munmap(void* addr, size_t length) {
  if (::munmap(addr, length) != 0) return ErrnoStatus(errno, "munmap");
  return absl::OkStatus();
}

absl::Status Os::Madvise(void* addr, size_t length, int advice) {
  if (::madvise(addr, length, advice) != 0) {
    return ErrnoStatus(errno, absl::StrCat("madvise(", advice, ")"));
  }
  return absl::OkStatus();
}

absl::Status Os::BindToNode(void* addr, size_t length, int node) {
  if (node < 0 || node >= 1024) {
    return absl::InvalidArgumentError(absl::StrCat("NUMA node ", node, " out of range"));
  }
  unsigned long mask[1024 / (8 * sizeof(unsigned long))] = {};
  mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
  if (::mbind(addr, length, MPOL_BIND, mask, 1024, MPOL_MF_STRICT) != 0) {
    return ErrnoStatus(errno, absl::StrCat("mbind to node ", node));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Os::NodeOfAddress(const void* addr) {
  int node = -1;
  if (::get_mempolicy(&node, nullptr, 0, const_cast<void*>(addr), MPOL_F_NODE | MPOL_F_ADDR) != 0) {
    return ErrnoStatus(errno, "get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR)");
  }
  return node;
}

absl::StatusOr<int> Os::MemfdCreate(const std::string& name, unsigned int flags) {
  int fd = ::memfd_create(name.c_str(), flags);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("memfd_create ", name));
  return fd;
}

absl::StatusOr<int> Os::Open(const std::string& path, int flags, mode_t mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
  return fd;
}

absl::Status Os::Ftruncate(int fd, off_t length) {
  if (::ftruncate(fd, length) != 0) {
    return ErrnoStatus(errno, absl::StrCat("ftruncate to ", length, " bytes"));
  }
  return absl::OkStatus();
}

absl::Status Os::Close(int fd) {
  if (::close(fd) != 0) return ErrnoStatus(errno, "close");
  return absl::OkStatus();
}

absl::Status Os::Pread(int fd, void* buf, size_t length, off_t offset) {
  auto* out = static_cast<char*>(buf);
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::pread(fd, out + done, length - done, offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("pread ", length, " bytes at offset ", offset));
    }
    if (n == 0) {
      return absl::OutOfRangeError(
          absl::StrCat("pread: end of file at offset ", offset + static_cast<off_t>(done)));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

Os& os() { return g_os ? *g_os : RealOs(); }

ScopedOsOverride::ScopedOsOverride(Os* replacement) : previous_(g_os) { g_os = replacement; }
ScopedOsOverride::~ScopedOsOverride() { g_os = previous_; }

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

}  // namespace hugemm::sys
