// The shadow table against the live kernel: real hugetlb 2M / 1G, 4K anon and (in the VM)
// device-DAX mappings verify clean; a deliberately wrong leaf is caught and named; memory
// the program mapped itself registers with the frames the kernel gave it.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "hugemm/pgtable.h"
#include "runtime/pgtable/pgtable_test_peer.h"
#include "runtime/sys/pagemap.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::pgtable_internal::PageTableTestPeer;
using ::testing::HasSubstr;

using ::hugemm::testing::kRW;

std::vector<std::unique_ptr<Folio>> FoliosOver(const Extent& e) {
  std::vector<std::unique_ptr<Folio>> out;
  for (size_t i = 0; i < e.page_count(); ++i) {
    out.push_back(std::make_unique<Folio>());
    InitFolioForPage(out.back().get(), e, i);
  }
  return out;
}

absl::StatusOr<Extent> MapExtent(BackingKind kind, size_t page_size, size_t pages,
                                 const std::string& dax = "") {
  absl::StatusOr<std::shared_ptr<Backing>> b =
      Backing::Create({.kind = kind, .page_size = page_size, .devdax_path = dax});
  if (!b.ok()) return b.status();
  return (*b)->Map({.length = pages * (*b)->page_size()});
}

std::string Joined(const VerifyReport& r) {
  std::string out;
  for (const VerifyMismatch& m : r.mismatches) out += m.what + "\n";
  return out;
}

// Maps each native page as a folio, verifies clean, and checks translations.
void MapAndVerify(const Extent& e) {
  ASSERT_TRUE(e.pfns_known()) << "pagemap must show PFNs (run as root)";
  auto folios = FoliosOver(e);
  PageTable table(DetectHostGeometry());
  for (auto& f : folios) HUGEMM_ASSERT_OK(table.Map(f.get(), f->data, kRW));
  absl::StatusOr<VerifyReport> r = table.Verify(e.data(), e.size());
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
  EXPECT_TRUE(r->pfns_checked);
  EXPECT_EQ(r->leaves_checked[e.page_size()], e.page_count());
  const size_t last = e.page_count() - 1;
  const size_t frame = e.page_size() > kPageSize4K ? 3 : 0;
  std::optional<Translation> t =
      table.Translate(e.data() + last * e.page_size() + frame * 4096 + 5);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->pfn, e.pfn(last) + frame);
  EXPECT_EQ(t->leaf_bytes, e.page_size());
  // The PFN-only batch reads the frame words: they hold the kernel's frames too.
  std::vector<const void*> vas;
  std::vector<uint64_t> want;
  for (size_t i = 0; i < e.page_count(); ++i) {
    for (size_t f : {size_t{0}, frame}) {
      vas.push_back(e.data() + i * e.page_size() + f * kPageSize4K + 9);
      want.push_back(e.pfn(i) + f);
    }
  }
  std::vector<uint64_t> pfns(vas.size());
  EXPECT_EQ(table.TranslatePfns(vas, absl::MakeSpan(pfns)), vas.size());
  EXPECT_EQ(pfns, want);
  for (auto& f : folios) HUGEMM_ASSERT_OK(table.Unmap(f->data, f->size()));
  for (auto& f : folios) EXPECT_EQ(f->refcount(), 1);
}

TEST(PageTableKernelTest, Hugetlb2MVerifies) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 4);
  HUGEMM_ASSERT_OK(e);
  MapAndVerify(*e);
}

TEST(PageTableKernelTest, Hugetlb1GVerifies) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize1G, 1);
  HUGEMM_ASSERT_OK(e);
  MapAndVerify(*e);
}

TEST(PageTableKernelTest, Anon4KVerifies) {
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 16);
  HUGEMM_ASSERT_OK(e);
  MapAndVerify(*e);
}

TEST(PageTableKernelTest, RealDevDaxVerifies) {
  const std::string dax = testing::TestDaxDevice();
  if (dax.empty()) GTEST_SKIP() << "HUGEMM_TEST_DAX names no device-DAX device";
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kDevDax, 0, 2, dax);
  HUGEMM_ASSERT_OK(e);
  MapAndVerify(*e);
}

