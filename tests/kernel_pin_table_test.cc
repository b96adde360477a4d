// The runtime's kernel pin table: one ring, a slot per extent or buffer (per GiB), the
// kernel's limits named. On the fake machine for the bookkeeping and the limits; on real
// huge pages for what the kernel does (VmPin, one descriptor, RLIMIT_MEMLOCK).
#include "runtime/api/kernel_pin_table.h"

#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/runtime.h"
#include "tests/fake_os.h"
#include "tests/faulty_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using api_internal::KernelPinTable;
using ::testing::HasSubstr;

MemoryRange RangeOf(const Extent& e, BackingKind kind = BackingKind::kHugetlb) {
  return {.data = e.data(), .length = e.size(), .page_size = e.page_size(), .backing = kind};
}

absl::StatusOr<Extent> FakeExtent(FakeOs& os, size_t bytes, size_t page = kPageSize2M) {
  absl::StatusOr<std::shared_ptr<Backing>> b =
      Backing::Create({.kind = BackingKind::kHugetlb, .page_size = page, .os = &os});
  if (!b.ok()) return b.status();
  return (*b)->Map({.length = bytes});
}

// --- the fake machine -----------------------------------------------------------------

TEST(KernelPinTableOnFake, ASlotPerRangeRegisteredUntilRemoved) {
  FakeOs os;
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table = KernelPinTable::Create(os, {.slots = 4});
  ASSERT_TRUE(table.ok()) << table.status();
  const int ring = (*table)->ring_fd();
  ASSERT_GE(ring, 0);
  absl::StatusOr<Extent> a = FakeExtent(os, 2 * kPageSize2M);
  absl::StatusOr<Extent> b = FakeExtent(os, kPageSize2M);
  ASSERT_TRUE(a.ok() && b.ok());
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*a)));
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*b)));
  EXPECT_EQ(os.pinned_bytes(), 3 * kPageSize2M);
  EXPECT_EQ(os.RingSlotOf(ring, 0).iov_base, a->data());
  EXPECT_EQ(os.RingSlotOf(ring, 0).iov_len, a->size());
  EXPECT_EQ(os.RingSlotOf(ring, 1).iov_base, b->data());
  EXPECT_EQ((*table)->Find(a->data() + kPageSize2M, kPageSize2M), 0);
  EXPECT_EQ((*table)->Find(b->data(), 4096), 1);
  EXPECT_EQ((*table)->Find(a->data() + kPageSize2M, kPageSize2M + 1), -1);
  EXPECT_THAT((*table)->WhyNoSlot(a->data() + kPageSize2M, kPageSize2M + 1),
              HasSubstr("runs past the end"));
  KernelPinTable::Stats s = (*table)->stats();
  EXPECT_EQ(s.used, 2u);
  EXPECT_EQ(s.pinned_bytes, 3 * kPageSize2M);
  EXPECT_EQ((*table)->MemoryAdded(RangeOf(*a)).code(), absl::StatusCode::kAlreadyExists);

  (*table)->MemoryRemoving(RangeOf(*a));
  EXPECT_EQ(os.pinned_bytes(), kPageSize2M);
  EXPECT_EQ(os.RingSlotOf(ring, 0).iov_base, nullptr);
  EXPECT_EQ((*table)->Find(a->data(), 1), -1);
  EXPECT_THAT((*table)->WhyNoSlot(a->data(), 1), HasSubstr("not memory of this hugemm runtime"));
  // The slot freed longest ago is handed out, not the one just freed: a stale index stays
  // empty in the kernel's table.
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*a)));
  EXPECT_EQ((*table)->Find(a->data(), 1), 2);
  EXPECT_EQ(os.RingSlotOf(ring, 0).iov_base, nullptr);
  EXPECT_EQ(os.RingSlotOf(ring, 2).iov_base, a->data());
  table->reset();
  EXPECT_EQ(os.pinned_bytes(), 0u);
  EXPECT_EQ(os.open_fds(), 0u) << "the ring is closed";
}

