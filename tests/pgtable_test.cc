// The shadow table over synthetic folios: every geometry, every leaf level, contiguous
// groups, splits, protection, device-exclusive entries, notifiers and error paths.
#include "hugemm/pgtable.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/pgtable/pgtable_test_peer.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::hugemm::pgtable_internal::PageTableTestPeer;
using ::hugemm::testing::FakeFolio;
using ::hugemm::testing::kBase;
using ::hugemm::testing::kBasePfn;
using ::hugemm::testing::kRW;
using ::hugemm::testing::Ptr;
using ::testing::HasSubstr;

std::vector<LogicalLeaf> Leaves(const PageTable& t, uintptr_t va, size_t len) {
  std::vector<LogicalLeaf> out;
  t.Walk(Ptr(va), len, [&](const LogicalLeaf& l) { out.push_back(l); });
  return out;
}

// One reference per entry: a contiguous group is `cont` entries.
int32_t EntriesMapping(const PageTable& t, uintptr_t va, size_t len) {
  int32_t n = 0;
  for (const LogicalLeaf& l : Leaves(t, va, len)) {
    n += l.cont ? t.geometry().cont_entries[l.level] : 1;
  }
  return n;
}

TEST(GeometryTest, Shapes) {
  const Geometry x4 = X86_64Geometry(false);
  EXPECT_EQ(x4.entry_bytes(kPmdLevel), kPageSize2M);
  EXPECT_EQ(x4.entry_bytes(kPudLevel), kPageSize1G);
  EXPECT_EQ(x4.va_bits(), 48);
  EXPECT_EQ(x4.LevelName(3), "PGD");
  const Geometry x5 = X86_64Geometry(true);
  EXPECT_EQ(x5.va_bits(), 57);
  EXPECT_EQ(x5.LevelName(3), "P4D");

  struct Want {
    size_t granule, folio;
    int level, cont;
  };
  for (const Want& w : std::vector<Want>{
           {4 << 10, 64 << 10, kPteLevel, 16},
           {4 << 10, 32 << 20, kPmdLevel, 16},
           {4 << 10, size_t{1} << 30, kPudLevel, 1},
           {16 << 10, 2 << 20, kPteLevel, 128},
           {16 << 10, 32 << 20, kPmdLevel, 1},
           {16 << 10, size_t{1} << 30, kPmdLevel, 32},
           {64 << 10, 2 << 20, kPteLevel, 32},
           {64 << 10, 512 << 20, kPmdLevel, 1},
           {64 << 10, size_t{16} << 30, kPmdLevel, 32},
       }) {
    absl::StatusOr<Geometry> g = Arm64Geometry(w.granule);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(g->va_bits(), 48) << g->name;
    absl::StatusOr<LeafUnit> u = NaturalUnit(*g, w.folio);
    ASSERT_TRUE(u.ok()) << u.status();
    EXPECT_EQ(u->level, w.level) << g->name << " " << PageSizeName(w.folio);
    EXPECT_EQ(u->cont, w.cont) << g->name << " " << PageSizeName(w.folio);
    EXPECT_EQ(u->leaf_bytes, w.folio);
  }
  EXPECT_FALSE(Arm64Geometry(8 << 10).ok());
  EXPECT_FALSE(NaturalUnit(*Arm64Geometry(16 << 10), 4 << 10).ok());
}

TEST(GeometryTest, HostIsX86) {
  const Geometry g = DetectHostGeometry();
  EXPECT_EQ(g.page_shift, 12);
  EXPECT_TRUE(g.levels == 4 || g.levels == 5) << g.name;
}

TEST(GeometryTest, EveryKnownGeometryIsValid) {
  for (const Geometry& g : testing::AllGeometries()) HUGEMM_ASSERT_OK(ValidateGeometry(g));
  HUGEMM_ASSERT_OK(ValidateGeometry(DetectHostGeometry()));
}

