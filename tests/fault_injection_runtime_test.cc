// Fault injection, the Runtime's own paths on the real OS: registering external memory
// (which reads the kernel's view through the Os), the kernel long-term pin the Runtime
// holds on every buffer it maps or allocates, and a pin whose slow path populates
// unmapped memory from an allocator that must grow. Every OS call of the operation
// fails once, in turn (SweepFailures); after each run the status names the call that
// failed, or the failure was one the operation may absorb, and nothing is left behind:
// no mapping, descriptor or kernel pin, no registration or shadow mapping, no reference.
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "hugemm/geometry.h"
#include "hugemm/gup.h"
#include "hugemm/pgtable.h"
#include "hugemm/runtime.h"
#include "soak/footprint.h"
#include "tests/faulty_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::HasSubstr;

// What may fail without failing the operation: PFNs read as unknown, and the calls that
// give something back.
bool MayBeAbsorbed(OsCall call) {
  switch (call) {
    case OsCall::kOpen:
    case OsCall::kPread:
    case OsCall::kStat:
    case OsCall::kReadFile:
    case OsCall::kClose:
    case OsCall::kMunmap:
    case OsCall::kIoUringUnregisterBuffers:
    // Clearing a slot of the kernel pin table as memory goes; the same call adding memory
    // fails the operation, which the status check holds it to.
    case OsCall::kIoUringUpdateBuffers:
      return true;
    default:
      return false;
  }
}

// Sweeps `op`; after each failed run checks the status and that the process holds what
// it held before (descriptors, huge page mappings, VmPin) and the FaultyOs nothing.
void Sweep(FaultyOs& os, absl::FunctionRef<absl::Status()> op,
           absl::FunctionRef<void()> extra_check, int min_calls) {
  // Once first, so that what is read once and kept (the huge page sizes) is not counted.
  ASSERT_TRUE(op().ok());
  const soak::ProcessFootprint before = soak::ProcessFootprint::Now();
  // What the Runtime holds for its life (the kernel pin table's ring) stays.
  const size_t mapped_before = os.live_mapping_bytes();
  const std::set<int> fds_before = os.live_fds();
  int runs = 0;
  SweepFailures(os, ENOMEM, op, [&](const FailedRun& run) {
    ++runs;
    SCOPED_TRACE(absl::StrCat("call ", run.n, ": ", run.injected));
    if (run.status.ok()) {
      EXPECT_TRUE(MayBeAbsorbed(run.call)) << OsCallName(run.call) << " failed unnoticed";
    } else {
      EXPECT_THAT(run.status.message(), HasSubstr(run.injected));
    }
    EXPECT_EQ(os.live_mapping_bytes(), mapped_before) << "a mapping was left behind";
    EXPECT_EQ(os.live_fds(), fds_before) << "a descriptor was left open";
    EXPECT_EQ(before.Diff(soak::ProcessFootprint::Now()), "");
    extra_check();
  });
  EXPECT_GE(runs, min_calls) << "the operation made fewer calls than it should";
}

TEST(FaultInjectionRuntime, RegisterExternal) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  void* mem = mmap(nullptr, 2 * kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  HUGEMM_NEED(mem != MAP_FAILED, "needs 2M huge pages for its own mapping");
  std::memset(mem, 1, 2 * kPageSize2M);
  FaultyOs os(Os::Default());
  {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false, .os = &os});
    ASSERT_TRUE(rt.ok()) << rt.status();
    Sweep(
        os,
        [&]() -> absl::Status {
          absl::StatusOr<uint64_t> id = (*rt)->RegisterExternal(mem, 2 * kPageSize2M);
          if (!id.ok()) return id.status();
          EXPECT_TRUE((*rt)->Translate(mem).has_value());
          return (*rt)->UnregisterExternal(*id);
        },
        [&] { EXPECT_FALSE((*rt)->Translate(mem).has_value()) << "a registration was left"; },
        /*min_calls=*/2);
  }
  munmap(mem, 2 * kPageSize2M);
}