TEST(KernelPinTableOnFake, FullTableNamesTheLimit) {
  FakeOs os;
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table = KernelPinTable::Create(os, {.slots = 2});
  ASSERT_TRUE(table.ok());
  std::vector<Extent> extents;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Extent> e = FakeExtent(os, kPageSize2M);
    ASSERT_TRUE(e.ok());
    extents.push_back(std::move(*e));
  }
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(extents[0])));
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(extents[1])));
  absl::Status full = (*table)->MemoryAdded(RangeOf(extents[2]));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("kernel pin table full: 2 of 2"));
  EXPECT_THAT(full.message(), HasSubstr("16384 per ring"));
  EXPECT_THAT(full.message(), HasSubstr("Shrink"));
  EXPECT_THAT(full.message(), HasSubstr("kernel_pins off"));
  EXPECT_EQ(os.pinned_bytes(), 2 * kPageSize2M) << "a refused range pins nothing";
  EXPECT_EQ((*table)->Find(extents[2].data(), 1), -1);
}

TEST(KernelPinTableOnFake, MemlockLimitIsNamedAndNothingStaysPinned) {
  FakeOs os({.memlock_bytes = 3 * kPageSize2M});
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table = KernelPinTable::Create(os, {.slots = 8});
  ASSERT_TRUE(table.ok());
  absl::StatusOr<Extent> a = FakeExtent(os, 2 * kPageSize2M);
  absl::StatusOr<Extent> b = FakeExtent(os, 2 * kPageSize2M);
  ASSERT_TRUE(a.ok() && b.ok());
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*a)));
  absl::Status st = (*table)->MemoryAdded(RangeOf(*b));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(st.message(), HasSubstr("RLIMIT_MEMLOCK is too low to pin 4 MiB more beside the "
                                      "4 MiB pinned"));
  EXPECT_THAT(st.message(), HasSubstr("CAP_IPC_LOCK"));
  EXPECT_EQ(os.pinned_bytes(), 2 * kPageSize2M);
  EXPECT_EQ((*table)->stats().used, 1u) << "the refused range's slot is free again";
}

TEST(KernelPinTableOnFake, RangesOverAGigabyteTakeASlotPerGigabyte) {
  FakeOs os({.pools = {{kPageSize1G, 3}}});
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table = KernelPinTable::Create(os, {.slots = 8});
  ASSERT_TRUE(table.ok());
  absl::StatusOr<Extent> e = FakeExtent(os, 3 * kPageSize1G, kPageSize1G);
  ASSERT_TRUE(e.ok()) << e.status();
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*e)));
  EXPECT_EQ((*table)->stats().used, 3u);
  EXPECT_EQ((*table)->Find(e->data() + kPageSize1G, 4096), 1);
  EXPECT_EQ((*table)->Find(e->data() + 3 * kPageSize1G - 4096, 4096), 2);
  EXPECT_EQ((*table)->Find(e->data() + kPageSize1G - 4096, 8192), -1);
  EXPECT_THAT((*table)->WhyNoSlot(e->data() + kPageSize1G - 4096, 8192),
              HasSubstr("crosses a 1 GiB boundary"));
  EXPECT_EQ((*table)->SlotsOf(e->data()).size(), 3u);
  (*table)->MemoryRemoving(RangeOf(*e));
  EXPECT_EQ((*table)->stats().used, 0u);
  EXPECT_EQ(os.pinned_bytes(), 0u);
}

TEST(KernelPinTableOnFake, WithoutPinsSlotsAreNumberedAndNothingIsPinned) {
  FakeOs os;
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table =
      KernelPinTable::Create(os, {.slots = 1, .pin = false});
  ASSERT_TRUE(table.ok());
  EXPECT_EQ((*table)->ring_fd(), -1);
  EXPECT_EQ(os.open_fds(), 0u);
  absl::StatusOr<Extent> a = FakeExtent(os, kPageSize2M);
  absl::StatusOr<Extent> b = FakeExtent(os, kPageSize2M);
  ASSERT_TRUE(a.ok() && b.ok());
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*a)));
  EXPECT_EQ((*table)->Find(a->data(), 1), 0);
  // Out of slots, nothing pinned: the memory is accepted, only not a fixed buffer.
  HUGEMM_ASSERT_OK((*table)->MemoryAdded(RangeOf(*b)));
  EXPECT_EQ((*table)->Find(b->data(), 1), -1);
  EXPECT_THAT((*table)->WhyNoSlot(b->data(), 1), HasSubstr("kernel pin table full"));
  EXPECT_EQ(os.pinned_bytes(), 0u);
  EXPECT_EQ((*table)->stats().pinned_bytes, 0u);
}

