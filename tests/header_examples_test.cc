// The usage examples at the top of the public headers, as a program copies them: each
// test holds one header's example line for line (only what the comment leaves out, such
// as the buffer, the device or the file, is set up around it), checks what the comment
// says it does, and that the process has as many descriptors and mappings afterwards as
// before. Built with -Werror, so an example that ignores a [[nodiscard]] result, or names
// something the header does not declare, fails the build. Keep each in step with its
// header.
#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "hugemm/alloc.h"
#include "hugemm/backing.h"
#include "hugemm/folio.h"
#include "hugemm/geometry.h"
#include "hugemm/gup.h"
#include "hugemm/io.h"
#include "hugemm/memory_observer.h"
#include "hugemm/notify.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"
#include "hugemm/pgtable.h"
#include "hugemm/runtime.h"
#include "test_util.h"

namespace {

using hugemm::kPageSize1G;
using hugemm::kPageSize2M;

// Descriptors of this process, and its mappings of huge pages and io_uring rings (the
// others come and go with malloc and, under a sanitizer, its own bookkeeping).
struct Footprint {
  int fds = 0;
  int maps = 0;
  bool operator==(const Footprint&) const = default;
};

Footprint Now() {
  Footprint f;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (readdir(d) != nullptr) ++f.fds;
    closedir(d);
  }
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    for (const char* kind : {"/memfd:hugemm-", "anon_hugepage", "/dev/hugepages", "io_uring"}) {
      if (line.find(kind) != std::string::npos) {
        ++f.maps;
        break;
      }
    }
  }
  return f;
}

std::ostream& operator<<(std::ostream& os, const Footprint& f) {
  return os << f.fds << " descriptors, " << f.maps << " mappings";
}

// A runtime with one 2M buffer mapped in it: where the gup.h and notify.h examples start.
void OpenWithOneBuffer(std::unique_ptr<hugemm::Runtime>* rt, std::optional<hugemm::Buffer>* b) {
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> opened = hugemm::Runtime::Open();
  ASSERT_TRUE(opened.ok()) << opened.status();
  *rt = std::move(*opened);
  absl::StatusOr<hugemm::Buffer> mapped = (*rt)->MapBuffer(kPageSize2M);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  b->emplace(std::move(*mapped));
}

// runtime.h: map 1 GiB of 2M pages, pin it, one span per folio with its PFN.
TEST(HeaderExamples, Runtime) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 512);
  const Footprint before = Now();
  {
    std::vector<uint64_t> posted;
    auto post = [&](uint64_t pfn, uint32_t pages) {
      posted.push_back(pfn);
      EXPECT_EQ(pages, kPageSize2M >> hugemm::kPageShift);
    };
    auto rt = hugemm::Runtime::Open({});
    absl::StatusOr<hugemm::Buffer> buf =
        (*rt)->MapBuffer(1 << 30, {.page_size = hugemm::kPageSize2M});
    absl::StatusOr<hugemm::PinnedRange> pin =
        (*rt)->pinner().Pin(buf->data(), buf->size(), hugemm::kGupPin | hugemm::kGupWrite);
    for (const hugemm::FolioSpan& s : pin->spans()) post(s.folio->page_pfn(s.first_page), s.pages);

    ASSERT_EQ(posted.size(), 512u);
    for (uint64_t pfn : posted) EXPECT_NE(pfn, hugemm::kUnknownPfn);
  }
  EXPECT_EQ(Now(), before);
}

// alloc.h: 64 KiB, zeroed, on a 2M hugetlb page; a pin that outlives the handle.
TEST(HeaderExamples, Alloc) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  const char src[] = "copied into hugemm memory";
  const size_t n = sizeof(src);
  hugemm::Folio* pinned = nullptr;
  {
    auto alloc = hugemm::Allocator::Create({});
    absl::StatusOr<hugemm::FolioHandle> buf = (*alloc)->Allocate(64 << 10, {});
    memcpy(buf->data(), src, n);  // 64 KiB, zeroed, on a 2M hugetlb page
    // A DMA pin outlives the handle:
    absl::Status st = hugemm::FolioTryGrab(buf->folio(), 16, hugemm::RefKind::kPin);

    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(buf->folio()->size(), size_t{64} << 10);
    EXPECT_EQ(std::memcmp(buf->data(), src, n), 0);
    pinned = buf->folio();
    buf->Reset();
    // The pin holds the folio: still allocated, its contents untouched.
    EXPECT_EQ(std::memcmp(pinned->data, src, n), 0);
    EXPECT_FALSE(pinned->has_flag(hugemm::kFolioFree));
    hugemm::FolioUngrab(pinned, 16, hugemm::RefKind::kPin);
  }
}