TEST(GeometryTest, AnInvalidGeometryGivesATableThatMapsNothing) {
  Geometry deep = X86_64Geometry(false);
  deep.levels = 7;
  Geometry wide_top = X86_64Geometry(false);
  wide_top.index_bits[3] = 10;
  Geometry odd_groups = X86_64Geometry(false);
  odd_groups.cont_entries[kPteLevel] = 12;
  Geometry odd_page = X86_64Geometry(false);
  odd_page.page_shift = 40;
  Geometry no_pte_leaves = X86_64Geometry(false);
  no_pte_leaves.leaf_ok[kPteLevel] = false;
  for (const auto& [g, why] : std::vector<std::pair<Geometry, std::string>>{
           {deep, "7 levels"},
           {wide_top, "a top level of 10 index bits"},
           {odd_groups, "contiguous groups of 12 entries"},
           {odd_page, "a base page not of 4K to 64K"},
           {no_pte_leaves, "no leaves at the PTE level"}}) {
    absl::Status st = ValidateGeometry(g);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << why;
    EXPECT_THAT(st.message(), HasSubstr(why));
    PageTable table(g);
    auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
    st = table.Map(f.get(), Ptr(kBase), kRW);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(st.message(), HasSubstr(why));
    EXPECT_EQ(table.Unmap(Ptr(kBase), kPageSize2M).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(table.Split(Ptr(kBase)).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(table.MakeExclusive(Ptr(kBase), nullptr).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(table.RestoreExclusive(Ptr(kBase)).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(NaturalUnit(g, kPageSize2M).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(f->refcount(), 1);
    EXPECT_FALSE(table.Translate(Ptr(kBase)).has_value());
    EXPECT_FALSE(table.Lookup(Ptr(0)).has_value());
    const void* vas[] = {Ptr(0), Ptr(kBase)};
    uint64_t pfns[2];
    EXPECT_EQ(table.TranslatePfns(vas, absl::MakeSpan(pfns)), 0u);
    EXPECT_EQ(pfns[1], kUnknownPfn);
  }
}

// The PFN-only batch (which reads the frame words beside the entries) agrees with a
// walk through the folio at every address of `vas`, in order and backwards.
void ExpectPfnsAgree(const PageTable& t, std::vector<const void*> vas) {
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<uint64_t> pfns(vas.size());
    const size_t hits = t.TranslatePfns(vas, absl::MakeSpan(pfns));
    size_t want_hits = 0;
    for (size_t i = 0; i < vas.size(); ++i) {
      const std::optional<Translation> one = t.Translate(vas[i]);
      want_hits += one.has_value();
      ASSERT_EQ(pfns[i], one ? one->pfn : kUnknownPfn) << t.geometry().name << " at " << vas[i];
    }
    EXPECT_EQ(hits, want_hits);
    std::reverse(vas.begin(), vas.end());
  }
}

// Addresses over [va, va + bytes) and around it: `spread` evenly spaced ones, every base
// page of the lowest table around `dense`, and one byte either side of the range.
std::vector<const void*> Probes(const Geometry& g, uintptr_t va, size_t bytes, uintptr_t dense,
                                size_t spread = 1024) {
  std::vector<const void*> out;
  const size_t step = std::max<size_t>(bytes / spread, 1);
  for (uintptr_t a = va; a < va + bytes; a += step) out.push_back(Ptr(a + (a / step) % 4096));
  const size_t table_bytes = g.entry_bytes(1);
  const uintptr_t first = std::max(dense & ~(table_bytes - 1), va);
  const uintptr_t last = std::min((dense & ~(table_bytes - 1)) + table_bytes, va + bytes);
  for (uintptr_t a = first; a < last; a += g.page_size()) out.push_back(Ptr(a + 3 * 4096 + 5));
  out.push_back(Ptr(va - 1));
  out.push_back(Ptr(va + bytes));
  return out;
}

class EveryGeometry : public ::testing::TestWithParam<Geometry> {};

// For each leaf unit: map, translate, split step by step down to PTEs, unmap.
TEST_P(EveryGeometry, MapSplitUnmapAtEveryLevel) {
  const Geometry& g = GetParam();
  PageTable table(g);
  std::vector<size_t> units;
  for (int level = 0; level < g.levels; ++level) {
    if (!g.leaf_ok[level]) continue;
    units.push_back(g.entry_bytes(level));
    if (g.cont_ok(level)) units.push_back(g.cont_bytes(level));
  }
  for (size_t bytes : units) {
    SCOPED_TRACE(g.name + " folio " + PageSizeName(bytes));
    auto f = FakeFolio(bytes, kBase, kBasePfn);
    const LeafUnit unit = *NaturalUnit(g, bytes);
    HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
    EXPECT_EQ(f->refcount(), 1 + static_cast<int32_t>(unit.entries));
    std::vector<LogicalLeaf> leaves = Leaves(table, kBase, bytes);
    ASSERT_EQ(leaves.size(), bytes / unit.leaf_bytes);
    EXPECT_EQ(leaves[0].level, unit.level);
    EXPECT_EQ(leaves[0].cont, unit.cont > 1);
    EXPECT_EQ(leaves[0].bytes, unit.leaf_bytes);
    EXPECT_EQ(leaves[0].folio, f.get());

    const bool multi = bytes > g.page_size();
    const uintptr_t probe = multi ? kBase + bytes / 2 + g.page_size() : kBase;
    auto check = [&](uintptr_t va) {
      std::optional<Translation> t = table.Translate(Ptr(va));
      ASSERT_TRUE(t.has_value());
      EXPECT_EQ(t->folio, f.get());
      EXPECT_EQ(t->page, (va - kBase) >> g.page_shift);
      EXPECT_EQ(t->pfn, kBasePfn + ((va - kBase) >> kPageShift));
      EXPECT_LE(t->leaf_va, va);
      EXPECT_EQ(t->run_bytes, t->leaf_va + t->leaf_bytes - va);
    };
    check(probe);
    EXPECT_EQ(table.Translate(Ptr(probe))->level, unit.level);
    ExpectPfnsAgree(table, Probes(g, kBase, bytes, probe));

    // Split at `probe` until it is a single PTE; the rest of the folio stays mapped.
    const uintptr_t split_at = multi ? kBase + g.page_size() : kBase;
    for (;;) {
      std::optional<Translation> t = table.Translate(Ptr(split_at));
      ASSERT_TRUE(t.has_value());
      if (t->level == kPteLevel && t->leaf_bytes == g.page_size()) break;
      const size_t before = t->leaf_bytes;
      HUGEMM_ASSERT_OK(table.Split(Ptr(split_at)));
      std::optional<Translation> after = table.Translate(Ptr(split_at));
      ASSERT_TRUE(after.has_value());
      EXPECT_LT(after->leaf_bytes, before);
      EXPECT_EQ(f->refcount(), 1 + EntriesMapping(table, kBase, bytes));
      check(split_at);
      check(probe);
      check(kBase + bytes - g.page_size());
      ExpectPfnsAgree(table, Probes(g, kBase, bytes, split_at));
    }
    absl::Status st = table.Split(Ptr(split_at));
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;

    // Protection, a device-exclusive entry and a partial unmap keep them agreeing.
    HUGEMM_ASSERT_OK(table.Protect(Ptr(probe), g.page_size(), kProtRead));
    ExpectPfnsAgree(table, Probes(g, kBase, bytes, probe));
    if (multi) {
      const uintptr_t ex = split_at + (bytes > 2 * g.page_size() ? g.page_size() : 0);
      HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(ex), this));
      ExpectPfnsAgree(table, Probes(g, kBase, bytes, ex));
      HUGEMM_ASSERT_OK(table.RestoreExclusive(Ptr(ex)));
      HUGEMM_ASSERT_OK(table.Unmap(Ptr(split_at), g.page_size()));
      EXPECT_FALSE(table.Translate(Ptr(split_at)).has_value());
      ExpectPfnsAgree(table, Probes(g, kBase, bytes, split_at));
      HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), split_at - kBase));
      HUGEMM_ASSERT_OK(
          table.Unmap(Ptr(split_at + g.page_size()), kBase + bytes - split_at - g.page_size()));
    } else {
      HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), bytes));
    }
    ExpectPfnsAgree(table, Probes(g, kBase, bytes, probe));
    EXPECT_EQ(f->refcount(), 1);
    EXPECT_FALSE(table.Translate(Ptr(probe)).has_value());
    EXPECT_TRUE(Leaves(table, kBase, bytes).empty());
    EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u) << "every table but the root is freed";
  }
}

