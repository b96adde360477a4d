// GUP on a real device-DAX device ($HUGEMM_TEST_DAX, in the VM): pin everything with one
// reference operation per folio, segments follow the device's frames, long-term pins are
// allowed, and the kernel long-term pin holder accepts the memory.
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/gup.h"
#include "tests/gup_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::testing::MapAll;
using ::hugemm::testing::MapExtent;
using ::hugemm::testing::Mapped;
using ::hugemm::testing::TestDaxDevice;

std::unique_ptr<Mapped> MapDax(size_t pages) {
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kDevDax, 0, pages, TestDaxDevice());
  EXPECT_TRUE(e.ok()) << e.status();
  if (!e.ok()) return nullptr;
  absl::StatusOr<std::unique_ptr<Mapped>> m = MapAll(std::move(*e));
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

TEST(GupDevDaxTest, PinAllFoliosAndSegments) {
  HUGEMM_NEED(!TestDaxDevice().empty(), "HUGEMM_TEST_DAX is not set");
  std::unique_ptr<Mapped> m = MapDax(2);
  ASSERT_NE(m, nullptr);
  const auto base = m->Counts();
  Pinner pinner(*m->table);
  for (size_t i = 0; i < m->size(); i += kPageSize4K) m->data()[i] = std::byte{0x42};

  std::vector<PageRef> pages(m->pages4k());
  absl::StatusOr<size_t> n = pinner.PinPages(
      m->data(), pages.size(), kGupPin | kGupWrite | kGupLongterm, absl::MakeSpan(pages));
  ASSERT_TRUE(n.ok()) << n.status();
  for (size_t i = 0; i < *n; ++i) {
    ASSERT_EQ(pages[i].address(), m->data() + i * kPageSize4K);
    ASSERT_EQ(*pages[i].address(), std::byte{0x42});
  }
  for (auto& f : m->folios) EXPECT_EQ(f->pincount(), static_cast<int32_t>(f->nr_pages()));
  EXPECT_EQ(pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n), true), m->folios.size());
  EXPECT_EQ(m->Counts(), base);

  std::vector<DmaSegment> segs(m->pages4k());
  std::vector<FolioSpan> spans;
  n = pinner.PinSegments(m->data(), m->size(), kGupPin, 0, absl::MakeSpan(segs), &spans);
  if (!m->extent.pfns_known()) {
    // pagemap does not report PUD-mapped (1G) device-DAX frames: segments must say so
    // and take nothing.
    EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition) << n.status();
    EXPECT_NE(n.status().message().find("PFN"), std::string::npos) << n.status();
    EXPECT_EQ(m->Counts(), base);
    GTEST_SKIP() << "PFNs unknown for " << PageSizeName(m->extent.page_size())
                 << " device-DAX pages; page pins checked, segments refused as they should";
  }
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(segs[0].phys_addr, m->extent.pfn(0) << kPageShift);
  uint64_t total = 0;
  for (size_t i = 0; i < *n; ++i) total += segs[i].length;
  EXPECT_EQ(total, m->size());
  // Device memory is one physical range: one segment when the two pages are adjacent.
  if (m->extent.pfn(1) == m->extent.pfn(0) + m->extent.page_size() / kPageSize4K) {
    EXPECT_EQ(*n, 1u);
  }
  pinner.UnpinFolios(spans, RefKind::kPin);
  EXPECT_EQ(m->Counts(), base);
}

}  // namespace
}  // namespace hugemm
