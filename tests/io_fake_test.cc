// A program ring's fixed buffers on the fake machine, on each kernel a clone can meet
// (none before 6.12, whole tables in 6.12, ranges from 6.13), and every failure of
// attaching unwound. The same on the real kernel: io_test.cc.
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/io.h"
#include "runtime/api/kernel_pin_table.h"
#include "tests/fake_os.h"
#include "tests/faulty_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clone = FakeMachine::Clone;

struct Machine {
  explicit Machine(FakeMachine machine) : os(std::move(machine)) {
    absl::StatusOr<std::unique_ptr<Runtime>> r = Runtime::Open({.os = &os});
    EXPECT_TRUE(r.ok()) << r.status();
    rt = std::move(*r);
    absl::StatusOr<int> fd = os.IoUringSetup(8);
    EXPECT_TRUE(fd.ok());
    ring = *fd;
  }
  ~Machine() {
    rt.reset();
    (void)os.Close(ring);
  }
  // The program ring's slot for `p`, through the runtime's index.
  iovec SlotOf(const void* p) {
    const int slot = rt->kernel_pin_table().Find(p, 1);
    return slot < 0 ? iovec{nullptr, 0} : os.RingSlotOf(ring, static_cast<unsigned>(slot));
  }

  FakeOs os;
  std::unique_ptr<Runtime> rt;
  int ring = -1;
};

TEST(FixedBuffersOnFake, RangedClonesShareEveryPinFrom613) {
  Machine s({.io_uring_clone = Clone::kRanges});
  absl::StatusOr<Buffer> before = s.rt->Allocate(4096);
  ASSERT_TRUE(before.ok());
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*s.rt, s.ring);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ((*fixed)->mode(), FixedBufferMode::kClone);
  absl::StatusOr<Buffer> mapped = s.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(s.SlotOf(before->data()).iov_len, kPageSize2M) << "the pool extent, cloned";
  EXPECT_EQ(s.SlotOf(mapped->data()).iov_base, mapped->data()) << "cloned when it came";
  EXPECT_EQ(s.os.pinned_bytes(), 2 * kPageSize2M) << "pinned once, by the runtime's ring";
  EXPECT_EQ((*fixed)->slots_filled(), 2u);
  const int slot = (*fixed)->Find(mapped->data(), 1);
  HUGEMM_ASSERT_OK(mapped->Free());
  EXPECT_EQ(s.os.RingSlotOf(s.ring, slot).iov_base, nullptr) << "gone from the program too";
  fixed->reset();
  EXPECT_EQ(s.os.RingSlotOf(s.ring, 0).iov_base, nullptr) << "detached: table unregistered";
}

TEST(FixedBuffersOnFake, On612TheCloneIsExtendedWithIovecs) {
  Machine s({.io_uring_clone = Clone::kWhole});
  absl::StatusOr<Buffer> before = s.rt->Allocate(4096);
  ASSERT_TRUE(before.ok());
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*s.rt, s.ring);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ((*fixed)->mode(), FixedBufferMode::kClone);
  EXPECT_EQ(s.os.pinned_bytes(), kPageSize2M);
  absl::StatusOr<Buffer> mapped = s.rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(s.SlotOf(mapped->data()).iov_base, mapped->data());
  EXPECT_EQ(s.os.pinned_bytes(), 3 * kPageSize2M) << "what came later is pinned again";
  HUGEMM_ASSERT_OK(mapped->Free());
  EXPECT_EQ(s.os.pinned_bytes(), kPageSize2M);
}

TEST(FixedBuffersOnFake, BeforeCloneExistsIovecsAreUsedOrCloneRefused) {
  Machine s({.io_uring_clone = Clone::kNone});
  absl::StatusOr<std::unique_ptr<FixedBuffers>> clone =
      FixedBuffers::Attach(*s.rt, s.ring, {.mode = FixedBufferMode::kClone});
  EXPECT_EQ(clone.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(clone.status().message(), HasSubstr("IORING_REGISTER_CLONE_BUFFERS"));
  absl::StatusOr<Buffer> before = s.rt->Allocate(4096);
  ASSERT_TRUE(before.ok());
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*s.rt, s.ring);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ((*fixed)->mode(), FixedBufferMode::kIovec);
  EXPECT_EQ(s.SlotOf(before->data()).iov_len, kPageSize2M) << "registered at attach";
  EXPECT_EQ(s.os.pinned_bytes(), 2 * kPageSize2M);
}