INSTANTIATE_TEST_SUITE_P(All, EveryGeometry, ::testing::ValuesIn(testing::AllGeometries()),
                         [](const ::testing::TestParamInfo<Geometry>& info) {
                           std::string name = info.param.name;
                           for (char& c : name) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

TEST(PageTableTest, ContiguousGroupIsOneUnit) {
  PageTable table(*Arm64Geometry(4 << 10));
  auto f = FakeFolio(64 << 10, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  EXPECT_EQ(f->refcount(), 17);
  std::vector<LogicalLeaf> leaves = Leaves(table, kBase + (8 << 10), 4 << 10);
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].va, kBase) << "a query inside the group reports the whole group";
  EXPECT_EQ(leaves[0].pages, 16u);
  EXPECT_EQ(leaves[0].first_page, 0u);

  // Protection of the whole group changes it as one leaf.
  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase), 64 << 10, kProtRead));
  leaves = Leaves(table, kBase, 64 << 10);
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_TRUE(leaves[0].cont);
  EXPECT_EQ(leaves[0].prot, kProtRead);

  // Unmapping one page breaks the group first, then clears one PTE.
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase + (4 << 10)), 4 << 10));
  leaves = Leaves(table, kBase, 64 << 10);
  ASSERT_EQ(leaves.size(), 15u);
  for (const LogicalLeaf& l : leaves) EXPECT_FALSE(l.cont);
  EXPECT_EQ(f->refcount(), 16);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), 4 << 10));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase + (8 << 10)), 56 << 10));
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
}

