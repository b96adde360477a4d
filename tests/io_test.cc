// Storage programs on real huge pages: a program's ring gets hugemm's fixed buffers (by
// clone and by iovecs), the table follows memory as it comes and goes, and per-I/O pins
// keep a buffer freed with an O_DIRECT read or write in flight from anyone else until
// its completion is reaped.
#include "hugemm/io.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/api/kernel_pin_table.h"
#include "runtime/sys/files.h"
#include "tests/io_test_util.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Runtime> OpenRuntime(bool kernel_pins = true) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = kernel_pins});
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

// One READ_FIXED of `length` bytes at `off` into `buf` through `index`: the CQE's res.
int ReadFixed(TestRing& ring, int fd, void* buf, unsigned length, uint64_t off, int index) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  io_uring_prep_read_fixed(sqe, fd, buf, length, off, index);
  EXPECT_EQ(io_uring_submit(&ring.ring), 1);
  return ring.Wait().res;
}

// A 64-bit folio PFN set of a buffer, to compare with buffers handed out later.
uint64_t HeadPfn(Runtime& rt, const void* p) {
  absl::StatusOr<FolioInfo> info = rt.FolioInfoAt(p);
  EXPECT_TRUE(info.ok()) << info.status();
  return info.ok() ? info->head_pfn : kUnknownPfn;
}

// Tests run once per table mode.
class EachMode : public ::testing::TestWithParam<FixedBufferMode> {
 protected:
  // `ring` attached to `rt`, with a table made in this test's mode.
  absl::StatusOr<std::unique_ptr<IoRing>> AttachRing(Runtime& rt, const TestRing& ring) {
    return IoRing::Attach(rt, ring.fd(), {.fixed = {.mode = GetParam()}});
  }
};

class FixedBuffersTest : public EachMode {};

TEST_P(FixedBuffersTest, ReadFixedIntoAnyHugemmMemoryAndTheTableFollows) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
  PatternFile file(8 << 20, 11);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  // Memory held before the ring is attached, and memory that comes after.
  absl::StatusOr<Buffer> before = rt->Allocate(128 << 10);
  ASSERT_TRUE(before.ok()) << before.status();
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed =
      FixedBuffers::Attach(*rt, ring.fd(), {.mode = GetParam()});
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ((*fixed)->mode(), GetParam());
  absl::StatusOr<Buffer> mapped = rt->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  absl::StatusOr<Buffer> after = rt->Allocate(kPageSize2M);  // a second extent
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ((*fixed)->slots_filled(), 3u);

  struct Case {
    std::byte* p;
    unsigned length;
    uint64_t off;
  };
  for (const Case& c : {Case{before->data(), 128 << 10, 1 << 20},
                        Case{mapped->data() + kPageSize2M - 4096, 8192, 4096},
                        Case{after->data(), 2 << 20, 6 << 20}}) {
    const int index = (*fixed)->Find(c.p, c.length);
    ASSERT_GE(index, 0) << (*fixed)->IndexOf(c.p, c.length).status();
    EXPECT_EQ(ReadFixed(ring, file.fd(), c.p, c.length, c.off, index), static_cast<int>(c.length));
    EXPECT_EQ(FirstMismatch(c.p, c.length, c.off, file.seed()), -1);
  }
  // Memory outside any buffer is refused with a reason, before the kernel sees it.
  EXPECT_EQ((*fixed)->Find(mapped->data() + mapped->size() - 4096, 8192), -1);
  absl::StatusOr<int> no = (*fixed)->IndexOf(&file, 8);
  EXPECT_EQ(no.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no.status().message(), HasSubstr("not memory of this hugemm runtime"));

  // A buffer that goes leaves the program's table too: its old index reads nothing.
  std::byte* gone = mapped->data();
  const int gone_index = (*fixed)->Find(gone, 4096);
  HUGEMM_ASSERT_OK(mapped->Free());
  EXPECT_EQ((*fixed)->slots_filled(), 2u);
  std::vector<std::byte> scratch(4096);
  EXPECT_EQ(ReadFixed(ring, file.fd(), before->data(), 4096, 0, gone_index), -EFAULT);
}

// A program that keeps the index (and the address) of a buffer it has freed, as a storage
// program with a stale request would: the freed buffer's slot is empty (-EFAULT) and is
// not the next buffer's, so that request reads into no memory handed out since, even
// where mmap gives the next buffer the same address. An index past the table, an address
// outside the index's buffer and a length across its end are the kernel's -EFAULT, with
// nothing written anywhere.
TEST_P(FixedBuffersTest, AStaleIndexOfAFreedBufferNeverReachesTheNextOne) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  PatternFile file(4 << 20, 41);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = AttachRing(*rt, ring);
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> old = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(old.ok()) << old.status();
  std::byte* const was = old->data();
  const int stale = (*io)->fixed().Find(was, 4096);
  ASSERT_GE(stale, 0);
  EXPECT_EQ(ReadFixed(ring, file.fd(), was, 4096, 0, stale), 4096);
  HUGEMM_ASSERT_OK(old->Free());
  EXPECT_EQ(ReadFixed(ring, file.fd(), was, 4096, 0, stale), -EFAULT);

  // New buffers, one of them at the old address when mmap gives it back.
  std::vector<Buffer> next;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Buffer> b = rt->MapBuffer(kPageSize2M);
    ASSERT_TRUE(b.ok()) << b.status();
    std::memset(b->data(), 0x5a, kPageSize2M);
    EXPECT_NE((*io)->fixed().Find(b->data(), 4096), stale)
        << "the freed buffer's slot went to the next buffer";
    next.push_back(std::move(*b));
  }
  const int index = (*io)->fixed().Find(next[0].data(), 4096);
  ASSERT_GE(index, 0);
  EXPECT_EQ(ReadFixed(ring, file.fd(), was, 4096, 0, stale), -EFAULT);
  EXPECT_EQ(ReadFixed(ring, file.fd(), next[0].data(), 4096, 0, stale), -EFAULT);
  EXPECT_EQ(
      ReadFixed(ring, file.fd(), next[0].data(), 4096, 0, api_internal::KernelPinTable::kMaxSlots),
      -EFAULT)
      << "an index past the table";
  EXPECT_EQ(ReadFixed(ring, file.fd(), next[1].data(), 4096, 0, index), -EFAULT)
      << "an address outside the index's buffer";
  EXPECT_EQ(ReadFixed(ring, file.fd(), next[0].data() + kPageSize2M - 4096, 8192, 0, index),
            -EFAULT)
      << "a length across the end of the buffer";
  for (const Buffer& b : next) {
    const auto* p = reinterpret_cast<const unsigned char*>(b.data());
    EXPECT_EQ(std::count(p, p + kPageSize2M, 0x5a), static_cast<ptrdiff_t>(kPageSize2M))
        << "a refused read wrote memory handed out since";
  }
  // Through its own index the new buffer gets its data.
  EXPECT_EQ(ReadFixed(ring, file.fd(), next[0].data(), 4096, 8192, index), 4096);
  EXPECT_EQ(FirstMismatch(next[0].data(), 4096, 8192, file.seed()), -1);

  // A freed allocation: its extent stays a fixed buffer (the next allocation's memory),
  // and hugemm refuses to prepare an I/O on the freed address.
  absl::StatusOr<Buffer> a = rt->Allocate(64 << 10);
  ASSERT_TRUE(a.ok()) << a.status();
  std::byte* const freed = a->data();
  HUGEMM_ASSERT_OK(a->Free());
  io_uring_sqe sqe{};
  absl::Status st = (*io)->PrepareRead(&sqe, file.fd(), freed, 4096, 0, 1);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_EQ((*io)->in_flight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, FixedBuffersTest,
                         ::testing::Values(FixedBufferMode::kClone, FixedBufferMode::kIovec),
                         [](const auto& info) {
                           return info.param == FixedBufferMode::kClone ? "Clone" : "Iovec";
                         });