// folio.h: grab 16 pins on a folio, DMA to its PFN, give them back dirty.
TEST(HeaderExamples, Folio) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto alloc = hugemm::Allocator::Create({});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  absl::StatusOr<hugemm::FolioHandle> h = (*alloc)->Allocate(64 << 10, {});
  ASSERT_TRUE(h.ok()) << h.status();
  const int32_t refs = h->folio()->refcount();
  uint64_t dma_pfn = 0;
  auto example = [&](const hugemm::FolioHandle& handle) -> absl::Status {
    hugemm::Folio* f = handle.folio();
    absl::Status st = hugemm::FolioTryGrab(f, 16, hugemm::RefKind::kPin);
    if (!st.ok()) return st;
    dma_pfn = f->page_pfn(0);  // ... DMA to f->page_pfn(0) ...
    EXPECT_EQ(f->pincount(), 16);
    hugemm::FolioUngrab(f, 16, hugemm::RefKind::kPin, /*dirty=*/true);
    return absl::OkStatus();
  };
  HUGEMM_ASSERT_OK(example(*h));
  EXPECT_NE(dma_pfn, hugemm::kUnknownPfn);
  EXPECT_EQ(h->folio()->refcount(), refs);
  EXPECT_EQ(h->folio()->pincount(), 0);
  EXPECT_TRUE(h->folio()->has_flag(hugemm::kFolioDirty));
}

// backing.h: two 1G pages of hugetlb on node 0.
TEST(HeaderExamples, Backing) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 2);
  const Footprint before = Now();
  {
    auto backing = hugemm::Backing::Create(
        {.kind = hugemm::BackingKind::kHugetlb, .page_size = hugemm::kPageSize1G});
    auto extent = (*backing)->Map({.length = 2 * hugemm::kPageSize1G, .node = 0});

    ASSERT_TRUE(extent.ok()) << extent.status();
    EXPECT_EQ(extent->size(), 2 * kPageSize1G);
    EXPECT_EQ(extent->page_size(), kPageSize1G);
    EXPECT_EQ(extent->node(), 0);
  }
  EXPECT_EQ(Now(), before);
}

// os.h: the default Os, passed explicitly.
TEST(HeaderExamples, Os) {
  hugemm::Os& os = hugemm::Os::Default();
  auto backing = hugemm::Backing::Create({.kind = hugemm::BackingKind::kHugetlb, .os = &os});
  ASSERT_TRUE(backing.ok()) << backing.status();
  EXPECT_EQ((*backing)->page_size(), kPageSize2M);
}

// gup.h: a page array of 512 entries for one 2M page, unpinned dirty.
TEST(HeaderExamples, Gup) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<hugemm::Runtime> rt;
  std::optional<hugemm::Buffer> b;
  ASSERT_NO_FATAL_FAILURE(OpenWithOneBuffer(&rt, &b));
  hugemm::PageTable& table = rt->table();
  std::byte* buf = b->data();
  hugemm::Folio* folio = rt->Translate(buf)->folio;
  const int32_t refs = folio->refcount();

  hugemm::Pinner pinner(table);
  std::vector<hugemm::PageRef> pages(512);
  absl::StatusOr<size_t> n =
      pinner.PinPages(buf, 512, hugemm::kGupPin | hugemm::kGupWrite, absl::MakeSpan(pages));
  ASSERT_TRUE(n.ok()) << n.status();
  ASSERT_EQ(*n, 512u);
  EXPECT_EQ(folio->pincount(), 512);
  EXPECT_EQ(pages[1].pfn(), pages[0].pfn() + 1);  // ... hand pages[i].pfn() to a device ...
  pinner.UnpinPages(absl::MakeConstSpan(pages.data(), *n), /*dirty=*/true);

  EXPECT_EQ(folio->refcount(), refs);
  EXPECT_EQ(folio->pincount(), 0);
}

// pgtable.h: map a folio in a table of the host's geometry and translate an address.
TEST(HeaderExamples, PageTable) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  auto alloc = hugemm::Allocator::Create({});
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  absl::StatusOr<hugemm::FolioHandle> h = (*alloc)->Allocate(kPageSize2M, {});
  ASSERT_TRUE(h.ok()) << h.status();
  hugemm::Folio* folio = h->folio();
  const std::byte* addr = folio->data + 5 * 4096;
  {
    hugemm::PageTable table(hugemm::DetectHostGeometry());
    absl::Status st = table.Map(folio, folio->data, hugemm::kProtRead | hugemm::kProtWrite);
    std::optional<hugemm::Translation> t = table.Translate(addr);

    HUGEMM_ASSERT_OK(st);
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->folio, folio);
    EXPECT_EQ(t->page, 5u);
    EXPECT_EQ(t->pfn, folio->page_pfn(5));
    HUGEMM_ASSERT_OK(table.Unmap(folio->data, kPageSize2M));
  }
}

