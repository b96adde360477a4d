// The IOVA mapper with the heap failing (tests/failing_heap.h) at each allocation in turn
// of its attach, of a buffer mapped and of one freed while it is attached, of its pin of
// DMA segments, and of its detach; over real huge pages, with a container that records
// its mappings (tests/recording_vfio.h: it stands for the IOMMU, so its own allocations
// are let through). A call that fails answers with a status (or throws std::bad_alloc, as
// a C++ call may) and changes nothing: no pin, no mapping in the container, no buffer half
// made or half freed; the same call succeeds after it. Whatever fails, once the mapper and
// the runtime are gone the container maps nothing, and the process holds what it held
// before: no huge page, no heap allocation (what a round leaves twice in a row is a leak).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/runtime.h"
#include "hugemm/vfio.h"
#include "tests/failing_heap.h"
#include "tests/recording_vfio.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

// The recording container, its own allocations let through.
class Iommu final : public RecordingVfio {
 public:
  absl::Status VfioMapDma(int fd, const void* va, size_t length, uint64_t iova) override {
    HeapFailuresPaused paused;
    return RecordingVfio::VfioMapDma(fd, va, length, iova);
  }
  absl::Status VfioUnmapDma(int fd, uint64_t iova, size_t length) override {
    HeapFailuresPaused paused;
    return RecordingVfio::VfioUnmapDma(fd, iova, length);
  }
};

// A call that returns a status, or throws std::bad_alloc: 0 when it succeeded, -1 when
// it failed for want of memory; any other failure fails the test.
template <typename Call>
long Try(Call call) {
  try {
    const absl::Status st = call();
    if (st.ok()) return 0;
    EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted) << st;
    return -1;
  } catch (const std::bad_alloc&) {
    return -1;
  }
}

enum class Step { kAttach, kMapBuffer, kFree, kPinSegments, kDetach };

class IovaMapperOutOfMemory : public ::testing::TestWithParam<Step> {
 protected:
  void SetUp() override {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "the sanitizers' allocators stand in for operator new";
#endif
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  }

  // Everything a round makes is its own, the container's records too.
  void Round(Step step, long k, bool exhausted, bool* hit) {
    Iommu iommu;
    absl::StatusOr<std::unique_ptr<Runtime>> opened = Runtime::Open({.kernel_pins = false});
    ASSERT_TRUE(opened.ok()) << opened.status();
    std::unique_ptr<Runtime> rt = std::move(*opened);
    // One buffer before the attach, which maps it.
    absl::StatusOr<Buffer> first = rt->MapBuffer(kPageSize2M);
    ASSERT_TRUE(first.ok()) << first.status();
    std::unique_ptr<IovaMapper> mapper;
    auto attach = [&] {
      absl::StatusOr<std::unique_ptr<IovaMapper>> m =
          IovaMapper::Attach(*rt, RecordingVfio::kContainer, {.os = &iommu});
      if (m.ok()) mapper = std::move(*m);
      return m.status();
    };
    auto pins = [&] {
      absl::StatusOr<FolioInfo> info = rt->FolioInfoAt(first->data());
      return info.ok() ? info->pincount : -1;
    };
    std::optional<Buffer> second;
    auto map_second = [&] {
      absl::StatusOr<Buffer> b = rt->MapBuffer(2 * kPageSize2M);
      if (b.ok()) second = std::move(*b);
      return b.status();
    };
    const char* what = "";
    HeapOutcome o;
    switch (step) {
      case Step::kAttach:
        what = "the attach";
        o = WithHeapFailing(k, exhausted, [&] { return Try(attach); });
        if (o.rc != 0) {
          EXPECT_EQ(mapper, nullptr);
          EXPECT_EQ(iommu.size(), 0u) << "a failed attach left mappings";
          HUGEMM_ASSERT_OK(attach());
        }
        EXPECT_EQ(iommu.size(), 1u);
        break;
      case Step::kMapBuffer:
        what = "a map with the mapper attached";
        HUGEMM_ASSERT_OK(attach());
        o = WithHeapFailing(k, exhausted, [&] { return Try(map_second); });
        if (o.rc != 0) {
          EXPECT_FALSE(second.has_value());
          EXPECT_EQ(iommu.size(), 1u) << "a failed map left its mapping in the container";
          HUGEMM_ASSERT_OK(map_second());
        }
        EXPECT_EQ(iommu.size(), 2u);
        EXPECT_TRUE(mapper->Iova(second->data()).has_value());
        break;
      case Step::kFree:
        what = "a free with the mapper attached";
        HUGEMM_ASSERT_OK(attach());
        HUGEMM_ASSERT_OK(map_second());
        o = WithHeapFailing(k, exhausted, [&] { return Try([&] { return second->Free(); }); });
        if (o.rc != 0) {
          EXPECT_TRUE(rt->FolioInfoAt(second->data()).ok()) << "a failed free unmapped it";
          EXPECT_EQ(iommu.size(), 2u);
          HUGEMM_ASSERT_OK(second->Free());
        }
        EXPECT_EQ(iommu.size(), 1u) << "a freed buffer is still in the container";
        break;
      case Step::kPinSegments: {
        what = "a pin of DMA segments";
        HUGEMM_ASSERT_OK(attach());
        std::vector<DmaSegment> segs(4);
        auto pin = [&] {
          absl::StatusOr<size_t> n = mapper->PinSegments(
              first->data() + 4096, 3 * 4096, kGupPin | kGupWrite, 0, absl::MakeSpan(segs));
          return n.status();
        };
        o = WithHeapFailing(k, exhausted, [&] { return Try(pin); });
        if (o.rc != 0) {
          EXPECT_EQ(pins(), 0) << "a failed pin kept a pin";
          HUGEMM_ASSERT_OK(pin());
        }
        EXPECT_EQ(pins(), 3);
        EXPECT_EQ(segs[0].phys_addr, *mapper->Iova(first->data() + 4096));
        HUGEMM_ASSERT_OK(rt->pinner().UnpinRange(first->data() + 4096, 3 * 4096, RefKind::kPin));
        break;
      }
      case Step::kDetach:
        what = "the detach";
        HUGEMM_ASSERT_OK(attach());
        o = WithHeapFailing(k, exhausted, [&] {
          mapper.reset();
          return 0L;
        });
        EXPECT_EQ(iommu.size(), 0u) << "the mapper went, its mappings stayed";
        break;
    }
    *hit = o.hit;
    EXPECT_EQ(pins(), 0) << what;
    mapper.reset();
    EXPECT_EQ(iommu.size(), 0u) << "mappings left after the mapper";
    second.reset();
    first = Buffer();
    rt.reset();
  }
};

TEST_P(IovaMapperOutOfMemory, EveryAllocationFailingInTurn) {
  EveryHeapFailure([this](long k, bool e, bool* hit) { Round(GetParam(), k, e, hit); },
                   FreeHugePagesSnapshot(kPageSize2M));
}

constexpr const char* kStepNames[] = {"Attach", "MapBuffer", "Free", "PinSegments", "Detach"};
INSTANTIATE_TEST_SUITE_P(Steps, IovaMapperOutOfMemory,
                         ::testing::Values(Step::kAttach, Step::kMapBuffer, Step::kFree,
                                           Step::kPinSegments, Step::kDetach),
                         [](const ::testing::TestParamInfo<Step>& info) {
                           return std::string(kStepNames[static_cast<int>(info.param)]);
                         });

}  // namespace
}  // namespace hugemm::testing
