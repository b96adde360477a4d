// Freed memory never reaches a new owner unzeroed, on real huge pages, along every path
// it can take back out: the same folio again (from the per-thread magazine or the pool),
// a piece of it (split), a folio merged from freed pieces, a pool that grew, a new
// mapped buffer, and memory that was freed while pinned and came back at the last unpin.
// Every owner dirties all of its memory before it lets go, so a page a later owner sees
// non-zero is one that reached it as the previous owner left it.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/runtime.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

constexpr size_t k2M = kPageSize2M;

// The offset of the first non-zero byte, or -1.
int64_t FirstDirty(const std::byte* p, size_t n) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < n / 8; ++i) {
    if (w[i] != 0) return static_cast<int64_t>(i * 8);
  }
  return -1;
}

void Dirty(Buffer& b) { std::memset(b.data(), 0xa5, b.size()); }

class ZeroingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(k2M, 16);
    absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
    ASSERT_TRUE(rt.ok()) << rt.status();
    rt_ = std::move(*rt);
  }

  // Allocates `count` folios of `bytes`, checks each reads zero, dirties them, frees them.
  void Cycle(size_t bytes, size_t count, const AllocOptions& options = {}) {
    std::vector<Buffer> held;
    for (size_t i = 0; i < count; ++i) {
      absl::StatusOr<Buffer> b = rt_->Allocate(bytes, options);
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(FirstDirty(b->data(), b->size()), -1)
          << bytes << "-byte folio " << i << " at " << static_cast<void*>(b->data())
          << " reached its owner unzeroed";
      Dirty(*b);
      held.push_back(std::move(*b));
    }
    for (Buffer& b : held) ASSERT_TRUE(b.Free().ok());
  }

  std::unique_ptr<Runtime> rt_;
};

TEST_F(ZeroingTest, TheSameFolioAgain) {
  for (int i = 0; i < 4; ++i) Cycle(k2M, 1);
}

TEST_F(ZeroingTest, PiecesOfAFreedFolioAndTheFolioMergedBack) {
  Cycle(k2M, 2);
  Cycle(kPageSize4K, 64);   // split from the freed 2M folios
  Cycle(64 << 10, 16);      // again, larger pieces
  Cycle(1 << 20, 4);        // halves
  Cycle(k2M, 2);            // merged back from the freed pieces
  Cycle(kPageSize4K, 600);  // more than one 2M folio's worth of 4K pieces
  Cycle(k2M, 2);
}

TEST_F(ZeroingTest, APoolThatGrew) {
  Cycle(k2M, 2);
  Cycle(k2M, 8);  // six folios from growth, two freed ones
  Cycle(kPageSize4K, 64);
}

TEST_F(ZeroingTest, AnonymousPieces) {
  const AllocOptions anon{.backing = BackingKind::kAnon, .page_size = 0};
  Cycle(kPageSize4K, 64, anon);
  Cycle(kPageSize4K, 64, anon);
}

TEST_F(ZeroingTest, ANewMappedBuffer) {
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Buffer> b = rt_->MapBuffer(2 * k2M);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(FirstDirty(b->data(), b->size()), -1) << "mapped buffer " << i;
    Dirty(*b);
    ASSERT_TRUE(b->Free().ok());
  }
}

TEST_F(ZeroingTest, MemoryFreedWhilePinnedComesBackZeroed) {
  absl::StatusOr<Buffer> b = rt_->Allocate(k2M);
  ASSERT_TRUE(b.ok()) << b.status();
  std::byte* const data = b->data();
  Dirty(*b);
  std::vector<FolioSpan> spans(1);
  absl::StatusOr<size_t> n =
      rt_->pinner().PinFolios(data, k2M, kGupPin | kGupWrite, absl::MakeSpan(spans));
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_TRUE(b->Free().ok());
  // Freed while pinned: nothing else may have it now, however much is asked for.
  Cycle(k2M, 4);
  Cycle(kPageSize4K, 64);
  rt_->pinner().UnpinFolios(absl::MakeConstSpan(spans.data(), *n), RefKind::kPin, true);
  // Back after the last unpin: whoever gets it next gets it zeroed.
  Cycle(k2M, 4);
  Cycle(kPageSize4K, 600);
}

}  // namespace
}  // namespace hugemm