// Verify and RegisterExternal read the kernel's tables through pagemap: a table of
// another machine's shape (arm64's, even with 4K pages and a 2M leaf mapped) or of no
// valid shape is refused before anything is read or checked.
TEST(PageTableTest, VerifyAndRegisterRefuseAGeometryNotThisMachines) {
  static char page[4096];
  PageTable arm(*Arm64Geometry(4 << 10));
  auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(arm.Map(f.get(), Ptr(kBase), kRW));
  absl::StatusOr<VerifyReport> r = arm.Verify(Ptr(kBase), kPageSize2M);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("arm64 4K granule is not this machine's"));
  EXPECT_EQ(arm.RegisterExternal(page, sizeof(page)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  HUGEMM_ASSERT_OK(arm.Unmap(Ptr(kBase), kPageSize2M));

  Geometry none = X86_64Geometry(false);
  none.levels = 0;
  PageTable invalid(none);
  r = invalid.Verify(page, sizeof(page));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("verify: "));
  EXPECT_EQ(invalid.RegisterExternal(page, sizeof(page)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PageTableTest, ContPmdGroupClearedAsUnit) {
  PageTable table(*Arm64Geometry(4 << 10));
  auto f = FakeFolio(32 << 20, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  EXPECT_EQ(table.Translate(Ptr(kBase + (17 << 20)))->leaf_bytes, size_t{32} << 20);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), 32 << 20));
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_FALSE(table.Translate(Ptr(kBase + (31 << 20))).has_value());
}