TEST(FixedBuffers, AutoPicksCloneWithKernelPinsAndIovecsWithout) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  for (bool pins : {true, false}) {
    std::unique_ptr<Runtime> rt = OpenRuntime(pins);
    ASSERT_NE(rt, nullptr);
    TestRing ring;
    absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*rt, ring.fd());
    ASSERT_TRUE(fixed.ok()) << fixed.status();
    EXPECT_EQ((*fixed)->mode(), pins ? FixedBufferMode::kClone : FixedBufferMode::kIovec);
    absl::StatusOr<Buffer> b = rt->Allocate(4096);
    ASSERT_TRUE(b.ok());
    EXPECT_GE((*fixed)->Find(b->data(), 4096), 0);
    // Past the end of the pool extent, by a little or by a length whose sum would wrap.
    for (size_t length : {size_t{8} << 20, ~size_t{0}}) {
      absl::StatusOr<int> past = (*fixed)->IndexOf(b->data(), length);
      EXPECT_EQ(past.status().code(), absl::StatusCode::kNotFound);
      EXPECT_THAT(past.status().message(), HasSubstr("runs past the end")) << length;
    }
    if (!pins) {
      absl::StatusOr<std::unique_ptr<FixedBuffers>> clone =
          FixedBuffers::Attach(*rt, TestRing().fd(), {.mode = FixedBufferMode::kClone});
      EXPECT_EQ(clone.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(clone.status().message(), HasSubstr("kernel pins are off"));
    }
  }
}

// A read-only buffer (BufferOptions::prot) is read-only in the kernel too. The kernel
// pins the memory it registers for writing, so a read-only buffer goes into rings only
// by what was registered while it was being mapped: a clone of the runtime's table
// carries it; a ring attached by iovecs afterwards is refused by the kernel, with the
// error named and nothing left registered.
TEST(FixedBuffers, AReadOnlyBufferReachesALaterRingByCloneOnly) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  absl::StatusOr<Buffer> ro = rt->MapBuffer(kPageSize2M, {.prot = kProtRead});
  ASSERT_TRUE(ro.ok()) << ro.status();
  TestRing cloned;
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed =
      FixedBuffers::Attach(*rt, cloned.fd(), {.mode = FixedBufferMode::kClone});
  if (fixed.status().code() == absl::StatusCode::kUnimplemented) {
    GTEST_SKIP() << "this kernel cannot clone buffer tables: " << fixed.status();
  }
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_GE((*fixed)->Find(ro->data(), kPageSize2M), 0);
  TestRing by_iovecs;
  absl::StatusOr<std::unique_ptr<FixedBuffers>> refused =
      FixedBuffers::Attach(*rt, by_iovecs.fd(), {.mode = FixedBufferMode::kIovec});
  EXPECT_FALSE(refused.ok());
  EXPECT_EQ(ErrnoOf(refused.status()), EFAULT) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("a buffer mapped without write"));
  // Nothing was left registered: the ring takes a table of its own.
  EXPECT_EQ(io_uring_register_buffers_sparse(&by_iovecs.ring, 4), 0);
}

TEST(FixedBuffers, ARingWithBuffersOrNoRingIsAClearError) {
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  ASSERT_EQ(io_uring_register_buffers_sparse(&ring.ring, 4), 0);
  absl::StatusOr<std::unique_ptr<FixedBuffers>> busy = FixedBuffers::Attach(*rt, ring.fd());
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(busy.status().message(), HasSubstr("has a registered-buffer table already"));
  EXPECT_EQ(FixedBuffers::Attach(*rt, -1).status().code(), absl::StatusCode::kInvalidArgument);
  const int not_a_ring = ::open("/dev/null", O_RDONLY);
  absl::StatusOr<std::unique_ptr<FixedBuffers>> bad = FixedBuffers::Attach(*rt, not_a_ring);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_EQ(ErrnoOf(bad.status()), EOPNOTSUPP);
  EXPECT_THAT(bad.status().message(), HasSubstr("not an io_uring instance"));
  ::close(not_a_ring);
  // Closed now: the same, with the kernel's EBADF.
  bad = FixedBuffers::Attach(*rt, not_a_ring);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_EQ(ErrnoOf(bad.status()), EBADF);
  EXPECT_THAT(bad.status().message(), HasSubstr("not an io_uring instance"));
  TestRing fresh;
  bad = FixedBuffers::Attach(*rt, fresh.fd(), {.mode = static_cast<FixedBufferMode>(7)});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  EXPECT_THAT(bad.status().message(), HasSubstr("unknown mode 7"));
  // Nothing is left observing: memory still comes and goes.
  absl::StatusOr<Buffer> b = rt->Allocate(4096);
  EXPECT_TRUE(b.ok()) << b.status();
}

TEST(FixedBuffers, DetachUnregistersAndTheRingCanBeAttachedAgain) {
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*rt, ring.fd());
    ASSERT_TRUE(fixed.ok()) << fixed.status();
  }
  EXPECT_EQ(io_uring_register_buffers_sparse(&ring.ring, 4), 0) << "no table is left";
}

// External memory is held by the runtime's kernel pin table (a slot there) but is no fixed
// buffer of a program's ring: Find says so before the kernel would fail the I/O, and a
// whole-table clone made while it is registered does not keep its frames in the slot that
// the next buffer gets once it is unregistered.
TEST_P(FixedBuffersTest, ExternalMemoryIsNoFixedBufferAndLeavesNoSlotBehind) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  PatternFile file(1 << 20, 31);
  for (bool registered_first : {true, false}) {
    SCOPED_TRACE(registered_first ? "registered before the attach" : "registered after");
    std::unique_ptr<Runtime> rt = OpenRuntime();
    ASSERT_NE(rt, nullptr);
    TestRing ring;
    ASSERT_TRUE(ring.ok);
    void* ext = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    ASSERT_NE(ext, MAP_FAILED);
    std::unique_ptr<FixedBuffers> fixed;
    const auto attach = [&] {
      absl::StatusOr<std::unique_ptr<FixedBuffers>> f =
          FixedBuffers::Attach(*rt, ring.fd(), {.mode = GetParam()});
      ASSERT_TRUE(f.ok()) << f.status();
      fixed = std::move(*f);
    };
    if (!registered_first) attach();
    absl::StatusOr<uint64_t> id = rt->RegisterExternal(ext, kPageSize2M);
    ASSERT_TRUE(id.ok()) << id.status();
    ASSERT_EQ(rt->kernel_pin_stats().slots_used, 1u) << "the kernel pin table holds it";
    if (registered_first) attach();
    ASSERT_NE(fixed, nullptr);
    EXPECT_EQ(fixed->Find(ext, 4096), -1);
    absl::StatusOr<int> why = fixed->IndexOf(ext, 4096);
    EXPECT_EQ(why.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(why.status().message(), HasSubstr("RegisterExternal"));
    EXPECT_EQ(fixed->slots_filled(), 0u);

    // Its slot goes to the next buffer, which reads through it.
    HUGEMM_ASSERT_OK(rt->UnregisterExternal(*id));
    absl::StatusOr<Buffer> b = rt->MapBuffer(kPageSize2M);
    ASSERT_TRUE(b.ok()) << b.status();
    const int index = fixed->Find(b->data(), 4096);
    ASSERT_GE(index, 0) << fixed->IndexOf(b->data(), 4096).status();
    EXPECT_EQ(ReadFixed(ring, file.fd(), b->data(), 4096, 8192, index), 4096);
    EXPECT_EQ(FirstMismatch(b->data(), 4096, 8192, file.seed()), -1);
    fixed.reset();
    ASSERT_EQ(::munmap(ext, kPageSize2M), 0);
  }
}

