// Owns a file descriptor opened through an Os, and closes it through the same Os.
#ifndef HUGEMM_RUNTIME_SYS_UNIQUE_FD_H_
#define HUGEMM_RUNTIME_SYS_UNIQUE_FD_H_

#include <utility>

#include "hugemm/os.h"

namespace hugemm::sys {

// Move-only. Not thread-safe: one owner at a time.
class UniqueFd {
 public:
  UniqueFd() = default;
  UniqueFd(Os& os, int fd) : os_(&os), fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept
      : os_(std::exchange(other.os_, nullptr)), fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      os_ = std::exchange(other.os_, nullptr);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now (a close error has nothing left to undo: the descriptor is gone).
  void Reset() {
    if (fd_ >= 0) (void)os_->Close(fd_);
    fd_ = -1;
  }

 private:
  Os* os_ = nullptr;
  int fd_ = -1;
};

}  // namespace hugemm::sys

#endif  // HUGEMM_RUNTIME_SYS_UNIQUE_FD_H_
