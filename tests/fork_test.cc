// fork() as a program meets it: a child of a process with an open runtime, its buffers,
// pins, subscriptions and an attached ring. The runtime is inert in the child (runtime.h,
// hugemm.h): what would change memory, the kernel pin ring or a ring's table is refused,
// closing leaves the parent's state alone, and the parent carries on as before, also
// after a child that execs or exits at once. Each child reports by its exit code.
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"
#include "hugemm/io.h"
#include "hugemm/runtime.h"
#include "tests/io_test_util.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

// Waits for `child` and returns its exit code, or -signal when a signal ended it.
int Reap(pid_t child) {
  int status = 0;
  if (::waitpid(child, &status, 0) != child) return -1000;
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1000;
}

// The first failed check's number, for the child's exit code.
struct Checks {
  int code = 0;
  void Expect(bool ok, int n) {
    if (!ok && code == 0) code = n;
  }
};

TEST(Fork, CApiInAChildLeavesTheParentsMemoryPinsAndRingAsTheyWere) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  PatternFile file(1 << 20, 57);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  hugemm_buffer big{}, small{};
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &big), 0) << hugemm_last_error();
  ASSERT_EQ(hugemm_alloc(rt, 4096, nullptr, 0, &small), 0) << hugemm_last_error();
  hugemm_page held[2];
  ASSERT_EQ(hugemm_pin_pages(rt, big.data, 2, HUGEMM_PIN | HUGEMM_WRITE, held), 2)
      << hugemm_last_error();
  hugemm_folio_info before{};
  ASSERT_EQ(hugemm_folio_info_at(rt, big.data, &before), 0) << hugemm_last_error();
  hugemm_translation where{};
  ASSERT_EQ(hugemm_translate(rt, big.data, 0, &where), 0) << hugemm_last_error();
  hugemm_subscription* sub = nullptr;
  const volatile uint64_t* seq = nullptr;
  ASSERT_EQ(hugemm_subscribe(rt, big.data, big.size, nullptr, nullptr, nullptr, &sub, &seq), 0)
      << hugemm_last_error();
  const uint64_t seq_before = *seq;
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  hugemm_io* io = nullptr;
  ASSERT_EQ(hugemm_io_attach(rt, ring.fd(), nullptr, &io), 0) << hugemm_last_error();
  const int64_t pinned = SettledVmPinKb();

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(20);  // a call that waits for good ends the child by SIGALRM
    Checks c;
    // Refused: new memory, freeing the parent's, registering and unregistering.
    hugemm_buffer b{};
    c.Expect(hugemm_map_buffer(rt, kPageSize2M, nullptr, &b) == -EFAULT, 1);
    c.Expect(hugemm_alloc(rt, 4096, nullptr, 0, &b) == -EFAULT, 2);
    c.Expect(hugemm_free(rt, big.data) == -EFAULT && hugemm_free(rt, small.data) == -EFAULT, 3);
    void* own = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    uint64_t id = 0;
    c.Expect(own != MAP_FAILED && hugemm_register_external(rt, own, kPageSize2M, &id) == -EFAULT &&
                 hugemm_unregister_external(rt, 1) == -EFAULT,
             4);
    c.Expect(std::strstr(hugemm_last_error(), "fork()") != nullptr, 5);
    // Reads, pins and unpins work on the child's copy of the table: they name the
    // parent's memory, and change nothing of the parent's.
    hugemm_translation t{};
    c.Expect(hugemm_translate(rt, big.data, 0, &t) == 0 && t.pfn == where.pfn, 6);
    hugemm_page p[1];
    c.Expect(hugemm_pin_pages(rt, big.data, 1, HUGEMM_PIN, p) == 1 &&
                 hugemm_page_address(p[0]) == big.data && hugemm_unpin_pages(rt, p, 1, 0) == 1,
             7);
    c.Expect(hugemm_maybe_dma_pinned(rt, big.data) == 1, 8);
    c.Expect(hugemm_unpin_pages(rt, held, 2, 1) == 1, 9);  // the copy of the parent's pin
    hugemm_subscription* mine = nullptr;
    c.Expect(hugemm_subscribe(rt, small.data, 4096, nullptr, nullptr, nullptr, &mine, nullptr) == 0,
             10);
    hugemm_unsubscribe(mine);
    // The io: lookups and per-I/O pins of the child's copy; no table for a ring of its own.
    c.Expect(hugemm_io_buffer_index(io, big.data, 4096) >= 0, 11);
    io_uring_sqe sqe{};
    c.Expect(hugemm_io_prep_read(io, &sqe, file.fd(), big.data, 4096, 0, 7) == 0 &&
                 hugemm_io_in_flight(io) == 1 && hugemm_io_cancel(io, &sqe, nullptr) == 0,
             12);
    TestRing own_ring;
    hugemm_io* own_io = nullptr;
    c.Expect(own_ring.ok && hugemm_io_attach(rt, own_ring.fd(), nullptr, &own_io) == -EFAULT &&
                 own_io == nullptr,
             13);
    // Closing releases the child's handles and descriptors only.
    hugemm_io_detach(io);
    hugemm_close(rt);
    hugemm_unsubscribe(sub);
    _exit(c.code);
  }
  EXPECT_EQ(Reap(child), 0)
      << "the first failed check in the child: 1 map_buffer, 2 alloc, 3 free, 4 external "
         "memory, 5 the message, 6 translate, 7 a pin, 8 maybe_dma_pinned, 9 unpin, "
         "10 subscribe, 11 buffer_index, 12 prep_read and cancel, 13 io_attach; a negative "
         "code is the signal that ended it";

  // The parent's pins, kernel pins, notifier and ring's table are as they were.
  EXPECT_EQ(VmPinKb(), pinned);
  hugemm_folio_info after{};
  ASSERT_EQ(hugemm_folio_info_at(rt, big.data, &after), 0) << hugemm_last_error();
  EXPECT_EQ(after.pincount, before.pincount);
  EXPECT_EQ(*seq, seq_before);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  ASSERT_NE(sqe, nullptr);
  ASSERT_EQ(hugemm_io_prep_read(io, sqe, file.fd(), big.data, 4096, 8192, 9), 0)
      << hugemm_last_error();
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.res, 4096) << "the parent's fixed buffer is still registered";
  EXPECT_EQ(FirstMismatch(big.data, 4096, 8192, file.seed()), -1);
  uint64_t user_data = 0;
  EXPECT_EQ(hugemm_io_complete(io, &cqe, &user_data), 0) << hugemm_last_error();
  EXPECT_EQ(user_data, 9u);

  // And it allocates, pins and frees as before.
  hugemm_buffer more{};
  ASSERT_EQ(hugemm_alloc(rt, kPageSize2M, nullptr, 0, &more), 0) << hugemm_last_error();
  hugemm_page p[1];
  EXPECT_EQ(hugemm_pin_pages(rt, more.data, 1, HUGEMM_PIN, p), 1) << hugemm_last_error();
  EXPECT_EQ(hugemm_unpin_pages(rt, p, 1, 0), 1);
  EXPECT_EQ(hugemm_unpin_pages(rt, held, 2, 1), 1);
  EXPECT_EQ(hugemm_free(rt, more.data), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(rt, small.data), 0) << hugemm_last_error();
  EXPECT_EQ(hugemm_free(rt, big.data), 0) << hugemm_last_error();
  hugemm_unsubscribe(sub);
  hugemm_io_detach(io);
  hugemm_close(rt);
}