// A folio carved from a huge page (an allocation smaller than it) is mapped inside that
// page by its natural leaves: no page-size mismatch, its frames held as the huge page's
// tails. A wrong PFN in it is still named.
TEST(PageTableKernelTest, FolioCarvedFromAHugePageVerifies) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 1);
  HUGEMM_ASSERT_OK(e);
  std::memset(e->data(), 0, e->size());
  std::vector<std::unique_ptr<Folio>> folios;
  PageTable table(DetectHostGeometry());  // goes first, dropping its folio references
  // 16K at 64K (four PTE leaves) and 4K at 1M.
  for (const auto& [offset, order] : {std::pair<size_t, int>{64 << 10, 2}, {1 << 20, 0}}) {
    auto f = std::make_unique<Folio>();
    f->order = static_cast<uint8_t>(order);
    f->data = e->data() + offset;
    f->head_pfn = e->pfn(0) + offset / kPageSize4K;
    f->counts.store(Folio::CountsWord(1, 0));
    HUGEMM_ASSERT_OK(table.Map(f.get(), f->data, kRW));
    folios.push_back(std::move(f));
  }
  absl::StatusOr<VerifyReport> r = table.Verify(e->data(), e->size());
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
  EXPECT_EQ(r->leaves_checked[kPageSize4K], 5u);
  EXPECT_TRUE(r->flags_checked);

  folios[0]->head_pfn += 1;  // the tamper
  r = table.Verify(e->data(), e->size());
  HUGEMM_ASSERT_OK(r);
  ASSERT_FALSE(r->ok());
  EXPECT_THAT(Joined(*r),
              HasSubstr(absl::StrFormat("%p: PFN recorded 0x%x, pagemap says 0x%x", folios[0]->data,
                                        e->pfn(0) + 17, e->pfn(0) + 16)));
  folios[0]->head_pfn -= 1;
  for (const auto& f : folios) HUGEMM_ASSERT_OK(table.Unmap(f->data, f->size()));
}

TEST(PageTableKernelTest, WrongPfnIsNamed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 1);
  HUGEMM_ASSERT_OK(e);
  auto folios = FoliosOver(*e);
  folios[0]->head_pfn += 512;  // the tamper
  PageTable table(DetectHostGeometry());
  HUGEMM_ASSERT_OK(table.Map(folios[0].get(), e->data(), kRW));
  absl::StatusOr<VerifyReport> r = table.Verify(e->data(), e->size());
  HUGEMM_ASSERT_OK(r);
  ASSERT_FALSE(r->ok());
  EXPECT_EQ(r->mismatches[0].va, reinterpret_cast<uintptr_t>(e->data()));
  EXPECT_THAT(r->mismatches[0].what,
              HasSubstr(absl::StrFormat("%p: PFN recorded 0x%x, pagemap says 0x%x", e->data(),
                                        e->pfn(0) + 512, e->pfn(0))));
  HUGEMM_ASSERT_OK(table.Unmap(e->data(), e->size()));
}

// One 2M hugetlb page, mapped as one folio in a fresh table.
class OneMapped2M : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
    absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, 1);
    HUGEMM_ASSERT_OK(e);
    extent_ = std::move(*e);
    folios_ = FoliosOver(extent_);
    HUGEMM_ASSERT_OK(table_.Map(folios_[0].get(), extent_.data(), kRW));
  }

  Extent extent_;
  std::vector<std::unique_ptr<Folio>> folios_;
  PageTable table_{DetectHostGeometry()};  // goes first, dropping its folio references
};

// A folio whose PFN changes after it was mapped: the frame word still holds the old
// (right) frame, and the verifier names both disagreements.
TEST_F(OneMapped2M, FrameWordThatDisagreesIsNamed) {
  const Extent& e = extent_;
  folios_[0]->head_pfn += 512;  // the tamper, behind the table's back
  absl::StatusOr<VerifyReport> r = table_.Verify(e.data(), e.size());
  HUGEMM_ASSERT_OK(r);
  ASSERT_EQ(r->mismatches.size(), 2u) << Joined(*r);
  EXPECT_THAT(r->mismatches[0].what,
              HasSubstr(absl::StrFormat("%p: the PMD leaf of 2M's frame word records PFN 0x%x, "
                                        "its folio says PFN 0x%x",
                                        e.data(), e.pfn(0), e.pfn(0) + 512)));
  EXPECT_THAT(r->mismatches[1].what, HasSubstr("pagemap says"));
  folios_[0]->head_pfn -= 512;
  r = table_.Verify(e.data(), e.size());
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
}