TEST(PageTableTest, ErrorsChangeNothingAndLeakNoReference) {
  PageTable table(X86_64Geometry(false));
  auto f2m = FakeFolio(kPageSize2M, kBase, kBasePfn);
  auto f4k = FakeFolio(kPageSize4K, kBase, kBasePfn);
  auto f1g = FakeFolio(kPageSize1G, kBase, kBasePfn);

  absl::Status st = table.Map(f2m.get(), Ptr(kBase + kPageSize4K), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("0x10000001000"));
  EXPECT_EQ(table.Map(nullptr, Ptr(kBase), kRW).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Map(f2m.get(), Ptr(kBase), kProtNone).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Map(f2m.get(), Ptr(uintptr_t{1} << 48), kRW).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(f2m->refcount(), 1);
  // A descriptor whose order is no size at all (4K << 80 is not a number): refused
  // before anything shifts by it (UBSan watches the asan flavour).
  for (uint8_t order : {uint8_t{52}, uint8_t{64}, uint8_t{80}, uint8_t{255}}) {
    auto odd = FakeFolio(kPageSize2M, kBase, kBasePfn);
    odd->order = order;
    st = table.Map(odd.get(), Ptr(kBase), kRW);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << int{order} << ": " << st;
    EXPECT_EQ(odd->refcount(), 1);
  }
  auto gone = FakeFolio(kPageSize2M, kBase, kBasePfn);
  FolioPut(gone.get());  // its owner's reference: the folio is free
  st = table.Map(gone.get(), Ptr(kBase), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(gone->refcount(), 0) << "a free folio is never revived";
  EXPECT_FALSE(table.Translate(Ptr(kBase)).has_value());

  HUGEMM_ASSERT_OK(table.Map(f2m.get(), Ptr(kBase), kRW));
  st = table.Map(f2m.get(), Ptr(kBase), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  st = table.Map(f4k.get(), Ptr(kBase + kPageSize4K * 3), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_THAT(st.message(), HasSubstr("PMD leaf"));
  st = table.Map(f1g.get(), Ptr(kBase), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  EXPECT_EQ(f2m->refcount(), 2);
  EXPECT_EQ(f4k->refcount(), 1);
  EXPECT_EQ(f1g->refcount(), 1);

  st = table.Unmap(Ptr(kBase), 2 * kPageSize2M);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  EXPECT_THAT(st.message(), HasSubstr("0x10000200000 is not mapped"));
  EXPECT_EQ(f2m->refcount(), 2) << "a failed unmap changes nothing";
  EXPECT_EQ(table.Unmap(Ptr(kBase + 1), kPageSize4K).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Unmap(Ptr(kBase), 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.Split(Ptr(kBase + kPageSize1G)).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(table.RestoreExclusive(Ptr(kBase)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table.MakeExclusive(Ptr(kBase + kPageSize1G), nullptr).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(table.Protect(Ptr(kBase), kPageSize2M, kProtWrite).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(table.notifiers().Unsubscribe(12345).code(), absl::StatusCode::kNotFound);

  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
  EXPECT_EQ(f2m->refcount(), 1);

  PageTable arm16(*Arm64Geometry(16 << 10));
  st = arm16.Map(f4k.get(), Ptr(kBase), kRW);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(f4k->refcount(), 1);
}

TEST(PageTableTest, PartialUnmapAndProtectSplitFirst) {
  PageTable table(X86_64Geometry(false));
  auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase), kPageSize2M, kProtRead));
  EXPECT_EQ(table.Translate(Ptr(kBase))->level, kPmdLevel) << "whole leaf: no split";

  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase + 2 * kPageSize4K), kPageSize4K, kRW));
  std::vector<LogicalLeaf> leaves = Leaves(table, kBase, 3 * kPageSize4K);
  ASSERT_EQ(leaves.size(), 3u);
  EXPECT_EQ(leaves[0].level, kPteLevel);
  EXPECT_EQ(leaves[1].prot, kProtRead);
  EXPECT_EQ(leaves[2].prot, kRW);

  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase + 10 * kPageSize4K), kPageSize4K));
  EXPECT_EQ(f->refcount(), 1 + 511);
  EXPECT_FALSE(table.Translate(Ptr(kBase + 10 * kPageSize4K)).has_value());
  EXPECT_EQ(table.Translate(Ptr(kBase + 11 * kPageSize4K))->folio, f.get());
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), 10 * kPageSize4K));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase + 11 * kPageSize4K), kPageSize2M - 11 * kPageSize4K));
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
}

TEST(PageTableTest, PudSplitDepositsForEveryPmd) {
  PageTable table(X86_64Geometry(false));
  auto f = FakeFolio(kPageSize1G, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  HUGEMM_ASSERT_OK(table.Split(Ptr(kBase)));
  EXPECT_EQ(f->refcount(), 1 + 512);
  // Every new PMD leaf can split without memory: split one in the middle.
  HUGEMM_ASSERT_OK(table.Split(Ptr(kBase + 300 * kPageSize2M)));
  EXPECT_EQ(f->refcount(), 1 + 511 + 512);
  std::optional<Translation> t = table.Translate(Ptr(kBase + 300 * kPageSize2M + 5 * kPageSize4K));
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->level, kPteLevel);
  EXPECT_EQ(t->pfn, kBasePfn + 300 * 512 + 5);
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize1G));
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
}

TEST(PageTableTest, TranslateRunsAcrossContiguousLeaves) {
  auto a = FakeFolio(kPageSize2M, kBase, kBasePfn);
  auto b = FakeFolio(kPageSize2M, kBase + kPageSize2M, kBasePfn + 512);
  auto c = FakeFolio(kPageSize2M, kBase + 2 * kPageSize2M, kBasePfn + 4096);
  PageTable table(X86_64Geometry(false));  // dies first: it still maps the folios
  HUGEMM_ASSERT_OK(table.Map(a.get(), Ptr(kBase), kRW));
  HUGEMM_ASSERT_OK(table.Map(b.get(), Ptr(kBase + kPageSize2M), kRW));
  HUGEMM_ASSERT_OK(table.Map(c.get(), Ptr(kBase + 2 * kPageSize2M), kRW));
  const uintptr_t va = kBase + kPageSize4K;
  EXPECT_EQ(table.Translate(Ptr(va))->run_bytes, kPageSize2M - kPageSize4K);
  EXPECT_EQ(table.Translate(Ptr(va), 64 << 20)->run_bytes, 2 * kPageSize2M - kPageSize4K);
  EXPECT_EQ(table.Translate(Ptr(va), 3 << 20)->run_bytes, size_t{3} << 20);
}