// A program that closes its ring before the detach, then makes a new ring, which takes the
// same descriptor number: the attachment holds the first ring by a descriptor of its own,
// so the new ring's table is neither written (memory that comes and goes) nor unregistered
// (the detach), and the first ring goes with the detach.
TEST_P(FixedBuffersTest, ARingClosedBeforeItsDetachLeavesTheNextRingOfItsNumberAlone) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  PatternFile file(1 << 20, 61);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  io_uring first;
  ASSERT_EQ(io_uring_queue_init(8, &first, 0), 0);
  const int number = first.ring_fd;
  const size_t fds_before = OpenFds();
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed =
      FixedBuffers::Attach(*rt, number, {.mode = GetParam()});
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ(OpenFds(), fds_before + 1) << "the attachment's own descriptor";
  io_uring_queue_exit(&first);
  TestRing second(8);
  ASSERT_TRUE(second.ok);
  ASSERT_EQ(second.fd(), number) << "a new descriptor takes the lowest free number";
  // The new ring's own table: one buffer of the program's, in slot 0, which the runtime's
  // first range takes in its table too.
  alignas(4096) static uint8_t own[8192];
  iovec iov{own, sizeof(own)};
  ASSERT_EQ(io_uring_register_buffers(&second.ring, &iov, 1), 0);
  absl::StatusOr<Buffer> b = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(rt->kernel_pin_table().Find(b->data(), 1), 0);
  EXPECT_EQ((*fixed)->Find(b->data(), 4096), 0);
  EXPECT_EQ(ReadFixed(second, file.fd(), own, 4096, 4096, 0), 4096)
      << "the new ring's slot 0 is still the program's buffer";
  EXPECT_EQ(FirstMismatch(own, 4096, 4096, file.seed()), -1);
  HUGEMM_ASSERT_OK(b->Free());
  ::testing::internal::CaptureStderr();
  fixed->reset();
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "") << "the first ring's table went";
  EXPECT_EQ(OpenFds(), fds_before) << "the first ring went with the detach";
  EXPECT_EQ(ReadFixed(second, file.fd(), own, 4096, 8192, 0), 4096)
      << "the detach left the new ring's table";
  EXPECT_EQ(FirstMismatch(own, 4096, 8192, file.seed()), -1);
}

// A runtime, and a ring made with IORING_SETUP_SINGLE_ISSUER on this thread (so this
// thread is its submitter) with the runtime's fixed buffers; detached and ended in that
// order, before the runtime closes.
struct SingleIssuerRing {
  explicit SingleIssuerRing(FixedBufferMode mode) : rt(OpenRuntime()) {
    if (rt == nullptr || io_uring_queue_init(8, &ring, IORING_SETUP_SINGLE_ISSUER) != 0) return;
    made = true;
    absl::StatusOr<std::unique_ptr<FixedBuffers>> f =
        FixedBuffers::Attach(*rt, ring.ring_fd, {.mode = mode});
    attach = f.status();
    if (f.ok()) fixed = std::move(*f);
  }
  ~SingleIssuerRing() {
    fixed.reset();
    if (made) io_uring_queue_exit(&ring);
  }
  bool ok() const { return fixed != nullptr; }

  std::unique_ptr<Runtime> rt;
  io_uring ring{};
  bool made = false;
  absl::Status attach = absl::UnknownError("no runtime or no ring");
  std::unique_ptr<FixedBuffers> fixed;
};

// A ring made with IORING_SETUP_SINGLE_ISSUER takes registrations from its submitter only:
// memory another thread maps is refused, and the message says why.
TEST_P(FixedBuffersTest, ASingleIssuerRingRefusesOtherThreadsMemoryAndSaysWhy) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  SingleIssuerRing si(GetParam());
  ASSERT_TRUE(si.ok()) << si.attach;
  absl::Status other;
  std::thread([&] { other = si.rt->MapBuffer(kPageSize2M).status(); }).join();
  EXPECT_FALSE(other.ok());
  EXPECT_THAT(other.message(), HasSubstr("IORING_SETUP_SINGLE_ISSUER")) << other;
  absl::StatusOr<Buffer> own = si.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_GE(si.fixed->Find(own->data(), 4096), 0);
  HUGEMM_ASSERT_OK(own->Free());
}

// A single-issuer ring's slots are emptied by its submitter only, so a buffer freed on
// another thread would stay registered (its huge page held by the ring) after the unmap:
// that free and the trim are refused, saying why, with the buffer left as it was; the
// submitter's own free then gives the huge page back.
TEST_P(FixedBuffersTest, ASingleIssuerRingsMemoryIsFreedOnItsSubmitterOnly) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  SingleIssuerRing si(GetParam());
  ASSERT_TRUE(si.ok()) << si.attach;
  const int64_t free_before = FreeHugePages(kPageSize2M);
  absl::StatusOr<Buffer> own = si.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(own.ok()) << own.status();
  std::byte* const data = own->data();
  absl::Status by_buffer, by_runtime;
  std::thread([&] {
    by_buffer = own->Free();
    by_runtime = si.rt->Free(data);
  }).join();
  for (const absl::Status& st : {by_buffer, by_runtime}) {
    EXPECT_EQ(ErrnoOf(st), EEXIST) << st;
    EXPECT_THAT(st.message(), HasSubstr("IORING_SETUP_SINGLE_ISSUER")) << st;
    EXPECT_THAT(st.message(), HasSubstr("free of the buffer at")) << st;
  }
  ASSERT_EQ(own->data(), data) << "the refused free left the Buffer its buffer";
  EXPECT_GE(si.fixed->Find(data, 4096), 0) << "and the ring its slot";
  // An allocation freed on the submitter, its pool then trimmed from the other thread.
  absl::StatusOr<Buffer> pooled = si.rt->Allocate(kPageSize2M);
  ASSERT_TRUE(pooled.ok()) << pooled.status();
  HUGEMM_ASSERT_OK(pooled->Free());
  size_t trimmed = 1;
  std::thread([&] { trimmed = si.rt->allocator().Shrink(); }).join();
  EXPECT_EQ(trimmed, 0u) << "another thread gave back an extent the ring still holds";
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before - 2);
  HUGEMM_ASSERT_OK(own->Free());
  EXPECT_GT(si.rt->allocator().Shrink(), 0u);
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before) << "the ring kept a freed huge page";
}

// The last pin of a freed buffer dropping on a thread a single-issuer ring refuses: the
// memory goes (nothing could hear a refusal) but the ring keeps the slot and its frame,
// which stderr says; the submitter's next allocation empties it.
TEST_P(FixedBuffersTest, ASlotASingleIssuerRingKeptIsEmptiedByItsSubmittersNextCall) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  SingleIssuerRing si(GetParam());
  ASSERT_TRUE(si.ok()) << si.attach;
  const int64_t free_before = FreeHugePages(kPageSize2M);
  absl::StatusOr<Buffer> own = si.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(own.ok()) << own.status();
  FolioSpan span;
  absl::StatusOr<size_t> pinned = si.rt->pinner().PinFolios(own->data(), 4096, kGupPin, {&span, 1});
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  HUGEMM_ASSERT_OK(own->Free());  // on the submitter: allowed, and waits for the pin
  ::testing::internal::CaptureStderr();
  std::thread([&] { si.rt->pinner().UnpinFolios({&span, 1}, RefKind::kPin); }).join();
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(said, HasSubstr(absl::StrCat("ring ", si.ring.ring_fd, " keeps buffer slot")));
  EXPECT_THAT(said, HasSubstr("IORING_SETUP_SINGLE_ISSUER"));
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before - 1) << "the ring holds the frame";
  absl::StatusOr<Buffer> next = si.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before - 1) << "the kept slot was not emptied";
  HUGEMM_ASSERT_OK(next->Free());
  EXPECT_EQ(FreeHugePages(kPageSize2M), free_before);
}