// A buffer freed while pinned goes at its last unpin. In a child of fork() that unpin is
// of the child's copy: the parent's ring keeps the buffer's slot (the parent still reads
// through it), and the child's own mapping at that address stays.
TEST(Fork, AChildsLastUnpinOfAFreedBufferTouchesNeitherTheParentsRingNorItsOwnMappings) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  PatternFile file(1 << 20, 61);
  hugemm_runtime* rt = nullptr;
  ASSERT_EQ(hugemm_open(nullptr, &rt), 0) << hugemm_last_error();
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  hugemm_io* io = nullptr;
  ASSERT_EQ(hugemm_io_attach(rt, ring.fd(), nullptr, &io), 0) << hugemm_last_error();
  hugemm_buffer big{};
  ASSERT_EQ(hugemm_map_buffer(rt, kPageSize2M, nullptr, &big), 0) << hugemm_last_error();
  const int slot = hugemm_io_buffer_index(io, big.data, 4096);
  ASSERT_GE(slot, 0) << hugemm_last_error();
  hugemm_page held[1];
  ASSERT_EQ(hugemm_pin_pages(rt, big.data, 1, HUGEMM_PIN | HUGEMM_WRITE, held), 1)
      << hugemm_last_error();
  ASSERT_EQ(hugemm_free(rt, big.data), 0) << hugemm_last_error();  // waits for the pin

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::alarm(20);
    Checks c;
    // The runtime's memory is not the child's: the address is free for its own page.
    void* own = ::mmap(big.data, 4096, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
#ifndef __SANITIZE_THREAD__
    // (Under ThreadSanitizer the child finds the address taken: its own checks go.)
    c.Expect(own == big.data, 1);
#endif
    if (own == big.data) static_cast<volatile char*>(own)[0] = 'c';
    c.Expect(hugemm_unpin_pages(rt, held, 1, 0) == 1, 2);
    if (own == big.data) c.Expect(static_cast<volatile char*>(own)[0] == 'c', 3);
    _exit(c.code);
  }
  EXPECT_EQ(Reap(child), 0) << "the first failed check in the child: 1 its own mapping, 2 the "
                               "unpin, 3 its mapping after; -11: the unpin unmapped it";

  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  ASSERT_NE(sqe, nullptr);
  std::memset(big.data, 0, 4096);
  io_uring_prep_read_fixed(sqe, file.fd(), big.data, 4096, 8192, slot);
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  const io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.res, 4096) << "the child's unpin emptied the parent's slot";
  EXPECT_EQ(FirstMismatch(big.data, 4096, 8192, file.seed()), -1);
  EXPECT_EQ(hugemm_unpin_pages(rt, held, 1, 0), 1);  // the parent's own last pin
  hugemm_io_detach(io);
  hugemm_close(rt);
}