TEST_F(OneMapped2M, SplitLeafOverHugePageIsNamed) {
  const Extent& e = extent_;
  HUGEMM_ASSERT_OK(table_.Split(e.data()));
  absl::StatusOr<VerifyReport> r = table_.Verify(e.data(), e.size());
  HUGEMM_ASSERT_OK(r);
  ASSERT_EQ(r->mismatches.size(), 512u) << "every PTE leaf disagrees with the kernel's PMD";
  EXPECT_THAT(r->mismatches[0].what,
              HasSubstr(absl::StrFormat("%p: kernel maps 2M pages, shadow has a PTE leaf of 4K",
                                        e.data())));
  HUGEMM_ASSERT_OK(table_.Unmap(e.data(), e.size()));
  EXPECT_EQ(folios_[0]->refcount(), 1);
}

TEST(PageTableKernelTest, PmdLeafOver4KPagesIsNamed) {
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  absl::StatusOr<Extent> e = MapExtent(BackingKind::kAnon, kPageSize4K, 1024);
  HUGEMM_ASSERT_OK(e);
  const uintptr_t start = reinterpret_cast<uintptr_t>(e->data());
  const uintptr_t aligned = (start + kPageSize2M - 1) & ~(kPageSize2M - 1);
  auto folio = std::make_unique<Folio>();
  folio->order = 9;
  folio->data = reinterpret_cast<std::byte*>(aligned);
  folio->head_pfn = e->pfn((aligned - start) / kPageSize4K);
  folio->counts.store(Folio::CountsWord(1, 0));
  PageTable table(DetectHostGeometry());
  HUGEMM_ASSERT_OK(table.Map(folio.get(), folio->data, kRW));
  absl::StatusOr<VerifyReport> r = table.Verify(folio->data, kPageSize2M);
  HUGEMM_ASSERT_OK(r);
  ASSERT_FALSE(r->ok());
  EXPECT_EQ(r->mismatches[0].what,
            absl::StrFormat("0x%x: kernel maps 4K pages, shadow has a PMD leaf of 2M", aligned));
  HUGEMM_ASSERT_OK(table.Unmap(folio->data, kPageSize2M));
}

// `pages` 2M hugetlb pages of the program's own, faulted in, or nullptr.
std::byte* MapOwn2M(size_t pages) {
  void* p = ::mmap(nullptr, pages * kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

TEST(PageTableKernelTest, ExternalMapHugetlbBuffer) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  const size_t len = 2 * kPageSize2M;
  std::byte* const buf = MapOwn2M(2);
  ASSERT_NE(buf, nullptr);
  PageTable table(DetectHostGeometry());
  absl::StatusOr<uint64_t> id = table.RegisterExternal(buf, len);
  HUGEMM_ASSERT_OK(id);

  absl::StatusOr<std::vector<uint64_t>> pfns =
      sys::ReadPfnRange(Os::Default(), buf + kPageSize2M + 8192, 1);
  HUGEMM_ASSERT_OK(pfns);
  std::optional<Translation> t = table.Translate(buf + kPageSize2M + 8192);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->pfn, (*pfns)[0]);
  EXPECT_EQ(t->level, kPmdLevel);
  EXPECT_TRUE(t->folio->has_flag(kFolioBorrowed));
  EXPECT_EQ(t->folio->refcount(), 2) << "its region's reference and the mapping's";
  absl::StatusOr<VerifyReport> r = table.Verify(buf, len);
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
  EXPECT_EQ(r->leaves_checked[kPageSize2M], 2u);

  EXPECT_EQ(table.RegisterExternal(buf, len).status().code(), absl::StatusCode::kAlreadyExists);
  HUGEMM_ASSERT_OK(table.UnregisterExternal(*id));
  EXPECT_FALSE(table.Translate(buf).has_value());
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
  EXPECT_EQ(table.UnregisterExternal(*id).code(), absl::StatusCode::kNotFound);
  ::munmap(buf, len);
}

