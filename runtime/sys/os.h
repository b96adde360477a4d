// The one door to the kernel. Every layer above calls mmap, madvise, mbind and
// friends through Os so that a test can swap in a subclass and inject a failure at
// an exact step (say, the prefault of the third extent) and check that nothing leaks.
#ifndef HUGEMM_RUNTIME_SYS_OS_H_
#define HUGEMM_RUNTIME_SYS_OS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace hugemm::sys {

// A status carrying errno's name and text: "what: Cannot allocate memory (ENOMEM)".
absl::Status ErrnoStatus(int err, absl::string_view what);

class Os {
 public:
  virtual ~Os() = default;

  virtual absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                                     off_t offset);
  virtual absl::Status Munmap(void* addr, size_t length);
  virtual absl::Status Madvise(void* addr, size_t length, int advice);
  // mbind(addr, length, MPOL_BIND, {node}); node must be >= 0.
  virtual absl::Status BindToNode(void* addr, size_t length, int node);
  // The node of the page backing addr (get_mempolicy MPOL_F_NODE|MPOL_F_ADDR).
  virtual absl::StatusOr<int> NodeOfAddress(const void* addr);
  virtual absl::StatusOr<int> MemfdCreate(const std::string& name, unsigned int flags);
  virtual absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode);
  virtual absl::Status Ftruncate(int fd, off_t length);
  virtual absl::Status Close(int fd);
  // Reads exactly `length` bytes at `offset` or fails (short reads are errors).
  virtual absl::Status Pread(int fd, void* buf, size_t length, off_t offset);
};

// The process-wide Os. Real by default.
Os& os();

// Installs `replacement` for the life of this object (tests only; not thread-safe
// against concurrent mapping).
class ScopedOsOverride {
 public:
  explicit ScopedOsOverride(Os* replacement);
  ~ScopedOsOverride();
  ScopedOsOverride(const ScopedOsOverride&) = delete;
  ScopedOsOverride& operator=(const ScopedOsOverride&) = delete;

 private:
  Os* previous_;
};

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = other.Release();
    }
    return *this;
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_OS_H_