// A child that execs keeps none of the runtime's descriptors (the kernel pin ring, the
// memfd of a buffer, a hugetlbfs file): they are close-on-exec. A child that exits at
// once changes nothing either.
TEST(Fork, AChildThatExecsOrExitsAtOnceChangesNothingForTheParent) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<Buffer> small = (*rt)->Allocate(4096);
  ASSERT_TRUE(small.ok()) << small.status();
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(**rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<PinnedRange> pin = (*rt)->pinner().Pin(buf->data(), buf->size(), kGupPin);
  ASSERT_TRUE(pin.ok()) << pin.status();
  const int64_t pinned = SettledVmPinKb();

  // The child's descriptors, as the program it execs sees them.
  const char* script =
      "for f in /proc/$$/fd/*; do readlink \"$f\"; done | "
      "grep -q -e io_uring -e memfd:hugemm -e hugepages && exit 1; exit 0";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::execl("/bin/sh", "sh", "-c", script, static_cast<char*>(nullptr));
    _exit(2);
  }
  EXPECT_EQ(Reap(child), 0) << "1: the exec'd program holds a descriptor of the runtime, "
                               "2: no /bin/sh";
  // The control: the ring of the program itself is no close-on-exec descriptor here, so
  // the script sees what it looks for when there is something to see.
  const int cloexec = ::fcntl(ring.fd(), F_GETFD);
  ASSERT_GE(cloexec, 0);
  ASSERT_EQ(::fcntl(ring.fd(), F_SETFD, cloexec & ~FD_CLOEXEC), 0);
  child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::execl("/bin/sh", "sh", "-c", script, static_cast<char*>(nullptr));
    _exit(2);
  }
  EXPECT_EQ(Reap(child), 1) << "the script does not see an inherited ring";
  ASSERT_EQ(::fcntl(ring.fd(), F_SETFD, cloexec), 0);

  child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) _exit(0);
  EXPECT_EQ(Reap(child), 0);

  EXPECT_EQ(VmPinKb(), pinned);
  absl::StatusOr<Buffer> more = (*rt)->Allocate(kPageSize2M);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_GE((*io)->fixed().Find(more->data(), 4096), 0);
  HUGEMM_ASSERT_OK(more->Free());
  pin->Release();
  HUGEMM_ASSERT_OK(buf->Free());
  HUGEMM_ASSERT_OK(small->Free());
  io->reset();
}