TEST(FixedBuffersOnFake, AProgramTableThatCannotTakeMemoryFailsTheAllocation) {
  // Iovec mode pins twice: RLIMIT_MEMLOCK is met by the program's ring first.
  Machine s({.memlock_bytes = 3 * kPageSize2M, .io_uring_clone = Clone::kNone});
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(*s.rt, s.ring);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  absl::StatusOr<Buffer> a = s.rt->Allocate(4096);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<Buffer> b = s.rt->MapBuffer(kPageSize2M);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("fixed buffers of ring"));
  EXPECT_THAT(b.status().message(), HasSubstr("RLIMIT_MEMLOCK"));
  EXPECT_EQ(s.os.pinned_bytes(), 2 * kPageSize2M) << "the runtime's pin was undone too";
  EXPECT_EQ(s.rt->kernel_pin_stats().slots_used, 1u);
}

TEST(FixedBuffersOnFake, RlimitMemlockNamesWhyTheMemoryIsPinnedAgain) {
  // A kernel that clones, but a runtime without kernel pins: nothing to clone, so iovecs.
  FakeOs os({.memlock_bytes = kPageSize2M, .io_uring_clone = Clone::kRanges});
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false, .os = &os});
  ASSERT_TRUE(rt.ok()) << rt.status();
  absl::StatusOr<int> ring = os.IoUringSetup(8);
  ASSERT_TRUE(ring.ok());
  absl::StatusOr<std::unique_ptr<FixedBuffers>> fixed = FixedBuffers::Attach(**rt, *ring);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_EQ((*fixed)->mode(), FixedBufferMode::kIovec);
  absl::StatusOr<Buffer> fits = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(fits.ok()) << fits.status();
  absl::StatusOr<Buffer> b = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("RLIMIT_MEMLOCK"));
  EXPECT_THAT(b.status().message(), HasSubstr("kernel pins are off"));
  EXPECT_THAT(b.status().message(), Not(HasSubstr("IORING_REGISTER_CLONE_BUFFERS")))
      << "this kernel has it";
  fixed->reset();
  (void)os.Close(*ring);
}

TEST(FixedBuffersOnFake, EveryFailureOfAttachLeavesNothingRegistered) {
  FakeOs fake;
  FaultyOs os(fake);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.os = &os});
  ASSERT_TRUE(rt.ok());
  absl::StatusOr<Buffer> a = (*rt)->Allocate(4096);
  absl::StatusOr<Buffer> b = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<int> ring = fake.IoUringSetup(8);
  ASSERT_TRUE(ring.ok());
  for (FixedBufferMode mode : {FixedBufferMode::kClone, FixedBufferMode::kIovec}) {
    const size_t registrations = os.live_registrations();
    const size_t pinned = fake.pinned_bytes();
    const std::set<int> fds = os.live_fds();
    int runs = 0;
    SweepFailures(
        os, ENOMEM,
        [&]() -> absl::Status {
          absl::StatusOr<std::unique_ptr<FixedBuffers>> f =
              FixedBuffers::Attach(**rt, *ring, {.mode = mode});
          if (!f.ok()) return f.status();
          EXPECT_EQ((*f)->slots_filled(), 2u);
          return absl::OkStatus();
        },
        [&](const FailedRun& run) {
          ++runs;
          if (!run.status.ok()) {
            EXPECT_THAT(run.status.message(), HasSubstr(run.injected));
          }
          EXPECT_EQ(os.live_registrations(), registrations) << OsCallName(run.call);
          EXPECT_EQ(os.live_fds(), fds) << "the attachment's descriptor of the ring";
          EXPECT_EQ(fake.pinned_bytes(), pinned);
          EXPECT_EQ(fake.RingSlotOf(*ring, 0).iov_base, nullptr);
        });
    EXPECT_GE(runs, 2);
  }
  (void)fake.Close(*ring);
}

}  // namespace
}  // namespace hugemm::testing