TEST(KernelPinTableOnFake, BadInputIsRefused) {
  FakeOs os;
  EXPECT_EQ(KernelPinTable::Create(os, {.slots = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status too_many = KernelPinTable::Create(os, {.slots = 16385}).status();
  EXPECT_EQ(too_many.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_many.message(), HasSubstr("1 to 16384"));
  absl::StatusOr<std::unique_ptr<KernelPinTable>> table = KernelPinTable::Create(os, {.slots = 2});
  ASSERT_TRUE(table.ok());
  alignas(4096) static std::byte page[4096];
  EXPECT_EQ((*table)->MemoryAdded({.data = nullptr, .length = 4096}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*table)->MemoryAdded({.data = page + 1, .length = 4096}).code(),
            absl::StatusCode::kInvalidArgument);
  // Not mapped: the kernel's EFAULT, explained, and no slot taken.
  absl::Status unmapped = (*table)->MemoryAdded(
      {.data = reinterpret_cast<std::byte*>(uintptr_t{1} << 46), .length = 8192});
  EXPECT_EQ(unmapped.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(unmapped.message(), HasSubstr("not mapped"));
  EXPECT_EQ((*table)->stats().used, 0u);
  (*table)->MemoryRemoving({.data = page, .length = 4096});  // unknown: ignored
}

// The refusals keep the kernel's errno under their codes: the C API answers with it.
TEST(KernelPinTableOnFake, ARefusedRingKeepsTheKernelsErrno) {
  FakeOs fake;
  FaultyOs os(fake);
  os.FailEvery(OsCall::kIoUringSetup, EMFILE);
  absl::Status setup = KernelPinTable::Create(os, {.slots = 2}).status();
  EXPECT_EQ(setup.code(), absl::StatusCode::kUnavailable) << setup;
  EXPECT_EQ(ErrnoOf(setup), EMFILE) << setup;
  os.Reset();
  os.FailEvery(OsCall::kIoUringRegisterSparseBuffers, ENOMEM);
  absl::Status table = KernelPinTable::Create(os, {.slots = 2}).status();
  EXPECT_EQ(table.code(), absl::StatusCode::kResourceExhausted) << table;
  EXPECT_EQ(ErrnoOf(table), ENOMEM) << table;
  EXPECT_TRUE(os.live_fds().empty());
}

TEST(KernelPinTableOnFake, RuntimeOpenRefusesABadSlotCount) {
  FakeOs os;
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pin_slots = 0, .os = &os});
  EXPECT_EQ(rt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(os.open_fds(), 0u);
}

// --- real huge pages --------------------------------------------------------------------

TEST(KernelPinTable, ManyAllocationsShareOneRingAndASlotPerExtent) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 8);
  const size_t fds_before = OpenFds();
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = VmPinKb();
  std::vector<Buffer> bufs;
  for (int i = 0; i < 2048; ++i) {  // 8 MiB of 4K folios: extents of 2M, 2M and 4M
    absl::StatusOr<Buffer> b = (*rt)->Allocate(4096);
    ASSERT_TRUE(b.ok()) << b.status();
    bufs.push_back(std::move(*b));
  }
  EXPECT_EQ(OpenFds(), fds_before + 1) << "one ring for the whole runtime";
  const KernelPinStats s = (*rt)->kernel_pin_stats();
  EXPECT_EQ(s.slots, 16384u);
  EXPECT_EQ(s.slots_used, 3u);
  EXPECT_EQ(s.pinned_bytes, 4 * kPageSize2M);
  EXPECT_EQ(VmPinKb() - pinned_before, static_cast<int64_t>(4 * kPageSize2M / 1024));
  const KernelPinTable& table = (*rt)->kernel_pin_table();
  std::set<int> slots;
  for (const Buffer& b : bufs) {
    const int slot = table.Find(b.data(), b.size());
    ASSERT_GE(slot, 0) << table.WhyNoSlot(b.data(), b.size());
    slots.insert(slot);
  }
  EXPECT_EQ(slots.size(), 3u);
  // Freed folios stay in their pool and their extents stay registered until Shrink.
  bufs.clear();
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 3u);
  EXPECT_EQ((*rt)->allocator().Shrink(), 4 * kPageSize2M);
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 0u);
  EXPECT_EQ(VmPinKb(), pinned_before);
  rt->reset();
  EXPECT_EQ(OpenFds(), fds_before);
}