// A ring of the child's own is given no table from the parent's runtime: a clone would
// hand it the parent's pages (a read into them would write the parent's memory), iovecs
// would name memory the child does not have.
TEST(Fork, AChildCannotGiveItsOwnRingTheParentsBuffers) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Checks c;
    int n = 1;
    for (FixedBufferMode mode :
         {FixedBufferMode::kAuto, FixedBufferMode::kClone, FixedBufferMode::kIovec}) {
      TestRing own;
      absl::StatusOr<std::unique_ptr<IoRing>> io =
          IoRing::Attach(**rt, own.fd(), {.fixed = {.mode = mode}});
      c.Expect(own.ok && !io.ok() && io.status().code() == absl::StatusCode::kFailedPrecondition &&
                   io.status().message().find("fork()") != absl::string_view::npos,
               n++);
      if (io.ok()) (void)io->release();  // as the runtime, left to the child's exit
    }
    _exit(c.code);
  }
  EXPECT_EQ(Reap(child), 0) << "the mode whose attach was not refused: 1 auto, 2 clone, 3 iovec";
  HUGEMM_ASSERT_OK(buf->Free());
}

// Without kernel pins too, MapBuffer in the child is refused: the memory would be the
// child's, but the table and the observers are the parent's (an IOVA mapper would map it
// into the parent's container).
TEST(Fork, AChildMapsNoBufferWithoutKernelPinsEither) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  struct Counter : MemoryObserver {
    absl::Status MemoryAdded(const MemoryRange&) override {
      ++added;
      return absl::OkStatus();
    }
    void MemoryRemoving(const MemoryRange&) override {}
    int added = 0;
  } counter;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  ASSERT_TRUE(rt.ok()) << rt.status();
  HUGEMM_ASSERT_OK((*rt)->AddMemoryObserver(&counter));
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  ASSERT_EQ(counter.added, 1);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<Buffer> more = (*rt)->MapBuffer(kPageSize2M);
    int code = 0;
    if (more.ok()) {
      more->Detach();
      code = 1;
    } else if (more.status().code() != absl::StatusCode::kFailedPrecondition ||
               more.status().message().find("fork()") == absl::string_view::npos) {
      code = 2;
    }
    if (code == 0 && counter.added != 1) code = 3;
    _exit(code);
  }
  EXPECT_EQ(Reap(child), 0) << "1: the child mapped a buffer, 2: another error, 3: the "
                               "observer heard of memory";
  HUGEMM_ASSERT_OK((*rt)->RemoveMemoryObserver(&counter));
  HUGEMM_ASSERT_OK(buf->Free());
}

// The parent goes on while the child lives: before and after the child drops its copy of
// the runtime and of the ring's io, the parent maps, allocates, pins, frees and reads into
// new buffers through the ring.
TEST(Fork, TheParentWorksWhileTheChildRunsAndAfterItClosed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 6);
  PatternFile file(1 << 20, 61);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(**rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> before = (*rt)->Allocate(64 << 10);
  ASSERT_TRUE(before.ok()) << before.status();
  int go[2], done[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    char c = 0;
    if (::read(go[0], &c, 1) != 1) _exit(1);  // the parent worked meanwhile
    io->reset();
    before->Detach();
    rt->reset();
    if (::write(done[1], "x", 1) != 1) _exit(2);
    if (::read(go[0], &c, 1) != 1) _exit(3);  // the parent worked again
    _exit(0);
  }
  // One round of work: a mapped buffer and an allocation, pinned, read into through the
  // ring, freed.
  const auto work = [&](uint64_t offset) {
    absl::StatusOr<Buffer> mapped = (*rt)->MapBuffer(kPageSize2M);
    ASSERT_TRUE(mapped.ok()) << mapped.status();
    absl::StatusOr<Buffer> small = (*rt)->Allocate(kPageSize2M);
    ASSERT_TRUE(small.ok()) << small.status();
    for (Buffer* b : {&*mapped, &*small}) {
      absl::StatusOr<PinnedRange> pin = (*rt)->pinner().Pin(b->data(), 8192, kGupPin);
      ASSERT_TRUE(pin.ok()) << pin.status();
      HUGEMM_ASSERT_OK(
          (*io)->PrepareRead(io_uring_get_sqe(&ring.ring), file.fd(), b->data(), 4096, offset, 1));
      ASSERT_EQ(io_uring_submit(&ring.ring), 1);
      io_uring_cqe cqe = ring.Wait();
      EXPECT_EQ(cqe.res, 4096);
      EXPECT_EQ(FirstMismatch(b->data(), 4096, offset, file.seed()), -1);
      HUGEMM_ASSERT_OK((*io)->Complete(&cqe).status());
    }
    HUGEMM_ASSERT_OK(mapped->Free());
    HUGEMM_ASSERT_OK(small->Free());
  };
  work(4096);
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(done[0], &c, 1), 1);  // the child's copies are gone, the child lives
  work(3 * 4096);
  ASSERT_EQ(::write(go[1], "x", 1), 1);
  EXPECT_EQ(Reap(child), 0);
  work(5 * 4096);
  for (int fd : {go[0], go[1], done[0], done[1]}) ::close(fd);
  HUGEMM_ASSERT_OK(before->Free());
  io->reset();
}