// The kernel's protection, VMA by VMA: nothing wider is ever mapped.
TEST(PageTableKernelTest, ExternalTakesTheKernelsProtection) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 3);
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  const size_t len = 3 * kPageSize2M;
  std::byte* const buf = MapOwn2M(3);
  ASSERT_NE(buf, nullptr);
  ASSERT_EQ(::mprotect(buf + kPageSize2M, kPageSize2M, PROT_READ), 0);
  ASSERT_EQ(::mprotect(buf + 2 * kPageSize2M, kPageSize2M, PROT_READ | PROT_EXEC), 0);
  PageTable table(DetectHostGeometry());
  absl::StatusOr<uint64_t> id = table.RegisterExternal(buf, len);
  HUGEMM_ASSERT_OK(id);
  std::vector<LogicalLeaf> leaves;
  table.Walk(buf, len, [&](const LogicalLeaf& l) { leaves.push_back(l); });
  ASSERT_EQ(leaves.size(), 3u);
  EXPECT_EQ(leaves[0].prot, kProtRead | kProtWrite);
  EXPECT_EQ(leaves[1].prot, kProtRead);
  EXPECT_EQ(leaves[2].prot, kProtRead | kProtExec);
  HUGEMM_ASSERT_OK(table.UnregisterExternal(*id));

  // Memory the program may not even read is refused, and nothing stays mapped.
  ASSERT_EQ(::mprotect(buf + kPageSize2M, kPageSize2M, PROT_NONE), 0);
  id = table.RegisterExternal(buf, len);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kPermissionDenied) << id.status();
  EXPECT_THAT(id.status().message(),
              HasSubstr(absl::StrFormat("%p", static_cast<void*>(buf + kPageSize2M))));
  EXPECT_FALSE(table.Translate(buf).has_value());
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
  ::munmap(buf, len);
}

// The hook before the mapping sees each page as it will be mapped, while nothing of the
// registration is in the table yet; its error refuses the registration.
TEST(PageTableKernelTest, ExternalBeforeMapSeesThePagesFirst) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  const size_t len = 2 * kPageSize2M;
  std::byte* const buf = MapOwn2M(2);
  ASSERT_NE(buf, nullptr);
  ASSERT_EQ(::mprotect(buf + kPageSize2M, kPageSize2M, PROT_READ), 0);
  PageTable table(DetectHostGeometry());
  struct Seen {
    std::byte* data;
    size_t size;
    Prot prot;
  };
  std::vector<Seen> seen;  // the descriptors live only as long as the call
  bool mapped_during = true;
  absl::StatusOr<uint64_t> id =
      table.RegisterExternal(buf, len, [&](absl::Span<const PageTable::ExternalPage> pages) {
        for (const PageTable::ExternalPage& page : pages)
          seen.push_back({page.folio->data, page.folio->size(), page.prot});
        mapped_during = table.Translate(buf).has_value();
        return absl::ResourceExhaustedError("no hold");
      });
  EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted) << id.status();
  EXPECT_EQ(id.status().message(), "no hold");
  EXPECT_FALSE(mapped_during);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].data, buf);
  EXPECT_EQ(seen[0].size, kPageSize2M);
  EXPECT_EQ(seen[0].prot, kProtRead | kProtWrite);
  EXPECT_EQ(seen[1].data, buf + kPageSize2M);
  EXPECT_EQ(seen[1].prot, kProtRead);
  EXPECT_FALSE(table.Translate(buf).has_value()) << "a refused registration stayed";
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);

  // Accepted, the same pages are mapped.
  id = table.RegisterExternal(buf, len, [](absl::Span<const PageTable::ExternalPage> pages) {
    return pages.size() == 2 ? absl::OkStatus() : absl::InternalError("pages");
  });
  HUGEMM_ASSERT_OK(id);
  EXPECT_TRUE(table.Translate(buf + kPageSize2M).has_value());
  HUGEMM_ASSERT_OK(table.UnregisterExternal(*id));
  ::munmap(buf, len);
}