TEST(KernelPinTable, BufferOverAGigabyteTakesTwoSlotsAndUnpinsWhenFreed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 520);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  const int64_t pinned_before = VmPinKb();
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(520 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 2u);
  EXPECT_EQ(VmPinKb() - pinned_before, static_cast<int64_t>(520 * kPageSize2M / 1024));
  const KernelPinTable& table = (*rt)->kernel_pin_table();
  EXPECT_EQ(table.Find(buf->data() + kPageSize1G, 4096),
            table.Find(buf->data() + buf->size() - 1, 1));
  EXPECT_NE(table.Find(buf->data(), 1), table.Find(buf->data() + kPageSize1G, 1));
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 0u);
  EXPECT_EQ(VmPinKb(), pinned_before);
}

TEST(KernelPinTable, SmallAnonBuffersInOneGranuleAreFoundExactly) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  std::vector<Buffer> bufs;
  for (int i = 0; i < 8; ++i) {
    absl::StatusOr<Buffer> b = (*rt)->MapBuffer(3 * kPageSize4K, {.backing = BackingKind::kAnon});
    ASSERT_TRUE(b.ok()) << b.status();
    bufs.push_back(std::move(*b));
  }
  const KernelPinTable& table = (*rt)->kernel_pin_table();
  std::set<int> slots;
  for (const Buffer& b : bufs) {
    const int slot = table.Find(b.data() + 4096, 8192);
    ASSERT_GE(slot, 0);
    EXPECT_EQ(table.Find(b.data(), b.size() + 1), -1);
    slots.insert(slot);
  }
  EXPECT_EQ(slots.size(), bufs.size());
}

// Drops CAP_IPC_LOCK from this (child) process, so RLIMIT_MEMLOCK applies to io_uring.
bool DropIpcLock() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  data[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
  data[CAP_IPC_LOCK / 32].permitted &= ~(1u << (CAP_IPC_LOCK % 32));
  return syscall(SYS_capset, &header, data) == 0;
}

TEST(KernelPinTable, MemlockLimitWithoutIpcLockIsAClearError) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  HUGEMM_NEED(geteuid() == 0, "needs root to drop CAP_IPC_LOCK");
  // In a child: the capability and the limit are the process's own.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const rlimit lim{4 << 20, 4 << 20};
    if (!DropIpcLock() || setrlimit(RLIMIT_MEMLOCK, &lim) != 0) _exit(2);
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
    if (!rt.ok()) _exit(3);
    absl::StatusOr<Buffer> fits = (*rt)->MapBuffer(kPageSize2M);
    if (!fits.ok()) _exit(4);
    absl::StatusOr<Buffer> over = (*rt)->MapBuffer(2 * kPageSize2M);
    if (over.ok() || over.status().code() != absl::StatusCode::kResourceExhausted) _exit(5);
    const std::string msg(over.status().message());
    if (msg.find("RLIMIT_MEMLOCK (4 MiB) is too low") == std::string::npos ||
        msg.find("CAP_IPC_LOCK") == std::string::npos) {
      std::fprintf(stderr, "message: %s\n", msg.c_str());
      _exit(6);
    }
    // The allocator's path says the same, from the pool's growth.
    absl::StatusOr<Buffer> small = (*rt)->Allocate(4096);
    absl::StatusOr<Buffer> small2 = (*rt)->Allocate(kPageSize2M);
    if (small.ok() && small2.ok()) _exit(7);
    // The user's count (see the next test) has it back now, not when the exit gets to it.
    (void)fits->Free();
    rt->reset();
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: cannot drop CAP_IPC_LOCK; 3-7: see the test";
}

