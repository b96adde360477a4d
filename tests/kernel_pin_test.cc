// The kernel long-term pin holder registers real huge-page memory with io_uring: the
// kernel accounts it as pinned (VmPin) until the holder goes.
#include "hugemm/kernel_pin.h"

#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/gup_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::MapExtent;

// VmPin from /proc/self/status, in kB.
int64_t VmPinKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmPin:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

void ExpectPinned(const Extent& e, size_t buffers) {
  const int64_t before = VmPinKb();
  ASSERT_GE(before, 0);
  {
    absl::StatusOr<std::unique_ptr<KernelPinHolder>> h =
        KernelPinHolder::Create({{e.data(), e.size()}});
    HUGEMM_ASSERT_OK(h);
    EXPECT_EQ((*h)->bytes(), e.size());
    EXPECT_EQ((*h)->buffers(), buffers);
    EXPECT_EQ(VmPinKb() - before, static_cast<int64_t>(e.size() >> 10));
  }
  EXPECT_EQ(VmPinKb(), before);
}

TEST(KernelPinHolderTest, Hugetlb2M) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 4);
  HUGEMM_ASSERT_OK(e);
  ExpectPinned(*e, 1);
}

TEST(KernelPinHolderTest, Hugetlb1G) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize1G, 1);
  HUGEMM_ASSERT_OK(e);
  ExpectPinned(*e, 1);
}

TEST(KernelPinHolderTest, MoreThanOneGigabyteIsSplit) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 520);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 520);
  HUGEMM_ASSERT_OK(e);
  ExpectPinned(*e, 2);
}

TEST(KernelPinHolderTest, Anon4K) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 64);
  HUGEMM_ASSERT_OK(e);
  ExpectPinned(*e, 1);
}

TEST(KernelPinHolderTest, BadRegionsAreNamed) {
  EXPECT_EQ(KernelPinHolder::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KernelPinHolder::Create({{nullptr, 4096}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  alignas(4096) static char page[4096];
  EXPECT_EQ(KernelPinHolder::Create({{page + 1, 4096}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Not mapped: the kernel's EFAULT, explained.
  absl::StatusOr<std::unique_ptr<KernelPinHolder>> h =
      KernelPinHolder::Create({{reinterpret_cast<void*>(uintptr_t{1} << 46), 8192}});
  EXPECT_FALSE(h.ok());
  EXPECT_THAT(h.status().message(), ::testing::HasSubstr("kernel pin"));
}

}  // namespace
}  // namespace hugemm