// Memory the program changes behind the table's back after registering it: each change
// is named by Verify at the address it hit, and the registration still goes cleanly.
class ExternalChangedBehindTheTable : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, 3);
    HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
    void* p = ::mmap(nullptr, kLen, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    buf_ = static_cast<std::byte*>(p);
    absl::StatusOr<uint64_t> id = table_.RegisterExternal(buf_, kLen);
    HUGEMM_ASSERT_OK(id);
    id_ = *id;
    absl::StatusOr<VerifyReport> r = table_.Verify(buf_, kLen);
    HUGEMM_ASSERT_OK(r);
    ASSERT_TRUE(r->ok()) << Joined(*r);
  }
  void TearDown() override {
    if (buf_ != nullptr) ::munmap(buf_, kLen);
  }

  // The one mismatch Verify finds now, or "" when it finds none or several.
  std::string OnlyMismatch() {
    absl::StatusOr<VerifyReport> r = table_.Verify(buf_, kLen);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->mismatches.size() != 1) return r.ok() ? Joined(*r) : "";
    EXPECT_EQ(r->pfns_hidden, 0u);
    return r->mismatches[0].what;
  }

  static constexpr size_t kLen = 2 * kPageSize2M;
  PageTable table_{DetectHostGeometry()};
  std::byte* buf_ = nullptr;
  uint64_t id_ = 0;
};

TEST_F(ExternalChangedBehindTheTable, DroppedPageIsNamed) {
  ASSERT_EQ(::madvise(buf_ + kPageSize2M, kPageSize2M, MADV_DONTNEED), 0);
  // No frame in pagemap is not a hidden one (as under a PUD-mapped device-DAX leaf): the
  // huge page went back to the pool, and the table still records it.
  EXPECT_THAT(OnlyMismatch(), HasSubstr(absl::StrFormat("%p: PFN recorded", buf_ + kPageSize2M)));
  EXPECT_THAT(OnlyMismatch(), HasSubstr("pagemap shows no page"));
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
}

TEST_F(ExternalChangedBehindTheTable, OtherPageMappedOverItIsNamed) {
  // Another page moved over the first one: a frame the kernel cannot have handed back
  // (mapping anew at the address would likely get the very frame that was freed there).
  void* other = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  ASSERT_NE(other, MAP_FAILED);
  void* q = ::mremap(other, kPageSize2M, kPageSize2M, MREMAP_MAYMOVE | MREMAP_FIXED, buf_);
  ASSERT_EQ(q, buf_) << "mremap: errno " << errno;
  EXPECT_THAT(OnlyMismatch(), HasSubstr(absl::StrFormat("%p: PFN recorded", buf_)));
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
}

TEST_F(ExternalChangedBehindTheTable, UnmappedPageIsNamed) {
  ASSERT_EQ(::munmap(buf_ + kPageSize2M, kPageSize2M), 0);
  EXPECT_THAT(OnlyMismatch(),
              HasSubstr(absl::StrFormat("%p: the kernel maps nothing here", buf_ + kPageSize2M)));
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
}