// A runtime the child opens is its own: it maps, allocates, pins and frees there (also in
// the child's own child, for a runtime the child opened), beside the parent's inert one.
TEST(Fork, ARuntimeOpenedInTheChildIsItsOwn) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 6);
  absl::StatusOr<std::unique_ptr<Runtime>> parents = Runtime::Open();
  ASSERT_TRUE(parents.ok()) << parents.status();
  absl::StatusOr<Buffer> buf = (*parents)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  absl::StatusOr<Buffer> small = (*parents)->Allocate(4096);  // a pool extent, indexed
  ASSERT_TRUE(small.ok()) << small.status();
  const int64_t pinned = SettledVmPinKb();
  // 0 when `rt` works in this process, else the step that failed.
  const auto use = [](Runtime& rt) {
    absl::StatusOr<Buffer> mapped = rt.MapBuffer(kPageSize2M);
    if (!mapped.ok()) return 1;
    absl::StatusOr<Buffer> small = rt.Allocate(4096);
    if (!small.ok()) return 2;
    std::memset(small->data(), 0x5a, small->size());
    absl::StatusOr<PinnedRange> pin = rt.pinner().Pin(mapped->data(), 8192, kGupPin);
    if (!pin.ok()) return 3;
    pin->Release();
    if (!mapped->Free().ok() || !small->Free().ok()) return 4;
    return 0;
  };
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<std::unique_ptr<Runtime>> own = Runtime::Open();
    if (!own.ok()) _exit(10);
    if (int step = use(**own); step != 0) _exit(10 + step);
    const pid_t grandchild = ::fork();
    if (grandchild == 0) {
      absl::StatusOr<std::unique_ptr<Runtime>> third = Runtime::Open();
      if (!third.ok()) _exit(20);
      if (int step = use(**third); step != 0) _exit(20 + step);
      // The child's runtime is inert here, as the parent's is in the child.
      if ((*own)->Allocate(4096).ok()) _exit(25);
      third->reset();
      _exit(0);
    }
    if (int code = Reap(grandchild); code != 0) _exit(code);
    if (int step = use(**own); step != 0) _exit(30 + step);
    if ((*parents)->Allocate(4096).ok()) _exit(35);
    small->Detach();
    own->reset();
    _exit(0);
  }
  EXPECT_EQ(Reap(child), 0) << "1x: the child's own runtime, 2x: the grandchild's, 3x: the "
                               "child's after the grandchild; x: 0 open, 1 map, 2 allocate, "
                               "3 pin, 4 free, 5 an inert runtime allocated";
  EXPECT_EQ(VmPinKb(), pinned);
  EXPECT_EQ(use(**parents), 0);
  HUGEMM_ASSERT_OK(small->Free());
  HUGEMM_ASSERT_OK(buf->Free());
}

}  // namespace
}  // namespace hugemm::testing
