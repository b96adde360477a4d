#include "tests/fake_os_model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"

namespace hugemm::testing::fake_internal {
namespace {

constexpr uint64_t kPhysStart = uint64_t{4} << 30;      // pools from 4 GiB up
constexpr uint64_t kAnonPhysStart = uint64_t{1} << 40;  // 4K pages from 1 TiB up

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

int64_t SizePool::free_total() const {
  int64_t n = 0;
  for (const auto& f : free) n += static_cast<int64_t>(f.size());
  return n;
}

Model::Model(FakeMachine m) : machine(std::move(m)), next_anon_pfn(kAnonPhysStart >> 12) {
  // Physical memory laid out once: each pool's pages node by node, then the devices,
  // each aligned to its page size so head PFNs look like the kernel's.
  uint64_t phys = kPhysStart;
  for (const FakeMachine::Pool& p : machine.pools) {
    SizePool pool;
    pool.page_size = p.page_size;
    pool.per_node = p.pages_per_node;
    for (int n = 0; n < machine.nodes; ++n) {
      phys = AlignUp(phys, p.page_size);
      pool.base_pfn.push_back(phys >> 12);
      std::set<int64_t> all;
      for (int64_t i = 0; i < p.pages_per_node; ++i) all.insert(i);
      pool.free.push_back(std::move(all));
      phys += static_cast<uint64_t>(p.pages_per_node) * p.page_size;
    }
    pools.push_back(std::move(pool));
  }
  for (const FakeMachine::DaxDevice& d : machine.dax) {
    phys = AlignUp(phys, uint64_t{1} << 30);
    dax_pfn.push_back(phys >> 12);
    phys += d.size;
  }
}

SizePool* Model::PoolFor(size_t page_size) {
  for (SizePool& p : pools) {
    if (p.page_size == page_size) return &p;
  }
  return nullptr;
}

absl::StatusOr<std::shared_ptr<File>> Model::NewFile(const std::string& name, size_t page_size,
                                                     uint64_t bytes) {
  const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("memfd_create ", name));
  if (bytes > 0 && ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    absl::Status st = ErrnoStatus(errno, "ftruncate");
    ::close(fd);
    return st;
  }
  auto file = std::make_shared<File>();
  file->page_size = page_size;
  file->master = fd;
  return file;
}

absl::StatusOr<int> Model::NewFd(const std::shared_ptr<File>& file) {
  const int fd = ::fcntl(file->master, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "dup");
  ++file->refs;
  fds[fd] = Fd{.kind = FdKind::kFile, .file = file};
  return fd;
}

absl::StatusOr<int> Model::NewSpecialFd(FdKind kind) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open /dev/null");
  fds[fd] = Fd{.kind = kind};
  if (kind == FdKind::kRing) fds[fd].ring = std::make_shared<Ring>();
  if (kind == FdKind::kVfioContainer) {
    fds[fd].dma = std::make_shared<std::map<uint64_t, RingSlot>>();
  }
  return fd;
}

void Model::FreePagesFrom(File& file, uint64_t from) {
  SizePool* pool = PoolFor(file.page_size);
  for (auto it = file.pages.lower_bound(from); it != file.pages.end();) {
    if (pool != nullptr && !file.dax && it->second.node >= 0) {
      const int n = it->second.node;
      pool->free[n].insert(
          static_cast<int64_t>((it->second.pfn - pool->base_pfn[n]) / pool->frames()));
    }
    it = file.pages.erase(it);
  }
  for (auto it = file.reserved.lower_bound(from); it != file.reserved.end();) {
    if (pool != nullptr) --pool->resv;
    it = file.reserved.erase(it);
  }
}

void Model::MaybeRelease(File& file) {
  if (file.refs > 0 || !file.path.empty() || file.released || file.dax) return;
  FreePagesFrom(file, 0);
  ::close(file.master);
  file.master = -1;
  file.released = true;
}

std::map<uintptr_t, Mapping>::iterator Model::Find(uintptr_t va) {
  auto it = maps.upper_bound(va);
  if (it == maps.begin()) return maps.end();
  --it;
  return va < it->first + it->second.length ? it : maps.end();
}

void Model::SplitAt(uintptr_t at) {
  auto it = Find(at);
  if (it == maps.end() || it->first == at) return;
  Mapping upper = it->second;
  const size_t lower_len = at - it->first;
  upper.length = it->second.length - lower_len;
  upper.offset += lower_len;
  it->second.length = lower_len;
  if (upper.file) ++upper.file->refs;
  maps.emplace(at, std::move(upper));
}

