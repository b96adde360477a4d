// Memory observers: told of every pool extent and buffer when it is mapped and before it
// is unmapped, in order, with replays for late observers and refusals unwound. On the
// fake machine (the bookkeeping) and on real huge pages (the runtime end to end).
#include "hugemm/memory_observer.h"

#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "hugemm/runtime.h"
#include "tests/fake_os.h"
#include "tests/test_util.h"

namespace hugemm::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Writes "name+<length>" and "name-<length>" to a shared log, and refuses the nth range
// it is told of when asked to.
class LoggingObserver : public MemoryObserver {
 public:
  LoggingObserver(std::string name, std::vector<std::string>* log, std::mutex* mu)
      : name_(std::move(name)), log_(log), mu_(mu) {}

  absl::Status MemoryAdded(const MemoryRange& r) override {
    std::lock_guard<std::mutex> lock(*mu_);
    if (++added_ == refuse_nth_) return absl::ResourceExhaustedError(name_ + " is full");
    log_->push_back(
        absl::StrCat(name_, "+", r.length >> 20, r.kind == MemoryRangeKind::kBuffer ? "b" : "e"));
    ranges_.push_back(r);
    return absl::OkStatus();
  }
  void MemoryRemoving(const MemoryRange& r) override {
    std::lock_guard<std::mutex> lock(*mu_);
    log_->push_back(
        absl::StrCat(name_, "-", r.length >> 20, r.kind == MemoryRangeKind::kBuffer ? "b" : "e"));
    std::erase_if(ranges_, [&](const MemoryRange& x) { return x.data == r.data; });
  }
  void RefuseNth(int n) {
    std::lock_guard<std::mutex> lock(*mu_);
    refuse_nth_ = added_ + n;
  }
  size_t held() const {
    std::lock_guard<std::mutex> lock(*mu_);
    return ranges_.size();
  }

 private:
  const std::string name_;
  std::vector<std::string>* log_;
  std::mutex* mu_;
  int added_ = 0;
  int refuse_nth_ = 0;
  std::vector<MemoryRange> ranges_;
};

class ObserverTest : public ::testing::Test {
 protected:
  std::unique_ptr<Runtime> Open() {
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.os = &os_});
    EXPECT_TRUE(rt.ok()) << rt.status();
    return std::move(*rt);
  }
  std::vector<std::string> TakeLog() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(log_, {});
  }

  FakeOs os_;
  std::mutex mu_;
  std::vector<std::string> log_;
  LoggingObserver a_{"a", &log_, &mu_};
  LoggingObserver b_{"b", &log_, &mu_};
};

TEST_F(ObserverTest, ToldInOrderAndRemovalsInReverse) {
  std::unique_ptr<Runtime> rt = Open();
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&a_));
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&b_));
  absl::StatusOr<Buffer> small = rt->Allocate(4096);
  ASSERT_TRUE(small.ok()) << small.status();
  absl::StatusOr<Buffer> buf = rt->MapBuffer(2 * kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_THAT(TakeLog(), ElementsAre("a+2e", "b+2e", "a+4b", "b+4b"));
  HUGEMM_ASSERT_OK(buf->Free());
  HUGEMM_ASSERT_OK(small->Free());
  EXPECT_THAT(TakeLog(), ElementsAre("b-4b", "a-4b")) << "the extent stays in its pool";
  EXPECT_EQ(rt->allocator().Shrink(), kPageSize2M);
  EXPECT_THAT(TakeLog(), ElementsAre("b-2e", "a-2e"));
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&b_));
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&a_));
}

TEST_F(ObserverTest, ALateObserverHearsOfWhatIsHeld) {
  std::unique_ptr<Runtime> rt = Open();
  absl::StatusOr<Buffer> small = rt->Allocate(64 << 10);
  absl::StatusOr<Buffer> buf = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(small.ok() && buf.ok());
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&a_));
  EXPECT_EQ(a_.held(), 2u);
  EXPECT_EQ(TakeLog().size(), 2u);
  EXPECT_EQ(rt->AddMemoryObserver(&a_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rt->AddMemoryObserver(nullptr).code(), absl::StatusCode::kInvalidArgument);
  // A late observer that refuses what is held is not added, and gives back what it took.
  b_.RefuseNth(2);
  absl::Status refused = rt->AddMemoryObserver(&b_);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(b_.held(), 0u);
  EXPECT_EQ(rt->RemoveMemoryObserver(&b_).code(), absl::StatusCode::kNotFound);
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&a_));
}