// The batched readers agree with one Translate per address over every kind of leaf: 1G,
// 2M, 2M split into PTEs, a device-exclusive PTE, an unknown PFN, holes, and addresses
// out of the geometry.
TEST_P(EveryGeometry, BatchedTranslationsMatchSingleOnes) {
  const Geometry& g = GetParam();
  PageTable table(g);
  std::vector<std::unique_ptr<Folio>> folios;
  std::vector<uintptr_t> starts;
  uintptr_t va = kBase;
  uint64_t pfn = kBasePfn;
  // One folio per leaf unit of this geometry, the largest first, then a split one.
  for (int level = g.top() - 1; level >= 0; --level) {
    if (!g.leaf_ok[level]) continue;
    const size_t bytes = g.cont_bytes(level);
    if (bytes > (size_t{1} << 36)) continue;  // synthetic: no memory behind it
    va = (va + bytes - 1) & ~(bytes - 1);
    pfn = (pfn + bytes / kPageSize4K - 1) & ~(bytes / kPageSize4K - 1);
    folios.push_back(FakeFolio(bytes, va, level == 0 ? kUnknownPfn : pfn));
    HUGEMM_ASSERT_OK(table.Map(folios.back().get(), Ptr(va), kRW));
    starts.push_back(va);
    va += 2 * bytes;  // leave a hole after each
    pfn += 4 * bytes / kPageSize4K;
  }
  ASSERT_GE(starts.size(), 2u);
  HUGEMM_ASSERT_OK(table.Split(Ptr(starts[0])));
  HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(starts[1] + 3 * g.page_size()), this));

  std::vector<const void*> vas;
  for (uintptr_t s : starts) {
    for (uintptr_t off : {uintptr_t{0}, uintptr_t{4096 * 3 + 17}, g.page_size() * 3}) {
      vas.push_back(Ptr(s + off));
    }
    vas.push_back(Ptr(s - 1));  // a hole or the previous leaf's tail
  }
  vas.push_back(Ptr(uintptr_t{1} << 62));  // beyond the geometry
  std::vector<Translation> full(vas.size());
  std::unique_ptr<bool[]> hits(new bool[vas.size()]);
  std::vector<uint64_t> pfns(vas.size());
  const size_t n_full =
      table.TranslateMany(vas, absl::MakeSpan(full), absl::MakeSpan(hits.get(), vas.size()));
  const size_t n_pfns = table.TranslatePfns(vas, absl::MakeSpan(pfns));
  size_t expected_hits = 0;
  for (size_t i = 0; i < vas.size(); ++i) {
    std::optional<Translation> one = table.Translate(vas[i]);
    SCOPED_TRACE(::testing::Message() << g.name << " va " << vas[i]);
    ASSERT_EQ(hits[i], one.has_value());
    EXPECT_EQ(pfns[i], one ? one->pfn : kUnknownPfn);
    if (!one) continue;
    ++expected_hits;
    EXPECT_EQ(full[i].folio, one->folio);
    EXPECT_EQ(full[i].page, one->page);
    EXPECT_EQ(full[i].pfn, one->pfn);
    EXPECT_EQ(full[i].level, one->level);
    EXPECT_EQ(full[i].leaf_bytes, one->leaf_bytes);
    EXPECT_EQ(full[i].exclusive, one->exclusive);
  }
  EXPECT_EQ(n_full, expected_hits);
  EXPECT_EQ(n_pfns, expected_hits);
  HUGEMM_ASSERT_OK(table.RestoreExclusive(Ptr(starts[1] + 3 * g.page_size())));
  for (uintptr_t s : starts) {
    const Folio* f = table.Translate(Ptr(s))->folio;
    HUGEMM_ASSERT_OK(table.Unmap(Ptr(s), f->size()));
  }
}

TEST(PageTableTest, SnapshotNoticesChange) {
  auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
  PageTable table(X86_64Geometry(false));
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  std::optional<LeafSnapshot> s = table.Lookup(Ptr(kBase + 5 * kPageSize4K));
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->leaf.folio, f.get());
  EXPECT_EQ(s->leaf.pages, 512u);
  EXPECT_TRUE(table.StillMapped(*s));
  HUGEMM_ASSERT_OK(table.Protect(Ptr(kBase), kPageSize2M, kProtRead));
  EXPECT_FALSE(table.StillMapped(*s));
}