// fork() shares a MAP_PRIVATE page copy-on-write: the first write after it gives the
// writer a copy, and the table still records the frame the child keeps. (MADV_DONTFORK
// on the range before fork keeps the frames the program's own.)
TEST_F(ExternalChangedBehindTheTable, CopyOnWriteAfterForkIsNamed) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);  // the copy
  int go[2];
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(go[1]);
    char c;
    (void)!::read(go[0], &c, 1);  // hold the shared page until the parent wrote
    ::_exit(0);
  }
  ::close(go[0]);
  buf_[5] = std::byte{1};
  EXPECT_THAT(OnlyMismatch(), HasSubstr(absl::StrFormat("%p: PFN recorded", buf_)));
  ::close(go[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
}

// A device must not get more than the program has: a WRITE pin would still be given.
TEST_F(ExternalChangedBehindTheTable, ProtectionNarrowedUnderItIsNamed) {
  ASSERT_EQ(::mprotect(buf_ + kPageSize2M, kPageSize2M, PROT_READ), 0);
  EXPECT_EQ(OnlyMismatch(), absl::StrFormat("%p: the kernel maps r--, shadow has a rw- PMD leaf "
                                            "of 2M",
                                            buf_ + kPageSize2M));
  // Narrower than the kernel is what Protect makes, and no mismatch.
  HUGEMM_ASSERT_OK(table_.Protect(buf_ + kPageSize2M, kPageSize2M, kProtRead));
  absl::StatusOr<VerifyReport> r = table_.Verify(buf_, kLen);
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
  HUGEMM_ASSERT_OK(table_.Protect(buf_, kPageSize2M, kProtRead));
  r = table_.Verify(buf_, kLen);
  HUGEMM_ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << Joined(*r);
  HUGEMM_ASSERT_OK(table_.UnregisterExternal(id_));
}

// Two mappings of one hugetlbfs file: each registers on its own, with the same frames,
// and unregistering one leaves the other whole.
TEST(PageTableKernelTest, ExternalSecondMappingOfAFileSharesItsFrames) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "no 2M hugetlbfs mount");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  HUGEMM_NEED(sys::CanReadPfns(Os::Default()), "pagemap hides PFNs from this process");
  std::string path = mount + "/pgtable_kernel_test_XXXXXX";
  const int fd = ::mkstemp(path.data());
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::ftruncate(fd, kPageSize2M), 0);
  void* a = ::mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  void* b = ::mmap(nullptr, kPageSize2M, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  ASSERT_NE(a, MAP_FAILED);
  ASSERT_NE(b, MAP_FAILED);
  {
    PageTable table(DetectHostGeometry());
    absl::StatusOr<uint64_t> ia = table.RegisterExternal(a, kPageSize2M);
    absl::StatusOr<uint64_t> ib = table.RegisterExternal(b, kPageSize2M);
    HUGEMM_ASSERT_OK(ia);
    HUGEMM_ASSERT_OK(ib);
    std::optional<Translation> ta = table.Translate(a);
    std::optional<Translation> tb = table.Translate(b);
    ASSERT_TRUE(ta.has_value() && tb.has_value());
    EXPECT_EQ(ta->pfn, tb->pfn);
    EXPECT_NE(ta->folio, tb->folio) << "each registration has its own descriptors";
    table.Walk(b, kPageSize2M, [](const LogicalLeaf& l) {
      EXPECT_EQ(l.prot, kProtRead) << "the second mapping's protection, not the first's";
    });
    HUGEMM_ASSERT_OK(table.UnregisterExternal(*ia));
    EXPECT_FALSE(table.Translate(a).has_value());
    absl::StatusOr<VerifyReport> r = table.Verify(b, kPageSize2M);
    HUGEMM_ASSERT_OK(r);
    EXPECT_TRUE(r->ok()) << Joined(*r);
    EXPECT_EQ(r->leaves_checked[kPageSize2M], 1u);
    HUGEMM_ASSERT_OK(table.UnregisterExternal(*ib));
  }
  ::munmap(a, kPageSize2M);
  ::munmap(b, kPageSize2M);
}

TEST(PageTableKernelTest, ExternalRejectsWhatItCannotDescribe) {
  PageTable table(DetectHostGeometry());
  void* p =
      ::mmap(nullptr, 8 * kPageSize4K, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* buf = static_cast<std::byte*>(p);
  // Not faulted in: no frame to record.
  absl::StatusOr<uint64_t> id = table.RegisterExternal(buf, 8 * kPageSize4K);
  EXPECT_FALSE(id.ok());
  EXPECT_THAT(id.status().message(), HasSubstr(absl::StrFormat("%p", p)));
  ::munmap(p, 8 * kPageSize4K);
  // Memory the process does not map: page 0, which nothing maps. (A range unmapped just
  // now is no such memory: another thread, a sanitizer's allocator, may map it again and
  // unmap it while the call reads the process's mappings.)
  id = table.RegisterExternal(nullptr, kPageSize4K);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kNotFound) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("not mapped"));
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
}

}  // namespace
}  // namespace hugemm
