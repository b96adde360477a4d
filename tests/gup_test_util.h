// Folios over real memory for GUP tests: one folio per native page of an Extent, owned
// by a recording owner (one reference), mapped into a shadow table.
#ifndef HUGEMM_TESTS_GUP_TEST_UTIL_H_
#define HUGEMM_TESTS_GUP_TEST_UTIL_H_

#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "hugemm/folio.h"
#include "hugemm/pgtable.h"
#include "tests/pgtable_test_util.h"
#include "tests/test_util.h"

namespace hugemm::testing {

// Remembers which folios came back: "freed" means released to it.
class RecordingOwner : public FolioOwner {
 public:
  void ReleaseFolio(Folio* folio) override {
    std::lock_guard<std::mutex> lock(mu_);
    released_.push_back(folio);
  }
  size_t released() const {
    std::lock_guard<std::mutex> lock(mu_);
    return released_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<Folio*> released_;
};

inline absl::StatusOr<Extent> MapExtent(BackingKind kind, size_t page_size, size_t pages,
                                        const std::string& dax = "") {
  absl::StatusOr<std::shared_ptr<Backing>> b =
      Backing::Create({.kind = kind, .page_size = page_size, .devdax_path = dax});
  if (!b.ok()) return b.status();
  return (*b)->Map({.length = pages * (*b)->page_size()});
}

// The memory under test: an extent, its folios, and a table mapping all of them.
struct Mapped {
  Extent extent;
  RecordingOwner owner;
  std::vector<std::unique_ptr<Folio>> folios;
  std::unique_ptr<PageTable> table;

  std::byte* data() const { return extent.data(); }
  size_t size() const { return extent.size(); }
  size_t pages4k() const { return extent.size() / kPageSize4K; }
  Folio* folio_at(size_t byte) const { return folios[byte / extent.page_size()].get(); }

  // Counts of every folio, to compare with after a failure or an unpin.
  std::vector<std::pair<int32_t, int32_t>> Counts() const {
    std::vector<std::pair<int32_t, int32_t>> out;
    for (const auto& f : folios) out.emplace_back(f->refcount(), f->pincount());
    return out;
  }
};

inline std::unique_ptr<Folio> FolioFor(const Extent& e, size_t i, FolioOwner* owner) {
  auto f = std::make_unique<Folio>();
  InitFolioForPage(f.get(), e, i, owner);
  return f;
}

// map_every: map folio i only when map_every(i) (a hole otherwise).
template <typename Pred>
absl::StatusOr<std::unique_ptr<Mapped>> MapFolios(Extent extent, Pred map_every, Prot prot = kRW) {
  auto m = std::make_unique<Mapped>();
  m->extent = std::move(extent);
  m->table = std::make_unique<PageTable>(DetectHostGeometry());
  for (size_t i = 0; i < m->extent.page_count(); ++i) {
    m->folios.push_back(FolioFor(m->extent, i, &m->owner));
    if (!map_every(i)) continue;
    Folio* f = m->folios.back().get();
    if (absl::Status st = m->table->Map(f, f->data, prot); !st.ok()) return st;
  }
  return m;
}

inline absl::StatusOr<std::unique_ptr<Mapped>> MapAll(Extent extent, Prot prot = kRW) {
  return MapFolios(
      std::move(extent), [](size_t) { return true; }, prot);
}

// A test over `kFolios` real 2M hugetlb folios, each mapped whole; base_ holds their
// counts before the test.
template <size_t kFolios>
class Folios2MTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HUGEMM_NEED_HUGEPAGES(kPageSize2M, kFolios);
    absl::StatusOr<Extent> e = MapExtent(BackingKind::kHugetlb, kPageSize2M, kFolios);
    HUGEMM_ASSERT_OK(e);
    absl::StatusOr<std::unique_ptr<Mapped>> m = MapAll(std::move(*e));
    HUGEMM_ASSERT_OK(m);
    m_ = std::move(*m);
    base_ = m_->Counts();
  }
  Mapped& m() { return *m_; }
  Folio* folio(size_t i) { return m_->folios[i].get(); }
  // Page `page` of folio `folio`.
  std::byte* at(size_t folio, size_t page) {
    return m_->data() + folio * kPageSize2M + page * kPageSize4K;
  }

  std::unique_ptr<Mapped> m_;
  std::vector<std::pair<int32_t, int32_t>> base_;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_GUP_TEST_UTIL_H_