TEST(PageTableTest, DeviceExclusiveTellsOtherSubscribers) {
  PageTable table(X86_64Geometry(false));
  auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
  HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
  int gpu_a = 0, gpu_b = 0, far = 0;
  std::vector<std::string> heard_a, heard_b, heard_far;
  auto record = [](std::vector<std::string>* log, const char* edge) {
    return [log, edge](const Invalidation& inv) {
      log->push_back(std::string(edge) + " " + std::string(InvalidateReasonName(inv.reason)));
    };
  };
  NotifierRegistry& notifiers = table.notifiers();
  const uint64_t id_a = notifiers.Subscribe(
      Ptr(kBase), kPageSize2M, {record(&heard_a, "start"), record(&heard_a, "end")}, &gpu_a);
  const uint64_t id_b = notifiers.Subscribe(
      Ptr(kBase), kPageSize2M, {record(&heard_b, "start"), record(&heard_b, "end")}, &gpu_b);
  const uint64_t id_far =
      notifiers.Subscribe(Ptr(kBase + kPageSize1G), kPageSize2M,
                          {record(&heard_far, "start"), record(&heard_far, "end")}, &far);
  EXPECT_NE(id_a, id_b);
  EXPECT_NE(id_b, id_far);

  const uintptr_t page = kBase + 3 * kPageSize4K;
  HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(page), &gpu_a));
  EXPECT_THAT(heard_b, ::testing::ElementsAre("start split", "end split", "start device-exclusive",
                                              "end device-exclusive"));
  EXPECT_THAT(heard_a, ::testing::ElementsAre("start split", "end split"))
      << "the owner is not told about its own exclusive entry";
  EXPECT_TRUE(heard_far.empty());
  EXPECT_EQ(f->refcount(), 1 + 512);

  std::optional<Translation> t = table.Translate(Ptr(page + 100));
  ASSERT_TRUE(t.has_value());
  EXPECT_TRUE(t->exclusive);
  EXPECT_EQ(t->exclusive_owner, &gpu_a);
  EXPECT_EQ(t->pfn, kBasePfn + 3);
  EXPECT_EQ(t->level, kPteLevel);
  std::vector<LogicalLeaf> leaves = Leaves(table, page, kPageSize4K);
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_TRUE(leaves[0].exclusive);
  EXPECT_EQ(leaves[0].first_page, 3u);
  EXPECT_FALSE(table.Translate(Ptr(page + kPageSize4K))->exclusive);

  EXPECT_EQ(table.MakeExclusive(Ptr(page), &gpu_b).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(table.Protect(Ptr(kBase), kPageSize2M, kProtRead).code(),
            absl::StatusCode::kFailedPrecondition);

  heard_b.clear();
  HUGEMM_ASSERT_OK(table.RestoreExclusive(Ptr(page)));
  EXPECT_THAT(heard_b, ::testing::ElementsAre("start restore", "end restore"));
  t = table.Translate(Ptr(page));
  EXPECT_FALSE(t->exclusive);
  EXPECT_EQ(t->folio, f.get());
  EXPECT_EQ(Leaves(table, page, kPageSize4K)[0].prot, kRW);
  EXPECT_EQ(f->refcount(), 1 + 512);

  HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(page), &gpu_b));
  HUGEMM_ASSERT_OK(notifiers.Unsubscribe(id_b));
  HUGEMM_ASSERT_OK(table.Unmap(Ptr(kBase), kPageSize2M));
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
}

TEST(PageTableTest, DestructionDropsEveryReference) {
  auto f = FakeFolio(kPageSize2M, kBase, kBasePfn);
  auto g = FakeFolio(kPageSize4K, kBase + kPageSize1G, kBasePfn + 4096);
  {
    PageTable table(X86_64Geometry(false));
    HUGEMM_ASSERT_OK(table.Map(f.get(), Ptr(kBase), kRW));
    HUGEMM_ASSERT_OK(table.Map(g.get(), Ptr(kBase + kPageSize1G), kRW));
    HUGEMM_ASSERT_OK(table.Split(Ptr(kBase)));
    HUGEMM_ASSERT_OK(table.MakeExclusive(Ptr(kBase), nullptr));
  }
  EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(g->refcount(), 1);
}

}  // namespace
}  // namespace hugemm
