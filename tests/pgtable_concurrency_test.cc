// Lock-free readers while writers map, split, protect, make exclusive and unmap. Run under
// TSan: a reader must never see a torn entry or a freed table, and every translation it
// gets must be one the writers could have made.
#include <unistd.h>

#include <atomic>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "hugemm/pgtable.h"
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

constexpr int kSlots = 8;  // 2M folios, two writers with four each
constexpr int kRounds = 40;
constexpr int kReaders = 3;
constexpr uintptr_t kGiantVa = kBase + kPageSize1G;  // one 1G folio

TEST(PageTableConcurrencyTest, ReadersDuringMapSplitUnmap) {
  std::vector<std::unique_ptr<Folio>> folios;
  for (int i = 0; i < kSlots; ++i) {
    folios.push_back(FakeFolio(kPageSize2M, kBase + i * kPageSize2M, kBasePfn + uint64_t(i) * 512));
  }
  auto giant = FakeFolio(kPageSize1G, kGiantVa, kBasePfn + (uint64_t{1} << 20));
  PageTable table(X86_64Geometry(false));
  std::atomic<int> writers_left{3};
  std::atomic<uint64_t> hits{0};
  const Prot rw = kProtRead | kProtWrite;

  auto ok = [](const absl::Status& st) { EXPECT_TRUE(st.ok()) << st; };
  auto writer = [&](int first) {
    int token = 0;
    for (int round = 0; round < kRounds; ++round) {
      for (int i = first; i < first + kSlots / 2; ++i) {
        Folio* f = folios[i].get();
        ok(table.Map(f, f->data, rw));
        if (round % 2 == 0) ok(table.Split(f->data));
        ok(table.Protect(f->data + 8 * kPageSize4K, kPageSize4K, kProtRead));
        ok(table.MakeExclusive(f->data + 16 * kPageSize4K, &token));
        ok(table.RestoreExclusive(f->data + 16 * kPageSize4K));
        ok(table.Unmap(f->data, kPageSize2M));
      }
    }
    writers_left.fetch_sub(1);
  };
  auto giant_writer = [&]() {
    for (int round = 0; round < kRounds / 4; ++round) {
      ok(table.Map(giant.get(), Ptr(kGiantVa), rw));
      ok(table.Split(Ptr(kGiantVa)));
      ok(table.Split(Ptr(kGiantVa + 7 * kPageSize2M)));
      ok(table.Unmap(Ptr(kGiantVa), kPageSize1G));
    }
    writers_left.fetch_sub(1);
  };
  auto reader = [&](unsigned seed) {
    std::mt19937_64 rng(seed);
    while (writers_left.load() > 0) {
      const bool in_giant = rng() % 4 == 0;
      const uintptr_t va =
          in_giant ? kGiantVa + rng() % kPageSize1G : kBase + rng() % (kSlots * kPageSize2M);
      const Folio* want = in_giant ? giant.get() : folios[(va - kBase) / kPageSize2M].get();
      const uintptr_t folio_va = reinterpret_cast<uintptr_t>(want->data);
      if (std::optional<Translation> t = table.Translate(Ptr(va))) {
        ASSERT_EQ(t->folio, want);
        ASSERT_EQ(t->pfn, want->head_pfn + (va - folio_va) / kPageSize4K);
        ASSERT_LE(t->leaf_va, va);
        ASSERT_GT(t->leaf_va + t->leaf_bytes, va);
        hits.fetch_add(1, std::memory_order_relaxed);
      }
      // The PFN-only batch reads frame words: each is unknown or the one frame it can be.
      const void* batch[3] = {Ptr(va), Ptr(va ^ (kPageSize2M / 2)), Ptr(va)};
      uint64_t pfns[3];
      table.TranslatePfns(batch, absl::MakeSpan(pfns));
      for (int k = 0; k < 3; ++k) {
        const auto a = reinterpret_cast<uintptr_t>(batch[k]);
        if (pfns[k] != kUnknownPfn) {
          ASSERT_EQ(pfns[k], want->head_pfn + (a - folio_va) / kPageSize4K);
          hits.fetch_add(1, std::memory_order_relaxed);
        }
      }
      ReadSection rs;
      if (std::optional<LeafSnapshot> s = table.Lookup(Ptr(va))) {
        ASSERT_EQ(s->leaf.folio, want);
        ASSERT_EQ(s->leaf.first_page, (s->leaf.va - folio_va) / kPageSize4K);
        (void)table.StillMapped(*s);
      }
      table.Walk(Ptr(va & ~(kPageSize2M - 1)), kPageSize2M,
                 [&](const LogicalLeaf& l) { ASSERT_EQ(l.folio, want); });
    }
  };

  std::vector<std::thread> threads;
  for (int r = 0; r < kReaders; ++r) threads.emplace_back(reader, 1234u + r);
  threads.emplace_back(writer, 0);
  threads.emplace_back(writer, kSlots / 2);
  threads.emplace_back(giant_writer);
  for (std::thread& t : threads) t.join();

  for (const auto& f : folios) EXPECT_EQ(f->refcount(), 1);
  EXPECT_EQ(giant->refcount(), 1);
  EXPECT_EQ(PageTableTestPeer::TableCount(table), 1u);
  RecordProperty("hits", static_cast<int>(hits.load()));
}