// Two rings on one runtime, one cloned and one of iovecs, while another thread maps and
// frees buffers (each a slot filled and emptied in both tables): reads through either
// ring into a buffer held throughout land whole, and the new buffers are fixed buffers of
// both rings. At the end both tables hold exactly the runtime's memory.
TEST(FixedBuffers, TwoRingsFollowTheMemoryWhileAnotherThreadChangesIt) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  PatternFile file(4 << 20, 53);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring1, ring2;
  absl::StatusOr<std::unique_ptr<IoRing>> io1 =
      IoRing::Attach(*rt, ring1.fd(), {.fixed = {.mode = FixedBufferMode::kClone}});
  absl::StatusOr<std::unique_ptr<IoRing>> io2 =
      IoRing::Attach(*rt, ring2.fd(), {.fixed = {.mode = FixedBufferMode::kIovec}});
  ASSERT_TRUE(io1.ok()) << io1.status();
  ASSERT_TRUE(io2.ok()) << io2.status();
  absl::StatusOr<Buffer> held = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(held.ok()) << held.status();

  std::atomic<bool> stop{false};
  std::atomic<int> churned{0}, missing{0};
  std::thread churn([&] {
    while (!stop.load()) {
      absl::StatusOr<Buffer> b = rt->MapBuffer(kPageSize4K, {.backing = BackingKind::kAnon});
      if (!b.ok()) {
        ++missing;
        continue;
      }
      if ((*io1)->fixed().Find(b->data(), 4096) < 0 || (*io2)->fixed().Find(b->data(), 4096) < 0) {
        ++missing;
      }
      (void)b->Free();
      ++churned;
    }
  });
  // The reads in a function of their own: a failed assertion returns from it, and the
  // churning thread is stopped and joined all the same. As many as the churn needs (on a
  // slow machine more than the file has 8K reads: the offsets wrap, each read whole).
  auto read_all = [&] {
    for (int i = 0; i < 200 || churned.load() < 200; ++i) {
      TestRing& ring = i % 2 == 0 ? ring1 : ring2;
      IoRing& io = i % 2 == 0 ? **io1 : **io2;
      const size_t at = (i * 12288) % (kPageSize2M - 8192);
      const uint64_t off = (uint64_t{4096} * i) % ((4 << 20) - 4096);
      std::memset(held->data() + at, 0, 8192);
      HUGEMM_ASSERT_OK(
          io.PrepareRead(io_uring_get_sqe(&ring.ring), file.fd(), held->data() + at, 8192, off, i));
      ASSERT_EQ(io_uring_submit(&ring.ring), 1);
      io_uring_cqe cqe = ring.Wait();
      ASSERT_EQ(cqe.res, 8192) << "read " << i << " at " << off;
      ASSERT_TRUE(io.Complete(&cqe).ok());
      ASSERT_EQ(FirstMismatch(held->data() + at, 8192, off, file.seed()), -1) << "read " << i;
    }
  };
  read_all();
  stop = true;
  churn.join();
  if (HasFatalFailure()) return;
  EXPECT_EQ(missing.load(), 0) << "a new buffer was no fixed buffer of a ring";
  EXPECT_EQ((*io1)->fixed().slots_filled(), rt->kernel_pin_stats().slots_used);
  EXPECT_EQ((*io2)->fixed().slots_filled(), rt->kernel_pin_stats().slots_used);
}

// Fixed buffers of a single-issuer ring dropped from a thread that is not its submitter:
// the kernel refuses the unregister, and the table stays. The destructor cannot return
// that; it says so on stderr.
TEST(FixedBuffers, AnUnregisterTheKernelRefusesIsReported) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  io_uring ring;
  ASSERT_EQ(io_uring_queue_init(8, &ring, IORING_SETUP_SINGLE_ISSUER), 0);
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*rt, ring.ring_fd);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  ::testing::internal::CaptureStderr();
  std::thread([&] { fixed->reset(); }).join();
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(said,
              HasSubstr(absl::StrCat("unregistering the fixed buffers of ring ", ring.ring_fd)));
  EXPECT_THAT(said, HasSubstr("IORING_SETUP_SINGLE_ISSUER"));
  EXPECT_EQ(io_uring_unregister_buffers(&ring), 0) << "the table was still registered";
  io_uring_queue_exit(&ring);
}

// A child of fork() shares the program's ring with its parent: its copy of the io objects
// going away leaves the parent's table as it is.
TEST(IoRing, AChildOfForkDroppingItsCopyLeavesTheParentsTable) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  PatternFile file(1 << 20, 41);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> b = rt->Allocate(64 << 10);
  ASSERT_TRUE(b.ok()) << b.status();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    io->reset();
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  HUGEMM_ASSERT_OK(
      (*io)->PrepareRead(io_uring_get_sqe(&ring.ring), file.fd(), b->data(), 4096, 8192, 1));
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.res, 4096) << "the parent's fixed buffer is still registered";
  EXPECT_EQ(FirstMismatch(b->data(), 4096, 8192, file.seed()), -1);
  HUGEMM_ASSERT_OK((*io)->Complete(&cqe).status());
}

// --- per-I/O pins: a buffer freed with its I/O in flight ------------------------------

class InFlightTest : public ::testing::TestWithParam<bool> {};  // true: read, false: write

TEST_P(InFlightTest, AFreedBufferIsHandedToNobodyUntilTheCompletion) {
  const bool read = GetParam();
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
  constexpr unsigned kLength = 2 << 20;
  constexpr uint64_t kOffset = 4 << 20;
  PatternFile file(8 << 20, 23);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  const AllocOptions uninitialized{.zero = false};

  // Without a pin the allocator hands a freed 2M folio straight back out: the test can
  // see reuse.
  {
    absl::StatusOr<Buffer> a = rt->Allocate(kLength, uninitialized);
    ASSERT_TRUE(a.ok()) << a.status();
    std::byte* was = a->data();
    HUGEMM_ASSERT_OK(a->Free());
    absl::StatusOr<Buffer> b = rt->Allocate(kLength, uninitialized);
    ASSERT_TRUE(b.ok());
    ASSERT_EQ(b->data(), was) << "the control: an unpinned freed folio is reused at once";
  }

  absl::StatusOr<Buffer> buf = rt->Allocate(kLength, uninitialized);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  const uint64_t pfn = HeadPfn(*rt, data);
  if (read) {
    std::memset(data, 0, kLength);
  } else {
    FillPattern(data, kLength, kOffset, 99);  // what the write must put in the file
  }
  Gate gate;
  gate.Arm(&ring.ring);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  HUGEMM_ASSERT_OK(read ? (*io)->PrepareRead(sqe, file.fd(), data, kLength, kOffset, 77)
                        : (*io)->PrepareWrite(sqe, file.fd(), data, kLength, kOffset, 77));
  ASSERT_EQ(io_uring_submit(&ring.ring), 2);
  EXPECT_EQ((*io)->in_flight(), 1u);

  // Freed with the I/O in flight: out of the shadow table at once, memory held.
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_FALSE(rt->Translate(data).has_value());
  std::vector<Buffer> others;
  std::set<uint64_t> pfns;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<Buffer> b = rt->Allocate(kLength);  // zeroed: would wreck a write
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_NE(b->data(), data);
    pfns.insert(HeadPfn(*rt, b->data()));
    others.push_back(std::move(*b));
  }
  for (int i = 0; i < 64; ++i) {
    absl::StatusOr<Buffer> b = rt->Allocate(32 << 10);
    ASSERT_TRUE(b.ok());
    EXPECT_FALSE(b->data() >= data && b->data() < data + kLength) << "a piece of it went out";
    others.push_back(std::move(*b));
  }
  EXPECT_EQ(pfns.count(pfn), 0u) << "the in-flight PFN was handed to a new owner";
  EXPECT_FALSE(ring.Ready()) << "the gate holds the I/O";

  gate.Open();
  for (int done = 0; done < 2;) {
    io_uring_cqe cqe = ring.Wait();
    if (cqe.user_data == Gate::kUserData) {
      ++done;
      continue;
    }
    ASSERT_EQ(cqe.res, static_cast<int>(kLength));
    if (read) {
      // The data landed in the folio that was freed, still untouched by anyone else.
      EXPECT_EQ(FirstMismatch(data, kLength, kOffset, file.seed()), -1);
    }
    absl::StatusOr<uint64_t> tag = (*io)->Complete(&cqe);
    ASSERT_TRUE(tag.ok()) << tag.status();
    EXPECT_EQ(*tag, 77u);
    EXPECT_EQ((*io)->Complete(&cqe).status().code(), absl::StatusCode::kNotFound)
        << "completed twice";
    ++done;
  }
  EXPECT_EQ((*io)->in_flight(), 0u);
  if (!read) {
    std::vector<uint64_t> back = file.ReadBack(kOffset, kLength);
    EXPECT_EQ(FirstMismatch(back.data(), kLength, kOffset, 99), -1)
        << "the write carried the freed buffer's data, not a new owner's zeroes";
  }
  // Reaped: the folio is back in its pool and the next allocation gets it.
  absl::StatusOr<Buffer> next = rt->Allocate(kLength, uninitialized);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->data(), data);
}