bool Model::Covered(uintptr_t start, uintptr_t end) const {
  uintptr_t at = start;
  auto it = maps.upper_bound(at);
  if (it != maps.begin()) --it;
  for (; it != maps.end() && at < end; ++it) {
    if (it->first > at) return false;
    at = std::max(at, it->first + it->second.length);
  }
  return at >= end;
}

void Model::Forget(uintptr_t start, uintptr_t end) {
  SplitAt(start);
  SplitAt(end);
  for (auto it = maps.lower_bound(start); it != maps.end() && it->first < end;) {
    if (std::shared_ptr<File> file = it->second.file) {
      --file->refs;
      MaybeRelease(*file);
    }
    it = maps.erase(it);
  }
  anon_pfns.erase(anon_pfns.lower_bound(start), anon_pfns.lower_bound(end));
}

absl::Status Model::Populate(uintptr_t start, uintptr_t end) {
  for (auto it = Find(start); it != maps.end() && it->first < end; ++it) {
    const Mapping& m = it->second;
    if (!m.file || m.file->dax || m.file->page_size == 4096) continue;
    File& file = *m.file;
    SizePool* pool = PoolFor(file.page_size);
    const uintptr_t from = std::max(start, it->first);
    const uintptr_t to = std::min(end, it->first + m.length);
    const uint64_t first = (m.offset + (from - it->first)) / file.page_size;
    const uint64_t last = (m.offset + (to - it->first) - 1) / file.page_size;
    for (uint64_t idx = first; idx <= last; ++idx) {
      if (file.pages.count(idx)) continue;
      // MPOL_BIND takes from its node only; otherwise the lowest node with a page.
      int node = -1;
      for (int n = 0; n < machine.nodes; ++n) {
        if ((m.node < 0 || m.node == n) && !pool->free[n].empty()) {
          node = n;
          break;
        }
      }
      const bool reserved = file.reserved.count(idx) > 0;
      if (node < 0 || (!reserved && pool->free_total() <= pool->resv)) {
        // As the kernel: a fault that finds no page on the node the mapping is bound to
        // is a SIGBUS, which the prefault reports as EFAULT.
        return ErrnoStatus(node < 0 && m.node >= 0 ? EFAULT : ENOMEM,
                           "madvise(MADV_POPULATE_WRITE)");
      }
      const int64_t page = *pool->free[node].begin();
      pool->free[node].erase(pool->free[node].begin());
      if (reserved) {
        file.reserved.erase(idx);
        --pool->resv;
      }
      file.pages[idx] = Page{
          .node = node, .pfn = pool->base_pfn[node] + static_cast<uint64_t>(page) * pool->frames()};
    }
  }
  return absl::OkStatus();
}

uint64_t Model::PfnAt(uintptr_t va) {
  auto it = Find(va);
  if (it == maps.end()) return kNoPfn;
  const Mapping& m = it->second;
  if (m.prot == PROT_NONE) return kNoPfn;
  const uint64_t off = m.offset + (va - it->first);
  if (m.file && m.file->dax) {
    // The kernel's pagemap shows no PFN for PUD-mapped device-DAX.
    if (m.file->device->align >= (uint64_t{1} << 30)) return kNoPfn;
    return m.file->dax_pfn + off / 4096;
  }
  if (m.file && m.file->page_size > 4096) {
    auto page = m.file->pages.find(off / m.file->page_size);
    if (page == m.file->pages.end()) return kNoPfn;
    return page->second.pfn + (off % m.file->page_size) / 4096;
  }
  // Ordinary memory: a PFN of its own on first sight.
  const uintptr_t page = va & ~uintptr_t{4095};
  auto [pfn, added] = anon_pfns.emplace(page, next_anon_pfn);
  if (added) ++next_anon_pfn;
  return pfn->second;
}

uint64_t Model::FlagsOf(uint64_t pfn) const {
  constexpr uint64_t kHead = uint64_t{1} << 15, kTail = uint64_t{1} << 16;
  constexpr uint64_t kHuge = uint64_t{1} << 17, kNoPage = uint64_t{1} << 20;
  for (const SizePool& p : pools) {
    for (uint64_t base : p.base_pfn) {
      const uint64_t span = static_cast<uint64_t>(p.per_node) * p.frames();
      if (pfn < base || pfn >= base + span) continue;
      return ((pfn - base) % p.frames() == 0 ? kHead : kTail) | kHuge;
    }
  }
  if (pfn >= (kAnonPhysStart >> 12) && pfn < next_anon_pfn) return 0;
  return kNoPage;  // device memory has no struct page to describe, nor has a hole
}

}  // namespace hugemm::testing::fake_internal