TEST(FaultInjectionRuntime, KernelPinOfMappedAndAllocatedBuffers) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  FaultyOs os(Os::Default());
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.os = &os});
  ASSERT_TRUE(rt.ok()) << rt.status();
  void* last = nullptr;
  auto nothing_mapped = [&] {
    if (last != nullptr) {
      EXPECT_FALSE((*rt)->Translate(last).has_value()) << "a shadow mapping was left";
    }
  };
  Sweep(
      os,
      [&]() -> absl::Status {
        absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(2 * kPageSize2M);
        if (!buf.ok()) return buf.status();
        last = buf->data();
        EXPECT_GT(soak::ProcessFootprint::Now(false).vm_pin_kb, 0) << "no kernel pin";
        return buf->Free();
      },
      nothing_mapped, /*min_calls=*/4);
  Sweep(
      os,
      [&]() -> absl::Status {
        absl::StatusOr<Buffer> buf = (*rt)->Allocate(kPageSize2M);
        absl::Status st = buf.status();
        if (buf.ok()) {
          last = buf->data();
          st = buf->Free();
        }
        // The pool it grew goes back, whatever happened: the sweep sees all of it.
        (*rt)->allocator().Shrink();
        return st;
      },
      nothing_mapped, /*min_calls=*/3);
}

// Maps a 2M folio from an allocator wherever the slow path finds nothing.
class AllocatingPopulator final : public Populator {
 public:
  explicit AllocatingPopulator(Allocator& alloc) : alloc_(alloc) {}
  absl::Status Populate(PageTable& table, uintptr_t va, bool) override {
    absl::StatusOr<FolioHandle> f = alloc_.Allocate(kPageSize2M, {});
    if (!f.ok()) return f.status();
    const uintptr_t at = va & ~(kPageSize2M - 1);
    if (absl::Status st =
            table.Map(f->folio(), reinterpret_cast<void*>(at), kProtRead | kProtWrite);
        !st.ok()) {
      return st;
    }
    held_.push_back({reinterpret_cast<void*>(at), std::move(*f)});
    return absl::OkStatus();
  }
  // Unmaps and frees everything it mapped.
  void Release(PageTable& table) {
    for (auto& [va, f] : held_) (void)table.Unmap(va, kPageSize2M);
    held_.clear();
  }
  size_t mapped() const { return held_.size(); }

 private:
  Allocator& alloc_;
  std::vector<std::pair<void*, FolioHandle>> held_;
};

TEST(FaultInjectionRuntime, SlowPathPinPopulatingFromAGrowingPool) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  FaultyOs os(Os::Default());
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create({.os = &os});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  PageTable table(X86_64Geometry(false), os);
  AllocatingPopulator populator(**alloc);
  Pinner pinner(table, {.populator = &populator});
  // An address range nothing maps, far from the process's own mappings: the table is a
  // shadow, so the populator's folios are entered at these addresses only there.
  const uintptr_t base = uintptr_t{1} << 45;
  Sweep(
      os,
      [&]() -> absl::Status {
        std::vector<FolioSpan> spans(4);
        absl::StatusOr<size_t> n = pinner.PinFolios(reinterpret_cast<void*>(base), 2 * kPageSize2M,
                                                    kGupPin | kGupWrite, absl::MakeSpan(spans));
        if (n.ok()) pinner.UnpinFolios(absl::MakeConstSpan(spans.data(), *n), RefKind::kPin);
        populator.Release(table);
        (*alloc)->Shrink();
        return n.status();
      },
      [&] {
        EXPECT_EQ(populator.mapped(), 0u);
        size_t mapped = 0;
        for (const PoolStats& p : (*alloc)->Stats()) mapped += p.mapped_bytes;
        EXPECT_EQ(mapped, 0u) << "a pool kept memory a folio still holds";
      },
      /*min_calls=*/3);
}

}  // namespace
}  // namespace hugemm::testing