// A protection change (or an unmap) of part of a 2M leaf splits it first, outside the
// lock; another writer that splits the same leaf in that moment must not make the change
// fail: its own split then finds PTEs, which already fit. The hook plays that writer at
// exactly that point.
TEST(PageTableConcurrencyTest, ChangeOfPartOfALeafAnotherWriterSplitFirst) {
  auto folio = FakeFolio(kPageSize2M, kBase, kBasePfn);
  PageTable table(X86_64Geometry(false));
  struct Other {
    PageTable* table;
    Folio* folio;
    int splits = 0;
  } other{&table, folio.get()};
  PageTableTestPeer::SetBeforeSplit(
      table,
      [](void* arg) {
        auto* o = static_cast<Other*>(arg);
        if (o->splits++ == 0) {
          EXPECT_TRUE(o->table->Split(o->folio->data).ok());
        }
      },
      &other);
  const Prot rw = kProtRead | kProtWrite;
  ASSERT_TRUE(table.Map(folio.get(), folio->data, rw).ok());
  absl::Status st = table.Protect(folio->data + 8 * kPageSize4K, kPageSize4K, kProtRead);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(other.splits, 1);
  std::optional<Translation> t = table.Translate(folio->data + 8 * kPageSize4K);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->leaf_bytes, kPageSize4K);
  ASSERT_TRUE(table.Unmap(folio->data, kPageSize2M).ok());

  other.splits = 0;
  ASSERT_TRUE(table.Map(folio.get(), folio->data, rw).ok());
  EXPECT_TRUE(table.Unmap(folio->data + 8 * kPageSize4K, kPageSize4K).ok());
  EXPECT_EQ(other.splits, 1);
  EXPECT_FALSE(table.Translate(folio->data + 8 * kPageSize4K).has_value());
  ASSERT_TRUE(table.Unmap(folio->data, 8 * kPageSize4K).ok());
  ASSERT_TRUE(table.Unmap(folio->data + 9 * kPageSize4K, kPageSize2M - 9 * kPageSize4K).ok());
  EXPECT_EQ(folio->refcount(), 1) << "the table still holds the folio";
}

// Runs a function when its thread's thread_local objects are destroyed.
struct AtThreadExit {
  std::function<void()> fn;
  ~AtThreadExit() {
    if (fn) fn();
  }
};
// At namespace scope: a thread makes (and later destroys) its own on first use.
thread_local AtThreadExit t_at_exit;

// A thread_local object made before its thread's first read section is destroyed after
// whatever that section registered with thread_local state of its own. Its destructor may
// still read the table (a Buffer freed at thread exit unmaps): a grace period must wait for
// that read section too, or a writer frees tables the destructor is reading.
TEST(PageTableConcurrencyTest, ReadSectionInAThreadLocalDestructorHoldsOffGracePeriods) {
  auto folio = FakeFolio(kPageSize2M, kBase, kBasePfn);
  PageTable table(X86_64Geometry(false));
  ASSERT_TRUE(table.Map(folio.get(), folio->data, kRW).ok());
  std::atomic<int> phase{0};  // 1: the destructor is in its section; 2: the unmap returned
  std::atomic<bool> overtaken{false};
  std::thread reader([&] {
    t_at_exit.fn = [&] {
      ReadSection section;
      phase = 1;
      // Without the wait the unmap (a membarrier) returns at once; with it, never here.
      for (int i = 0; i < 1000 && phase.load() != 2; ++i) usleep(1000);
      overtaken = phase.load() == 2;
    };
    EXPECT_TRUE(table.Translate(Ptr(kBase)).has_value());  // the first read section
  });
  std::thread writer([&] {
    while (phase.load() != 1) std::this_thread::yield();
    EXPECT_TRUE(table.Unmap(Ptr(kBase), kPageSize2M).ok());
    phase = 2;
  });
  reader.join();
  writer.join();
  EXPECT_FALSE(overtaken.load()) << "a grace period ended inside a thread_local's read section";
}

}  // namespace
}  // namespace hugemm