INSTANTIATE_TEST_SUITE_P(Directions, InFlightTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Read" : "Write"; });

TEST(InFlight, ALargeReadIntoAFreedMappedBufferLandsBeforeItsMemoryGoes) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
  constexpr unsigned kLength = 8 << 20;  // four folios under one I/O
  PatternFile file(kLength, 5);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> buf = rt->MapBuffer(kLength);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  std::set<uint64_t> inflight;
  for (size_t off = 0; off < kLength; off += kPageSize2M) inflight.insert(HeadPfn(*rt, data + off));
  Gate gate;
  gate.Arm(&ring.ring);
  HUGEMM_ASSERT_OK(
      (*io)->PrepareRead(io_uring_get_sqe(&ring.ring), file.fd(), data, kLength, 0, 1));
  ASSERT_EQ(io_uring_submit(&ring.ring), 2);
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_EQ(rt->kernel_pin_stats().slots_used, 1u) << "still held, still registered";
  absl::StatusOr<Buffer> other = rt->MapBuffer(kLength);
  ASSERT_TRUE(other.ok()) << other.status();
  for (size_t off = 0; off < kLength; off += kPageSize2M) {
    EXPECT_EQ(inflight.count(HeadPfn(*rt, other->data() + off)), 0u);
  }
  gate.Open();
  for (int done = 0; done < 2; ++done) {
    io_uring_cqe cqe = ring.Wait();
    if (cqe.user_data == Gate::kUserData) continue;
    ASSERT_EQ(cqe.res, static_cast<int>(kLength));
    EXPECT_EQ(FirstMismatch(data, kLength, 0, file.seed()), -1);
    HUGEMM_ASSERT_OK((*io)->Complete(&cqe).status());
  }
  EXPECT_EQ(rt->kernel_pin_stats().slots_used, 1u) << "the freed buffer went at the last unpin";
}

// Whether unregistering a ring's buffer table waits for the requests that use it, as
// kernels before 6.13 do.
bool UnregisterWaitsForRequests() {
  utsname u{};
  int major = 0, minor = 0;
  if (::uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return true;
  return major < 6 || (major == 6 && minor < 13);
}

// A ring detached with a read still in flight (a pipe read, which waits for data): the
// read's buffer, freed, is not handed to the next allocation, and the data that comes
// late lands in the old memory, not in a new owner's. Where the detach would wait for
// the read (before 6.13), the data comes before it, and the completion is never reaped.
TEST(InFlight, ADetachedRingKeepsTheMemoryOfItsIosInFlight) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  constexpr unsigned kLength = 2 << 20;
  constexpr char kLate[] = "late data";
  const bool data_first = UnregisterWaitsForRequests();
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  const AllocOptions uninitialized{.zero = false};
  absl::StatusOr<Buffer> buf = rt->Allocate(kLength, uninitialized);
  ASSERT_TRUE(buf.ok()) << buf.status();
  std::byte* data = buf->data();
  const uint64_t pfn = HeadPfn(*rt, data);
  std::memset(data, 0, 64);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  HUGEMM_ASSERT_OK(
      (*io)->PrepareRead(io_uring_get_sqe(&ring.ring), pipe_fds[0], data, kLength, 0, 1));
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  HUGEMM_ASSERT_OK(buf->Free());
  const auto send = [&] {
    ASSERT_EQ(::write(pipe_fds[1], kLate, sizeof(kLate)), static_cast<ssize_t>(sizeof(kLate)));
  };
  if (data_first) send();
  io->reset();  // the read not reaped, or still waiting for the pipe

  absl::StatusOr<Buffer> next = rt->Allocate(kLength, uninitialized);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_NE(next->data(), data);
  EXPECT_NE(HeadPfn(*rt, next->data()), pfn) << "the in-flight PFN was handed to a new owner";
  std::memset(next->data(), 'n', 64);
  if (!data_first) send();
  io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.res, static_cast<int>(sizeof(kLate)));
  EXPECT_EQ(std::memcmp(data, kLate, sizeof(kLate)), 0) << "the read landed where it was aimed";
  EXPECT_NE(std::memcmp(next->data(), kLate, sizeof(kLate)), 0) << "and not in the new owner's";
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

// A program that closes its ring with a read still in flight (from a pipe, waiting for
// data) and detaches after: the ring ends at the detach as the program's close would have
// ended it, with its requests cancelled. Unregistering its table first would wait for the
// read before 6.13, and the program can no longer reap or cancel it. Watched for 20 s:
// past that the pipe is fed, which ends a detach that waits, and the test fails.
TEST(InFlight, ARingClosedFirstEndsAtTheDetachWithoutWaitingForItsRequests) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  io_uring ring;
  ASSERT_EQ(io_uring_queue_init(8, &ring, 0), 0);
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.ring_fd);
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> buf = rt->Allocate(64 << 10);
  ASSERT_TRUE(buf.ok()) << buf.status();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  HUGEMM_ASSERT_OK(
      (*io)->PrepareRead(io_uring_get_sqe(&ring), pipe_fds[0], buf->data(), 4096, 0, 1));
  ASSERT_EQ(io_uring_submit(&ring), 1);
  io_uring_queue_exit(&ring);
  const size_t fds_attached = OpenFds();

  std::atomic<bool> detached{false};
  std::thread detach([&] {
    io->reset();
    detached = true;
  });
  for (int i = 0; i < 2000 && !detached.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool in_time = detached.load();
  if (!in_time) {
    ASSERT_EQ(::write(pipe_fds[1], "x", 1), 1);
  }
  detach.join();
  EXPECT_TRUE(in_time) << "the detach waited for the read of a ring the program had closed";
  EXPECT_EQ(OpenFds(), fds_attached - 1) << "the attachment's descriptor of the ring";
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

// The runtime closed (its ring detached first) with a read still in flight from a pipe:
// the late data lands in memory no new runtime hands out, and the kernel's pin on that
// memory goes with the completion.
TEST(InFlight, AReadOutlivingItsRuntimeLandsInMemoryNoOneElseHas) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  if (UnregisterWaitsForRequests()) GTEST_SKIP() << "the detach would wait for the read";
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  TestRing ring;
  const int64_t pinned_before = SettledVmPinKb();
  {
    std::unique_ptr<Runtime> rt = OpenRuntime();
    ASSERT_NE(rt, nullptr);
    absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
    ASSERT_TRUE(io.ok()) << io.status();
    absl::StatusOr<Buffer> b = rt->Allocate(64 << 10);
    ASSERT_TRUE(b.ok()) << b.status();
    HUGEMM_ASSERT_OK(
        (*io)->PrepareRead(io_uring_get_sqe(&ring.ring), pipe_fds[0], b->data(), 4096, 0, 1));
    ASSERT_EQ(io_uring_submit(&ring.ring), 1);
    HUGEMM_ASSERT_OK(b->Free());
    io->reset();
  }
  EXPECT_GT(VmPinKb(), pinned_before) << "the kernel still holds the read's memory";
  {
    std::unique_ptr<Runtime> rt = OpenRuntime();
    ASSERT_NE(rt, nullptr);
    std::vector<Buffer> bufs;
    for (int i = 0; i < 4; ++i) {
      absl::StatusOr<Buffer> b = i == 0 ? rt->MapBuffer(kPageSize2M) : rt->Allocate(64 << 10);
      ASSERT_TRUE(b.ok()) << b.status();
      std::memset(b->data(), 'z', b->size());
      bufs.push_back(std::move(*b));
    }
    ASSERT_EQ(::write(pipe_fds[1], "late data", 10), 10);
    EXPECT_EQ(ring.Wait().res, 10);
    for (const Buffer& b : bufs) {
      const auto* p = reinterpret_cast<const char*>(b.data());
      EXPECT_EQ(std::count(p, p + b.size(), 'z'), static_cast<ptrdiff_t>(b.size()));
    }
  }
  EXPECT_EQ(VmPinKb(), pinned_before) << "the read's memory outlived its completion";
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

std::atomic<uint64_t> g_ticks{0};

void OnTick(int) { g_ticks.fetch_add(1, std::memory_order_relaxed); }

// Fixed buffers dropped with a READ_FIXED of a pipe in flight, while a timer signal keeps
// arriving on the dropping thread. Before 6.13 the unregister waits for the read, and
// each signal ends that wait with EINTR; the table must be gone all the same once the
// destructor returns (else the program's ring keeps the runtime's memory pinned, and a
// table of its own is refused with EBUSY). The data comes only after many signals have
// hit the waiting thread, or once the drop is over (6.13 and later do not wait).
TEST(InFlight, DroppingFixedBuffersUnderASignalStormStillUnregistersTheTable) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  constexpr char kData[] = "data after the signals";
  constexpr uint64_t kSignalsWhileWaiting = 50;
  const bool waits = UnregisterWaitsForRequests();
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  ASSERT_TRUE(ring.ok);
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*rt, ring.fd());
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  absl::StatusOr<Buffer> buf = rt->Allocate(4096);
  ASSERT_TRUE(buf.ok()) << buf.status();
  const int index = (*fixed)->Find(buf->data(), 4096);
  ASSERT_GE(index, 0);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  io_uring_prep_read_fixed(sqe, pipe_fds[0], buf->data(), 4096, 0, index);
  io_uring_sqe_set_data64(sqe, 7);
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);

  std::atomic<bool> dropping{false};
  std::atomic<bool> dropped{false};
  std::atomic<uint64_t> ticks_at_drop{0};
  std::thread writer([&] {
    while (!dropping.load()) std::this_thread::yield();
    while (!dropped.load() && g_ticks.load() - ticks_at_drop.load() < kSignalsWhileWaiting) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    EXPECT_EQ(::write(pipe_fds[1], kData, sizeof(kData)), static_cast<ssize_t>(sizeof(kData)));
  });
  uint64_t ticks_during_drop = 0;
  {
    // SIGALRM every 2 ms without SA_RESTART (io_uring_register is not restarted either way).
    testing::ThreadTicker ticker(2'000'000, /*restart=*/false, OnTick);
    ticks_at_drop = g_ticks.load();
    dropping = true;
    fixed->reset();
    ticks_during_drop = g_ticks.load() - ticks_at_drop.load();
    dropped = true;
  }
  writer.join();
  if (waits) {
    EXPECT_GE(ticks_during_drop, kSignalsWhileWaiting)
        << "the unregister waited for the read through that many signals";
  }

  io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.user_data, 7u);
  EXPECT_EQ(cqe.res, static_cast<int>(sizeof(kData)));
  EXPECT_EQ(std::memcmp(buf->data(), kData, sizeof(kData)), 0);
  static char fresh[4096];
  iovec iov{fresh, sizeof(fresh)};
  EXPECT_EQ(io_uring_register_buffers(&ring.ring, &iov, 1), 0)
      << "the ring's old table is gone (-EBUSY: it is still registered)";
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
}