TEST_F(ObserverTest, ARefusalFailsTheAllocationAndUnwinds) {
  std::unique_ptr<Runtime> rt = Open();
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&a_));
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&b_));
  const size_t pinned = os_.pinned_bytes();
  const HugePagePool pool = os_.Pool(kPageSize2M);
  b_.RefuseNth(1);
  absl::StatusOr<Buffer> small = rt->Allocate(4096);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(small.status().message(), HasSubstr("b is full"));
  EXPECT_THAT(small.status().message(), HasSubstr("growing by 2 MiB"));
  EXPECT_THAT(TakeLog(), ElementsAre("a+2e", "a-2e"));
  EXPECT_EQ(os_.pinned_bytes(), pinned) << "the kernel pin table was told too";
  EXPECT_EQ(os_.Pool(kPageSize2M).free, pool.free) << "the extent was unmapped";
  b_.RefuseNth(1);
  absl::StatusOr<Buffer> buf = rt->MapBuffer(kPageSize2M);
  ASSERT_FALSE(buf.ok());
  EXPECT_THAT(TakeLog(), ElementsAre("a+2b", "a-2b"));
  EXPECT_EQ(os_.Pool(kPageSize2M).free, pool.free);
  // The next try works.
  absl::StatusOr<Buffer> again = rt->Allocate(4096);
  ASSERT_TRUE(again.ok()) << again.status();
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&b_));
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&a_));
}

TEST_F(ObserverTest, ABufferFreedWhilePinnedIsRemovedAtTheLastUnpin) {
  std::unique_ptr<Runtime> rt = Open();
  HUGEMM_ASSERT_OK(rt->AddMemoryObserver(&a_));
  absl::StatusOr<Buffer> buf = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok());
  absl::StatusOr<PinnedRange> pin = rt->pinner().Pin(buf->data(), 4096, kGupPin);
  ASSERT_TRUE(pin.ok()) << pin.status();
  TakeLog();
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_TRUE(TakeLog().empty()) << "still pinned: still held";
  EXPECT_EQ(a_.held(), 1u);
  pin->Release();
  EXPECT_THAT(TakeLog(), ElementsAre("a-2b"));
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&a_));
}

TEST(MemoryObserverOnAllocator, TheAllocatorTellsItsObserverDirectly) {
  FakeOs os;
  std::mutex mu;
  std::vector<std::string> log;
  LoggingObserver obs("x", &log, &mu);
  {
    absl::StatusOr<std::unique_ptr<Allocator>> alloc =
        Allocator::Create({.os = &os, .observer = &obs});
    ASSERT_TRUE(alloc.ok());
    absl::StatusOr<FolioHandle> f = (*alloc)->Allocate(kPageSize2M);
    ASSERT_TRUE(f.ok()) << f.status();
    absl::StatusOr<FolioHandle> g = (*alloc)->Allocate(4096);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(obs.held(), 2u);
  }
  // Both folios were back when the allocator went: its pools told the observer.
  EXPECT_EQ(obs.held(), 0u);
  EXPECT_EQ(log.size(), 4u);
}

TEST(MemoryObserverOnRealMemory, KernelPinsThenObserverThenRemovalInReverse) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  std::mutex mu;
  std::vector<std::string> log;
  LoggingObserver obs("x", &log, &mu);
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open();
  ASSERT_TRUE(rt.ok()) << rt.status();
  HUGEMM_ASSERT_OK((*rt)->AddMemoryObserver(&obs));
  absl::StatusOr<Buffer> buf = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ(obs.held(), 1u);
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 1u);
  HUGEMM_ASSERT_OK(buf->Free());
  EXPECT_EQ(obs.held(), 0u);
  EXPECT_EQ((*rt)->kernel_pin_stats().slots_used, 0u);
  HUGEMM_ASSERT_OK((*rt)->RemoveMemoryObserver(&obs));
}

}  // namespace
}  // namespace hugemm::testing