// notify.h: a registration built at a stable sequence is valid until the range changes.
TEST(HeaderExamples, Notify) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::unique_ptr<hugemm::Runtime> rt;
  std::optional<hugemm::Buffer> b;
  ASSERT_NO_FATAL_FAILURE(OpenWithOneBuffer(&rt, &b));
  hugemm::PageTable& table = rt->table();
  std::byte* buf = b->data();
  const size_t len = b->size();
  int dropped = 0;
  auto drop_mr = [&](const hugemm::Invalidation&) { ++dropped; };
  std::optional<uint64_t> remembered;

  hugemm::RangeSubscription sub(table.notifiers(), buf, len, {.invalidate_start = drop_mr});
  uint64_t seq = sub.sequence().load(std::memory_order_acquire);
  if (hugemm::RangeSubscription::Stable(seq)) remembered = seq;  // build the registration
  ASSERT_TRUE(remembered.has_value());
  bool valid = sub.sequence().load(std::memory_order_acquire) == remembered;
  EXPECT_TRUE(valid);

  HUGEMM_ASSERT_OK(b->Free());
  valid = sub.sequence().load(std::memory_order_acquire) == remembered;
  EXPECT_FALSE(valid);
  EXPECT_EQ(dropped, 1);
}

// memory_observer.h: an observer told of what is held, then of every change.
std::vector<std::byte*> g_dma_mapped, g_dma_unmapped;
absl::Status MapDma(std::byte* data, size_t, size_t) {
  g_dma_mapped.push_back(data);
  return absl::OkStatus();
}
void UnmapDma(std::byte* data, size_t) { g_dma_unmapped.push_back(data); }

class IovaMapper : public hugemm::MemoryObserver {
  absl::Status MemoryAdded(const hugemm::MemoryRange& r) override {
    return MapDma(r.data, r.length, r.page_size);  // once per extent or buffer
  }
  void MemoryRemoving(const hugemm::MemoryRange& r) override { UnmapDma(r.data, r.length); }
};

TEST(HeaderExamples, MemoryObserver) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  std::vector<std::byte*>& mapped = g_dma_mapped;
  std::vector<std::byte*>& unmapped = g_dma_unmapped;
  auto opened = hugemm::Runtime::Open();
  ASSERT_TRUE(opened.ok()) << opened.status();
  std::unique_ptr<hugemm::Runtime>& rt = *opened;
  absl::StatusOr<hugemm::Buffer> held = rt->MapBuffer(kPageSize2M);
  ASSERT_TRUE(held.ok()) << held.status();
  IovaMapper mapper;
  absl::Status st = rt->AddMemoryObserver(&mapper);  // told of what is held already,
                                                     // then of every change
  HUGEMM_ASSERT_OK(st);
  ASSERT_EQ(mapped.size(), 1u);
  EXPECT_EQ(mapped[0], held->data());
  HUGEMM_ASSERT_OK(held->Free());
  ASSERT_EQ(unmapped.size(), 1u);
  EXPECT_EQ(unmapped[0], mapped[0]);
  HUGEMM_ASSERT_OK(rt->RemoveMemoryObserver(&mapper));
}

// io.h: an O_DIRECT read into a buffer freed while the read is in flight.
TEST(HeaderExamples, Io) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 1);
  // A file on disk (O_DIRECT), 128 KiB of a pattern.
  char path[] = "/var/tmp/hugemm-header-example-XXXXXX";
  const int w = mkstemp(path);
  ASSERT_GE(w, 0);
  std::vector<char> pattern(128 << 10);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<char>(i * 7 + 1);
  ASSERT_EQ(write(w, pattern.data(), pattern.size()), static_cast<ssize_t>(pattern.size()));
  close(w);
  const int fd = open(path, O_RDONLY | O_DIRECT);
  unlink(path);
  ASSERT_GE(fd, 0);
  const uint64_t offset = 0;
  const uint64_t my_tag = 0x7a6;
  const Footprint before = Now();
  {
    auto rt = hugemm::Runtime::Open();
    struct io_uring ring;
    io_uring_queue_init(64, &ring, 0);
    auto io = hugemm::IoRing::Attach(**rt, ring.ring_fd);  // the ring's buffer table
    auto buf = (*rt)->Allocate(128 << 10);                 // any hugemm memory
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    absl::Status st =  // READ_FIXED, pinned
        (*io)->PrepareRead(sqe, fd, buf->data(), 128 << 10, offset, my_tag);
    io_uring_submit(&ring);
    // ... buf may be freed now: its folios stay out of the pool until the completion ...
    hugemm::Folio* folio = (*rt)->Translate(buf->data())->folio;
    HUGEMM_ASSERT_OK(st);
    HUGEMM_ASSERT_OK(buf->Free());
    EXPECT_GT(folio->pincount(), 0);
    io_uring_cqe* cqe;
    io_uring_wait_cqe(&ring, &cqe);
    // The freed buffer's folio, still pinned, holds what the device read.
    EXPECT_EQ(std::memcmp(folio->data, pattern.data(), pattern.size()), 0);
    absl::StatusOr<uint64_t> tag = (*io)->Complete(cqe);  // unpinned; my_tag back
    EXPECT_EQ(cqe->res, 128 << 10);
    io_uring_cqe_seen(&ring, cqe);
    io->reset();  // detach, then
    io_uring_queue_exit(&ring);

    ASSERT_TRUE(tag.ok()) << tag.status();
    EXPECT_EQ(*tag, my_tag);
    EXPECT_EQ(folio->pincount(), 0);
  }
  EXPECT_EQ(Now(), before);
  close(fd);
}

}  // namespace