TEST(IoPins, TokensAreExactAndCapacityIsEnforced) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  EXPECT_EQ(IoPins::Create(*rt, 0).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<IoPins>> pins = IoPins::Create(*rt, 2);
  ASSERT_TRUE(pins.ok());
  absl::StatusOr<Buffer> b = rt->Allocate(64 << 10);
  ASSERT_TRUE(b.ok());
  absl::StatusOr<uint64_t> t1 = (*pins)->Pin(b->data(), 4096, true);
  absl::StatusOr<uint64_t> t2 = (*pins)->Pin(b->data() + 8192, 8192, false);
  ASSERT_TRUE(t1.ok() && t2.ok());
  EXPECT_NE(*t1, 0u);
  EXPECT_NE(*t1, *t2);
  EXPECT_TRUE(rt->pinner().MaybeDmaPinned(b->data()));
  EXPECT_EQ((*pins)->Pin(b->data(), 4096, false).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*pins)->Pin(b->data(), 0, false).status().code(), absl::StatusCode::kInvalidArgument);
  HUGEMM_ASSERT_OK((*pins)->Unpin(*t1));
  int local = 0;
  EXPECT_EQ((*pins)->Pin(&local, 4, false).status().code(), absl::StatusCode::kNotFound)
      << "not the runtime's memory";
  EXPECT_EQ((*pins)->Unpin(*t1).code(), absl::StatusCode::kNotFound) << "stale token";
  EXPECT_EQ((*pins)->Unpin(0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*pins)->Unpin(~uint64_t{0}).code(), absl::StatusCode::kNotFound);
  absl::StatusOr<uint64_t> t3 = (*pins)->Pin(b->data(), 4096, false);
  ASSERT_TRUE(t3.ok());
  EXPECT_NE(*t3, *t1) << "a reused record gets a new token";
  HUGEMM_ASSERT_OK((*pins)->Unpin(*t2));
  HUGEMM_ASSERT_OK((*pins)->Unpin(*t3));
  pins->reset();
  EXPECT_FALSE(rt->pinner().MaybeDmaPinned(b->data()));
  absl::StatusOr<FolioInfo> info = rt->FolioInfoAt(b->data());
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(info->has(FolioFlag::kDirty)) << "the device wrote through t1";
}

TEST(IoPins, AnIoOverManyFoliosIsPinnedWhole) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  absl::StatusOr<std::unique_ptr<IoPins>> pins = IoPins::Create(*rt, 4);
  ASSERT_TRUE(pins.ok());
  absl::StatusOr<Buffer> b = rt->MapBuffer(16 * kPageSize4K, {.backing = BackingKind::kAnon});
  ASSERT_TRUE(b.ok()) << b.status();
  absl::StatusOr<uint64_t> t = (*pins)->Pin(b->data(), 16 * kPageSize4K, true);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(rt->pinner().MaybeDmaPinned(b->data() + i * 4096));
  HUGEMM_ASSERT_OK((*pins)->Unpin(*t));
  for (int i = 0; i < 16; ++i) EXPECT_FALSE(rt->pinner().MaybeDmaPinned(b->data() + i * 4096));
}

// An I/O over more folios than a record holds inline costs room for the folios it meets,
// never for its length: one that runs far past the end of the memory is refused whole.
TEST(IoPins, AnIoPastTheEndOfItsMemoryIsRefusedWhole) {
  std::unique_ptr<Runtime> rt = OpenRuntime(/*kernel_pins=*/false);
  ASSERT_NE(rt, nullptr);
  absl::StatusOr<std::unique_ptr<IoPins>> pins = IoPins::Create(*rt, 4);
  ASSERT_TRUE(pins.ok());
  constexpr int kPages = 100;
  absl::StatusOr<Buffer> b = rt->MapBuffer(kPages * kPageSize4K, {.backing = BackingKind::kAnon});
  ASSERT_TRUE(b.ok()) << b.status();
  absl::StatusOr<uint64_t> t = (*pins)->Pin(b->data(), size_t{1} << 50, true);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound) << t.status();
  EXPECT_EQ((*pins)->in_flight(), 0u);
  for (int i = 0; i < kPages; ++i) {
    ASSERT_FALSE(rt->pinner().MaybeDmaPinned(b->data() + i * kPageSize4K)) << "page " << i;
  }
  t = (*pins)->Pin(b->data() + 100, kPages * kPageSize4K - 100, true);
  ASSERT_TRUE(t.ok()) << t.status();
  for (int i = 0; i < kPages; ++i) {
    EXPECT_TRUE(rt->pinner().MaybeDmaPinned(b->data() + i * kPageSize4K)) << "page " << i;
  }
  HUGEMM_ASSERT_OK((*pins)->Unpin(*t));
  for (int i = 0; i < kPages; ++i) {
    EXPECT_FALSE(rt->pinner().MaybeDmaPinned(b->data() + i * kPageSize4K)) << "page " << i;
  }
}

// io_uring's table has 16384 slots and a buffer takes one however small: the 16385th 4K
// buffer is refused with the limit named, the program's table holds all 16384, and a
// freed buffer's slot serves the next one, a fixed buffer like the rest.
TEST_P(FixedBuffersTest, SixteenThousandSmallBuffersFillTheTableAndTheNextIsRefused) {
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = AttachRing(*rt, ring);
  ASSERT_TRUE(io.ok()) << io.status();
  constexpr unsigned kSlots = api_internal::KernelPinTable::kMaxSlots;
  std::vector<Buffer> bufs;
  for (unsigned i = 0; i < kSlots; ++i) {
    absl::StatusOr<Buffer> b = rt->MapBuffer(kPageSize4K, {.backing = BackingKind::kAnon});
    ASSERT_TRUE(b.ok()) << "buffer " << i << ": " << b.status();
    bufs.push_back(std::move(*b));
  }
  EXPECT_EQ(rt->kernel_pin_stats().slots_used, kSlots);
  EXPECT_EQ((*io)->fixed().slots_filled(), kSlots);
  absl::StatusOr<Buffer> over = rt->MapBuffer(kPageSize4K, {.backing = BackingKind::kAnon});
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(), HasSubstr("kernel pin table full: 16384 of 16384"));
  EXPECT_THAT(over.status().message(), HasSubstr("however small"));
  bufs.erase(bufs.begin() + kSlots / 2);
  absl::StatusOr<Buffer> next = rt->MapBuffer(kPageSize4K, {.backing = BackingKind::kAnon});
  ASSERT_TRUE(next.ok()) << next.status();
  PatternFile file(1 << 20, 23);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  HUGEMM_ASSERT_OK((*io)->PrepareRead(sqe, file.fd(), next->data(), 4096, 8192, 1));
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  io_uring_cqe cqe = ring.Wait();
  EXPECT_EQ(cqe.res, 4096);
  ASSERT_TRUE((*io)->Complete(&cqe).ok());
  EXPECT_EQ(FirstMismatch(next->data(), 4096, 8192, 23), -1);
}

