// Helpers for the storage tests: a file of known contents read and written with
// O_DIRECT, a liburing ring, and a gate that holds an I/O in flight until the test opens
// it (a pipe read linked in front of it).
#ifndef HUGEMM_TESTS_IO_TEST_UTIL_H_
#define HUGEMM_TESTS_IO_TEST_UTIL_H_

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace hugemm::testing {

// The word at byte offset `off` (a multiple of 8) of a test file made with `seed`.
inline uint64_t PatternWord(uint64_t off, uint64_t seed) {
  return (off / 8 + 1) * 0x9E3779B97F4A7C15ull ^ seed;
}

inline void FillPattern(void* p, size_t length, uint64_t file_offset, uint64_t seed) {
  auto* w = static_cast<uint64_t*>(p);
  for (size_t i = 0; i < length / 8; ++i) w[i] = PatternWord(file_offset + i * 8, seed);
}

// The first offset where `p` differs from the pattern, or -1.
inline int64_t FirstMismatch(const void* p, size_t length, uint64_t file_offset, uint64_t seed) {
  const auto* w = static_cast<const uint64_t*>(p);
  for (size_t i = 0; i < length / 8; ++i) {
    if (w[i] != PatternWord(file_offset + i * 8, seed)) return static_cast<int64_t>(i * 8);
  }
  return -1;
}

// A file of `size` bytes of the pattern, opened for O_DIRECT I/O (where the file system
// takes it), removed at the end.
class PatternFile {
 public:
  PatternFile(size_t size, uint64_t seed) : size_(size), seed_(seed) {
    path_ = dir_.path() + "/data";
    const int wfd = ::open(path_.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    EXPECT_GE(wfd, 0) << path_ << ": " << std::strerror(errno);
    std::vector<uint64_t> chunk((1 << 20) / 8);
    for (size_t off = 0; off < size; off += chunk.size() * 8) {
      FillPattern(chunk.data(), chunk.size() * 8, off, seed);
      EXPECT_EQ(::pwrite(wfd, chunk.data(), chunk.size() * 8, static_cast<off_t>(off)),
                static_cast<ssize_t>(chunk.size() * 8));
    }
    EXPECT_EQ(::fsync(wfd), 0);
    ::close(wfd);
    fd_ = ::open(path_.c_str(), O_RDWR | O_DIRECT);
    if (fd_ < 0) fd_ = ::open(path_.c_str(), O_RDWR);  // a file system without O_DIRECT
    EXPECT_GE(fd_, 0) << path_ << ": " << std::strerror(errno);
  }
  ~PatternFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  PatternFile(const PatternFile&) = delete;
  PatternFile& operator=(const PatternFile&) = delete;

  int fd() const { return fd_; }
  size_t size() const { return size_; }
  uint64_t seed() const { return seed_; }
  // Reads back through a descriptor of its own, past the page cache.
  std::vector<uint64_t> ReadBack(uint64_t off, size_t length) const {
    std::vector<uint64_t> out(length / 8);
    const int rfd = ::open(path_.c_str(), O_RDONLY);
    EXPECT_EQ(::pread(rfd, out.data(), length, static_cast<off_t>(off)),
              static_cast<ssize_t>(length));
    ::close(rfd);
    return out;
  }

 private:
  TempDir dir_;
  std::string path_;
  int fd_ = -1;
  size_t size_;
  uint64_t seed_;
};

// A liburing ring, torn down when dropped.
struct TestRing {
  explicit TestRing(unsigned entries = 64) { ok = io_uring_queue_init(entries, &ring, 0) == 0; }
  ~TestRing() {
    if (ok) io_uring_queue_exit(&ring);
  }
  TestRing(const TestRing&) = delete;
  TestRing& operator=(const TestRing&) = delete;
  int fd() const { return ring.ring_fd; }
  // Waits for one completion, copies it and marks it seen.
  io_uring_cqe Wait() {
    io_uring_cqe* cqe = nullptr;
    io_uring_cqe copy{};
    EXPECT_EQ(io_uring_wait_cqe(&ring, &cqe), 0);
    if (cqe != nullptr) {
      copy = *cqe;
      io_uring_cqe_seen(&ring, cqe);
    }
    return copy;
  }
  // Whether a completion is waiting, without waiting.
  bool Ready() {
    io_uring_cqe* cqe = nullptr;
    return io_uring_peek_cqe(&ring, &cqe) == 0 && cqe != nullptr;
  }

  io_uring ring{};
  bool ok = false;
};

// Holds the SQE prepared after Arm() until Open(): Arm queues a read of a pipe linked in
// front of the next SQE, which the kernel starts only when the read completes.
class Gate {
 public:
  static constexpr uint64_t kUserData = 0x6a7e;
  Gate() { EXPECT_EQ(::pipe(fds_), 0); }
  ~Gate() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  void Arm(io_uring* ring) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    io_uring_prep_read(sqe, fds_[0], &byte_, 1, 0);
    sqe->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(sqe, kUserData);
  }
  void Open() { EXPECT_EQ(::write(fds_[1], "x", 1), 1); }

 private:
  int fds_[2] = {-1, -1};
  char byte_ = 0;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_IO_TEST_UTIL_H_