// The kernel checks RLIMIT_MEMLOCK against what all of the user's rings hold: a second
// runtime in the same process is refused with nothing pinned of its own, and the message
// says whose pins filled the limit rather than blaming 0 bytes. (Rings of other processes
// of the user, one just closed among them, count too: the first runtime fills whatever
// is left, and the second tries again should some come back meanwhile.)
TEST(KernelPinTable, MemlockLimitCountsEveryRingOfTheUser) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  HUGEMM_NEED(geteuid() == 0, "needs root to drop CAP_IPC_LOCK");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const rlimit lim{8 << 20, 8 << 20};  // the hard limit here, at most
    if (!DropIpcLock() || setrlimit(RLIMIT_MEMLOCK, &lim) != 0) _exit(2);
    absl::StatusOr<std::unique_ptr<Runtime>> first = Runtime::Open();
    absl::StatusOr<std::unique_ptr<Runtime>> second = Runtime::Open();
    if (!first.ok() || !second.ok()) _exit(3);
    std::vector<Buffer> held;
    for (int attempt = 0; attempt < 100; ++attempt) {
      // The first runtime takes what the limit leaves.
      while (held.size() < 4) {
        absl::StatusOr<Buffer> b = (*first)->MapBuffer(kPageSize2M);
        if (!b.ok()) break;
        held.push_back(std::move(*b));
      }
      if (held.empty() || held.size() == 4) _exit(4);
      absl::StatusOr<Buffer> over = (*second)->MapBuffer(kPageSize2M);
      if (over.ok()) continue;  // a closed ring's share came back
      if (over.status().code() != absl::StatusCode::kResourceExhausted) _exit(5);
      const std::string msg(over.status().message());
      if (msg.find("beside the 0 B pinned by this runtime") == std::string::npos ||
          msg.find("every ring of this user") == std::string::npos ||
          msg.find("this process has ") == std::string::npos ||
          msg.find("this process has 0 B") != std::string::npos) {
        std::fprintf(stderr, "message: %s\n", msg.c_str());
        _exit(6);
      }
      held.clear();
      first->reset();
      second->reset();
      _exit(0);
    }
    _exit(7);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: cannot drop CAP_IPC_LOCK; 3-7: see the test";
}

// With no RLIMIT_MEMLOCK at all even the ring is refused: the message names the limit and
// the ring, not an amount of memory to pin.
TEST(KernelPinTable, NoMemlockAtAllNamesTheRing) {
  HUGEMM_NEED(geteuid() == 0, "needs root to drop CAP_IPC_LOCK");
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const rlimit lim{0, 0};
    if (!DropIpcLock() || setrlimit(RLIMIT_MEMLOCK, &lim) != 0) _exit(2);
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
    if (rt.ok()) _exit(3);  // this kernel does not count the ring: nothing to check
    const std::string msg(rt.status().message());
    std::fprintf(stderr, "message: %s\n", msg.c_str());
    if (msg.find("RLIMIT_MEMLOCK (0 B) is too low for the io_uring ring") == std::string::npos ||
        msg.find("CAP_IPC_LOCK") == std::string::npos ||
        msg.find("to pin 0 B") != std::string::npos) {
      _exit(4);
    }
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  HUGEMM_NEED(WEXITSTATUS(status) != 3,
              "this kernel does not count an io_uring ring against RLIMIT_MEMLOCK");
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: cannot drop CAP_IPC_LOCK; 4: see the message";
}

}  // namespace
}  // namespace hugemm::testing