// A 2 GiB buffer of 1G pages is two registered buffers (io_uring takes at most 1 GiB per
// slot): I/Os land anywhere within either, the last page and a whole GiB among them; one
// across the boundary or past the end is refused before anything is pinned.
TEST_P(FixedBuffersTest, ABufferOfTwoGibIsTwoFixedBuffersUpToItsLastByte) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 2);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = AttachRing(*rt, ring);
  ASSERT_TRUE(io.ok()) << io.status();
  constexpr size_t kSize = 2 * kPageSize1G;
  absl::StatusOr<Buffer> b = rt->MapBuffer(kSize, {.page_size = kPageSize1G});
  ASSERT_TRUE(b.ok()) << b.status();
  std::byte* p = b->data();
  EXPECT_EQ((*io)->fixed().slots_filled(), 2u);
  PatternFile file(4 << 20, 31);
  struct Read {
    size_t at;
    unsigned length;
    uint64_t offset;
    int res;
  };
  // The whole GiB: a READ_FIXED that long, of which the file gives its 4 MiB.
  for (const Read& r :
       {Read{0, 4096, 4096, 4096}, Read{kPageSize1G - 4096, 4096, 0, 4096},
        Read{kPageSize1G, 1u << 30, 0, 4 << 20}, Read{kSize - (4 << 20), 4 << 20, 0, 4 << 20},
        Read{kSize - 4096, 4096, 8192, 4096}}) {
    SCOPED_TRACE(absl::StrCat("read at ", r.at, " of ", r.length));
    io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
    HUGEMM_ASSERT_OK((*io)->PrepareRead(sqe, file.fd(), p + r.at, r.length, r.offset, 1));
    EXPECT_EQ((*io)->fixed().Find(p + r.at, r.length), r.at < kPageSize1G ? 0 : 1);
    ASSERT_EQ(io_uring_submit(&ring.ring), 1);
    io_uring_cqe cqe = ring.Wait();
    EXPECT_EQ(cqe.res, r.res);
    ASSERT_TRUE((*io)->Complete(&cqe).ok());
    if (cqe.res > 0) {
      EXPECT_EQ(FirstMismatch(p + r.at, cqe.res, r.offset, 31), -1);
    }
  }
  io_uring_sqe sqe{};
  absl::Status across = (*io)->PrepareRead(&sqe, file.fd(), p + kPageSize1G - 4096, 8192, 0, 1);
  EXPECT_EQ(across.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(across.message(), HasSubstr("crosses a 1 GiB boundary"));
  absl::Status past = (*io)->PrepareWrite(&sqe, file.fd(), p + kSize - 4096, 8192, 0, 1);
  EXPECT_EQ(past.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(past.message(), HasSubstr("runs past the end"));
  EXPECT_EQ((*io)->in_flight(), 0u);
  EXPECT_FALSE(rt->pinner().MaybeDmaPinned(p + kPageSize1G - 4096));
  EXPECT_FALSE(rt->pinner().MaybeDmaPinned(p + kSize - 4096));
}

TEST(IoRing, PrepareRefusesWhatIsNoFixedBufferAndLeavesTheSqe) {
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  io_uring_sqe sqe{};
  sqe.user_data = 5;
  char stack[4096];
  absl::Status st = (*io)->PrepareRead(&sqe, 0, stack, sizeof(stack), 0, 1);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(st.message(), HasSubstr("no fixed buffer"));
  EXPECT_EQ(sqe.user_data, 5u);
  EXPECT_EQ((*io)->PrepareRead(nullptr, 0, stack, 1, 0, 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*io)->in_flight(), 0u);
  EXPECT_EQ((*io)->Complete(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  io_uring_cqe cqe{};
  cqe.user_data = 12345;
  EXPECT_EQ((*io)->Complete(&cqe).status().code(), absl::StatusCode::kNotFound);
  // Cancel gives back a prepared SQE's pins.
  absl::StatusOr<Buffer> b = rt->Allocate(4096);
  ASSERT_TRUE(b.ok());
  HUGEMM_ASSERT_OK((*io)->PrepareWrite(&sqe, 0, b->data(), 4096, 0, 9));
  EXPECT_EQ((*io)->in_flight(), 1u);
  absl::StatusOr<uint64_t> u = (*io)->Cancel(&sqe);
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(*u, 9u);
  EXPECT_EQ((*io)->in_flight(), 0u);
}

// A prepared I/O's token is given back by its completion (or cancel) alone, and a token
// of IoPins::Pin by Unpin alone: an Unpin of a prepared read would let its memory go while
// the device may still write it, and a completion carrying a Pin's token would leave the
// program's own Unpin of it failing. Each refusal leaves every pin where it was.
TEST(IoRing, ATokenIsGivenBackOnlyByTheCallOfItsKind) {
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> b = rt->Allocate(8192);
  ASSERT_TRUE(b.ok()) << b.status();
  auto pins = [&] { return rt->FolioInfoAt(b->data())->pincount; };
  const int32_t before = pins();

  io_uring_sqe sqe{};
  HUGEMM_ASSERT_OK((*io)->PrepareRead(&sqe, 0, b->data(), 4096, 0, 7));
  const uint64_t prepared = sqe.user_data;
  absl::StatusOr<uint64_t> pinned = (*io)->pins().Pin(b->data() + 4096, 4096, true);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  const int32_t held = pins();
  ASSERT_GT(held, before);

  absl::Status st = (*io)->pins().Unpin(prepared);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_THAT(st.message(), HasSubstr("is a prepared I/O"));
  io_uring_cqe cqe{};
  cqe.user_data = *pinned;
  absl::StatusOr<uint64_t> u = (*io)->Complete(&cqe);
  EXPECT_EQ(u.status().code(), absl::StatusCode::kNotFound) << u.status();
  EXPECT_THAT(u.status().message(), HasSubstr("is a pin of IoPins::Pin"));
  io_uring_sqe foreign{};
  foreign.user_data = *pinned;
  EXPECT_EQ((*io)->Cancel(&foreign).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pins(), held);
  EXPECT_EQ((*io)->in_flight(), 2u);

  HUGEMM_ASSERT_OK((*io)->pins().Unpin(*pinned));
  u = (*io)->Cancel(&sqe);
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(*u, 7u);
  EXPECT_EQ(pins(), before);
  EXPECT_EQ((*io)->in_flight(), 0u);
}

// The program's own SQEs share the ring with hugemm's: a CQE of one of them is never
// taken for an I/O of hugemm's, whatever its user_data (a small number, a number that
// looks like a token of generation and index, the address of the program's own object,
// tagged with the token's top bits), and the I/O in flight keeps its pins.
TEST(IoRing, ACqeOfTheProgramsOwnSqeIsNeverTakenForAnIo) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  PatternFile file(2 << 20, 31);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = IoRing::Attach(*rt, ring.fd());
  ASSERT_TRUE(io.ok()) << io.status();
  absl::StatusOr<Buffer> buf = rt->Allocate(1 << 20);
  ASSERT_TRUE(buf.ok()) << buf.status();
  auto pins = [&] { return rt->FolioInfoAt(buf->data())->pincount; };
  const int32_t before = pins();

  Gate gate;
  gate.Arm(&ring.ring);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  HUGEMM_ASSERT_OK((*io)->PrepareRead(sqe, file.fd(), buf->data(), 1 << 20, 0, 7));
  const uint64_t token = sqe->user_data;
  const int32_t held = pins();
  ASSERT_GT(held, before);

  uint64_t mine[2] = {0, 0};
  const auto own = reinterpret_cast<uintptr_t>(&mine[0]);
  const uint64_t top = token & ~((uint64_t{1} << 48) - 1);
  const std::vector<uint64_t> foreign = {1,
                                         42,
                                         uint64_t{1} << 32,
                                         (uint64_t{1} << 32) | 1,
                                         (uint64_t{2} << 32),
                                         own,
                                         own | top,
                                         own | (uint64_t{1} << 48),
                                         token ^ 8,
                                         token + (uint64_t{1} << 48),
                                         token & ((uint64_t{1} << 48) - 1),
                                         ~uint64_t{0}};
  for (uint64_t user_data : foreign) {
    io_uring_sqe* nop = io_uring_get_sqe(&ring.ring);
    io_uring_prep_nop(nop);
    io_uring_sqe_set_data64(nop, user_data);
  }
  ASSERT_EQ(io_uring_submit(&ring.ring), static_cast<int>(2 + foreign.size()));
  for (size_t i = 0; i < foreign.size(); ++i) {
    io_uring_cqe cqe = ring.Wait();
    ASSERT_NE(cqe.user_data, token) << "the gate holds the read";
    absl::StatusOr<uint64_t> u = (*io)->Complete(&cqe);
    EXPECT_EQ(u.status().code(), absl::StatusCode::kNotFound)
        << std::hex << cqe.user_data << " was taken for hugemm's I/O";
    EXPECT_EQ(pins(), held) << std::hex << cqe.user_data << " unpinned the read in flight";
  }
  EXPECT_EQ((*io)->in_flight(), 1u);

  gate.Open();
  for (int done = 0; done < 2; ++done) {
    io_uring_cqe cqe = ring.Wait();
    if (cqe.user_data == Gate::kUserData) continue;
    ASSERT_EQ(cqe.user_data, token);
    EXPECT_EQ(cqe.res, 1 << 20);
    absl::StatusOr<uint64_t> u = (*io)->Complete(&cqe);
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_EQ(*u, 7u);
  }
  EXPECT_EQ(pins(), before);
  EXPECT_EQ((*io)->in_flight(), 0u);
}

// A second ring's tokens name nothing of the first's, and each record's next token is
// another: a stale completion finds nothing.
TEST(IoPins, TokensOfTwoAreDisjointAndAReusedRecordGetsANewOne) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  absl::StatusOr<std::unique_ptr<IoPins>> a = IoPins::Create(*rt, 4);
  absl::StatusOr<std::unique_ptr<IoPins>> b = IoPins::Create(*rt, 4);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<Buffer> buf = rt->Allocate(64 << 10);
  ASSERT_TRUE(buf.ok());
  absl::StatusOr<uint64_t> ta = (*a)->Pin(buf->data(), 4096, false);
  absl::StatusOr<uint64_t> tb = (*b)->Pin(buf->data(), 4096, false);
  ASSERT_TRUE(ta.ok() && tb.ok());
  EXPECT_EQ((*a)->Unpin(*tb).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*b)->Unpin(*ta).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*a)->in_flight(), 1u);
  std::set<uint64_t> seen = {*ta};
  HUGEMM_ASSERT_OK((*a)->Unpin(*ta));
  // Round the records twice: every token new, every stale one refused.
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<uint64_t> t = (*a)->Pin(buf->data(), 4096, false);
    ASSERT_TRUE(t.ok());
    EXPECT_TRUE(seen.insert(*t).second) << std::hex << *t << " handed out twice";
    HUGEMM_ASSERT_OK((*a)->Unpin(*t));
    for (uint64_t old : seen) EXPECT_EQ((*a)->Unpin(old).code(), absl::StatusCode::kNotFound);
  }
  HUGEMM_ASSERT_OK((*b)->Unpin(*tb));
}

// Device-DAX memory as I/O buffers (in the VM, with HUGEMM_TEST_DAX): the runtime's table
// holds the device mapping, the program's ring uses it as fixed buffers in each mode, and
// a WRITE_FIXED out of it and a READ_FIXED back into another page of it carry the data.
// The target is the VM's null_blk disk when it has one, else a file.
class DevDaxIoTest : public EachMode {};

TEST_P(DevDaxIoTest, RealDevDaxBuffersAreFixedBuffersAndTheDataLands) {
  const std::string dax = TestDaxDevice();
  HUGEMM_NEED(!dax.empty(), "needs a device-DAX device in $HUGEMM_TEST_DAX (VM tests)");
  std::unique_ptr<Runtime> rt = OpenRuntime();
  ASSERT_NE(rt, nullptr);
  TestRing ring;
  absl::StatusOr<std::unique_ptr<IoRing>> io = AttachRing(*rt, ring);
  if (GetParam() == FixedBufferMode::kClone && absl::IsUnimplemented(io.status())) {
    GTEST_SKIP() << "this kernel cannot clone a table: " << io.status();
  }
  ASSERT_TRUE(io.ok()) << io.status();

  // Two device pages at the device's alignment (2M or 1G), so the write and the read
  // use different folios.
  const std::string align_file =
      "/sys/bus/dax/devices/" + dax.substr(dax.rfind('/') + 1) + "/align";
  absl::StatusOr<int64_t> align = sys::ReadInt(Os::Default(), align_file);
  ASSERT_TRUE(align.ok()) << align.status();
  const size_t length = 2 * static_cast<size_t>(*align);
  absl::StatusOr<Buffer> probe =
      rt->MapBuffer(length, {.backing = BackingKind::kDevDax, .devdax_path = dax});
  ASSERT_TRUE(probe.ok()) << probe.status();
  std::byte* const out = probe->data();
  std::byte* const in = probe->data() + length / 2;
  EXPECT_GE((*io)->fixed().Find(out, 1 << 20), 0);
  EXPECT_GE((*io)->fixed().Find(in, 1 << 20), 0);

  constexpr unsigned kLen = 1 << 20;
  constexpr uint64_t kOffset = 3 << 20;
  constexpr uint64_t kSeed = 0xda;
  std::unique_ptr<PatternFile> file;
  int fd = -1;
  const char* nullb = std::getenv("HUGEMM_TEST_NULL_BLK");
  if (nullb != nullptr && *nullb != '\0') {
    fd = ::open(nullb, O_RDWR | O_DIRECT);
    ASSERT_GE(fd, 0) << nullb << ": " << std::strerror(errno);
  } else {
    file = std::make_unique<PatternFile>(8 << 20, 1);
    fd = file->fd();
  }
  FillPattern(out, kLen, kOffset, kSeed);
  std::memset(in, 0, kLen);

  io_uring_sqe* sqe = io_uring_get_sqe(&ring.ring);
  HUGEMM_ASSERT_OK((*io)->PrepareWrite(sqe, fd, out, kLen, kOffset, 1));
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  io_uring_cqe cqe = ring.Wait();
  ASSERT_EQ(cqe.res, static_cast<int>(kLen)) << std::strerror(-cqe.res);
  ASSERT_TRUE((*io)->Complete(&cqe).ok());

  sqe = io_uring_get_sqe(&ring.ring);
  HUGEMM_ASSERT_OK((*io)->PrepareRead(sqe, fd, in, kLen, kOffset, 2));
  EXPECT_TRUE(rt->pinner().MaybeDmaPinned(in)) << "the read's pin on the device page";
  ASSERT_EQ(io_uring_submit(&ring.ring), 1);
  cqe = ring.Wait();
  ASSERT_EQ(cqe.res, static_cast<int>(kLen)) << std::strerror(-cqe.res);
  absl::StatusOr<uint64_t> tag = (*io)->Complete(&cqe);
  ASSERT_TRUE(tag.ok()) << tag.status();
  EXPECT_EQ(*tag, 2u);
  EXPECT_EQ(FirstMismatch(in, kLen, kOffset, kSeed), -1) << "the data read back";
  EXPECT_EQ((*io)->in_flight(), 0u);
  if (file == nullptr) ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Modes, DevDaxIoTest,
                         ::testing::Values(FixedBufferMode::kClone, FixedBufferMode::kIovec),
                         [](const auto& info) {
                           return info.param == FixedBufferMode::kClone ? "Clone" : "Iovec";
                         });

}  // namespace
}  // namespace hugemm::testing
