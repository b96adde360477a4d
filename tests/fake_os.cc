// The fake machine's system calls: real mappings and descriptors over ordinary memory,
// with the kernel's huge page rules applied to the model (fake_os_model.h).
#include "tests/fake_os.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/fake_os_model.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace hugemm::testing {

using fake_internal::FdKind;
using fake_internal::File;
using fake_internal::Mapping;

FakeOs::FakeOs(FakeMachine machine)
    : model_(std::make_unique<fake_internal::Model>(std::move(machine))) {}

FakeOs::~FakeOs() {
  std::lock_guard<std::mutex> lock(model_->mu);
  for (const auto& [start, m] : model_->maps) ::munmap(reinterpret_cast<void*>(start), m.length);
  for (const auto& [fd, f] : model_->fds) ::close(fd);
  auto close_master = [](const std::shared_ptr<File>& f) {
    if (f->master >= 0) ::close(f->master);
    f->master = -1;
  };
  for (const auto& [fd, f] : model_->fds) {
    if (f.file) close_master(f.file);
  }
  for (const auto& [start, m] : model_->maps) {
    if (m.file) close_master(m.file);
  }
  for (const auto& [name, f] : model_->names) close_master(f);
  for (const auto& [name, f] : model_->devices) close_master(f);
}

HugePagePool FakeOs::Pool(size_t page_size) const {
  std::lock_guard<std::mutex> lock(model_->mu);
  return model_->PoolView(page_size);
}

size_t FakeOs::live_mappings() const {
  std::lock_guard<std::mutex> lock(model_->mu);
  return model_->maps.size();
}

size_t FakeOs::open_fds() const {
  std::lock_guard<std::mutex> lock(model_->mu);
  return model_->fds.size();
}

size_t FakeOs::pinned_bytes() const {
  std::lock_guard<std::mutex> lock(model_->mu);
  std::set<const fake_internal::Ring*> rings;
  size_t bytes = 0;
  for (const auto& [fd, f] : model_->fds) {
    if (f.ring != nullptr && rings.insert(f.ring.get()).second) bytes += f.ring->pinned_bytes;
  }
  return bytes;
}

std::vector<std::string> FakeOs::FilesIn(const std::string& mount) const {
  std::lock_guard<std::mutex> lock(model_->mu);
  std::vector<std::string> out;
  for (const auto& [path, f] : model_->names) {
    if (absl::StartsWith(path, mount + "/")) out.push_back(path.substr(mount.size() + 1));
  }
  return out;
}

absl::StatusOr<void*> FakeOs::Mmap(void* addr, size_t length, int prot, int flags, int fd,
                                   off_t offset) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  std::shared_ptr<File> file;
  if (!(flags & MAP_ANONYMOUS)) {
    auto it = m.fds.find(fd);
    if (it == m.fds.end()) return ErrnoStatus(EBADF, "mmap");
    if (it->second.kind != FdKind::kFile) return ErrnoStatus(ENODEV, "mmap");
    file = it->second.file;
  } else if (flags & MAP_HUGETLB) {
    return ErrnoStatus(EINVAL, "mmap (the fake machine has no MAP_HUGETLB anonymous memory)");
  }
  const auto off = static_cast<uint64_t>(offset);
  std::vector<uint64_t> to_reserve;
  if (file && file->dax) {
    const uint64_t align = file->device->align;
    if (!(flags & MAP_SHARED) || off % align || length % align ||
        reinterpret_cast<uintptr_t>(addr) % align || off + length > file->device->size) {
      return ErrnoStatus(EINVAL, "mmap");
    }
  } else if (file && file->page_size > 4096) {
    const size_t ps = file->page_size;
    if (off % ps || ((flags & MAP_FIXED) && reinterpret_cast<uintptr_t>(addr) % ps)) {
      return ErrnoStatus(EINVAL, "mmap");
    }
    length = (length + ps - 1) / ps * ps;
    // hugetlb reserves at mmap what the mapping may fault later: a shortage is ENOMEM
    // here, not a SIGBUS at the fault.
    for (uint64_t idx = off / ps; idx < (off + length) / ps; ++idx) {
      if (!file->pages.count(idx) && !file->reserved.count(idx)) to_reserve.push_back(idx);
    }
    fake_internal::SizePool* pool = m.PoolFor(ps);
    if (!(flags & MAP_NORESERVE) &&
        pool->free_total() - pool->resv < static_cast<int64_t>(to_reserve.size())) {
      return ErrnoStatus(ENOMEM, "mmap");
    }
    if (flags & MAP_NORESERVE) to_reserve.clear();
  }
  void* p = ::mmap(addr, length, prot, flags, file ? fd : -1, offset);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap");
  const auto start = reinterpret_cast<uintptr_t>(p);
  if (file) {
    ++file->refs;  // before the old records go: they may hold the file's last reference
    fake_internal::SizePool* pool = m.PoolFor(file->page_size);
    for (uint64_t idx : to_reserve) {
      file->reserved.insert(idx);
      ++pool->resv;
    }
  }
  m.Forget(start, start + length);  // MAP_FIXED replaced whatever was there
  m.maps[start] =
      Mapping{.length = length, .file = file, .offset = off, .prot = prot, .flags = flags};
  return p;
}

absl::Status FakeOs::Munmap(void* addr, size_t length) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const auto start = reinterpret_cast<uintptr_t>(addr);
  if (start % 4096 || length == 0) return ErrnoStatus(EINVAL, "munmap");
  if (::munmap(addr, length) != 0) return ErrnoStatus(errno, "munmap");
  model_->Forget(start, start + (length + 4095) / 4096 * 4096);
  return absl::OkStatus();
}

absl::Status FakeOs::Madvise(void* addr, size_t length, int advice) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const auto start = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t end = start + length;
  const std::string what = absl::StrCat("madvise(", advice, ")");
  if (start % 4096) return ErrnoStatus(EINVAL, what);
  if (!m.Covered(start, end)) return ErrnoStatus(ENOMEM, what);
  if (advice == MADV_POPULATE_WRITE) return m.Populate(start, end);
  if (advice == MADV_DONTFORK) {
    m.SplitAt(start);
    m.SplitAt(end);
    for (auto it = m.maps.lower_bound(start); it != m.maps.end() && it->first < end; ++it) {
      it->second.dontfork = true;
    }
  }
  return absl::OkStatus();
}

// The fake memory has no protection to change: only the arguments are checked.
absl::Status FakeOs::Mprotect(void* addr, size_t length, int /*prot*/) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const auto start = reinterpret_cast<uintptr_t>(addr);
  if (start % 4096) return ErrnoStatus(EINVAL, "mprotect");
  if (!model_->Covered(start, start + length)) return ErrnoStatus(ENOMEM, "mprotect");
  return absl::OkStatus();
}

absl::Status FakeOs::BindToNode(void* addr, size_t length, int node) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  if (node < 0 || node >= 1024) {
    return absl::InvalidArgumentError(absl::StrCat("NUMA node ", node, " out of range"));
  }
  const std::string what = absl::StrCat("mbind to node ", node);
  if (node >= m.machine.nodes) return ErrnoStatus(EINVAL, what);
  const auto start = reinterpret_cast<uintptr_t>(addr);
  if (!m.Covered(start, start + length)) return ErrnoStatus(EFAULT, what);
  m.SplitAt(start);
  m.SplitAt(start + length);
  for (auto it = m.maps.lower_bound(start); it != m.maps.end() && it->first < start + length;
       ++it) {
    it->second.node = node;
  }
  return absl::OkStatus();
}

absl::StatusOr<int> FakeOs::NodeOfAddress(const void* addr) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const auto va = reinterpret_cast<uintptr_t>(addr);
  auto it = model_->Find(va);
  if (it == model_->maps.end())
    return ErrnoStatus(EFAULT, "get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR)");
  const Mapping& m = it->second;
  if (m.file && m.file->dax) return m.file->device->node;
  if (m.file && m.file->page_size > 4096) {
    auto page = m.file->pages.find((m.offset + va - it->first) / m.file->page_size);
    if (page != m.file->pages.end()) return page->second.node;
  }
  return std::max(m.node, 0);
}

absl::StatusOr<int> FakeOs::MemfdCreate(const std::string& name, unsigned int flags) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const std::string what = absl::StrCat("memfd_create ", name);
  size_t page_size = 4096;
  if (flags & MFD_HUGETLB) {
    const unsigned shift = (flags >> MFD_HUGE_SHIFT) & MFD_HUGE_MASK;
    page_size = shift ? size_t{1} << shift : (m.pools.empty() ? 0 : m.pools.front().page_size);
    if (m.PoolFor(page_size) == nullptr) return ErrnoStatus(EINVAL, what);
  }
  absl::StatusOr<std::shared_ptr<File>> file = m.NewFile(name, page_size, 0);
  if (!file.ok()) return file.status();
  absl::StatusOr<int> fd = m.NewFd(*file);
  if (!fd.ok()) ::close((*file)->master);
  return fd;
}

absl::StatusOr<int> FakeOs::Open(const std::string& path, int flags, mode_t /*mode*/) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const std::string what = absl::StrCat("open ", path);
  if (path == "/proc/self/pagemap") return m.NewSpecialFd(FdKind::kPagemap);
  if (path == "/proc/kpageflags") {
    if (!m.machine.root) return ErrnoStatus(EACCES, what);
    return m.NewSpecialFd(FdKind::kKpageflags);
  }
  for (size_t i = 0; i < m.machine.dax.size(); ++i) {
    const FakeMachine::DaxDevice& d = m.machine.dax[i];
    if (path != "/dev/" + d.name) continue;
    if (d.driver != "device_dax") return ErrnoStatus(ENXIO, what);  // no character device
    std::shared_ptr<File>& dev = m.devices[d.name];
    if (!dev) {
      absl::StatusOr<std::shared_ptr<File>> file = m.NewFile(d.name, d.align, d.size);
      if (!file.ok()) return file.status();
      dev = *file;
      dev->dax = true;
      dev->device = &d;
      dev->dax_pfn = m.dax_pfn[i];
    }
    return m.NewFd(dev);
  }
  for (const FakeMachine::Mount& mount : m.machine.mounts) {
    if (!absl::StartsWith(path, mount.path + "/")) continue;
    const std::string name = path.substr(mount.path.size() + 1);
    if (name.empty() || absl::StrContains(name, '/')) return ErrnoStatus(ENOENT, what);
    auto it = m.names.find(path);
    if (it != m.names.end()) {
      if ((flags & O_CREAT) && (flags & O_EXCL)) return ErrnoStatus(EEXIST, what);
      return m.NewFd(it->second);
    }
    if (!(flags & O_CREAT)) return ErrnoStatus(ENOENT, what);
    absl::StatusOr<std::shared_ptr<File>> file = m.NewFile(name, mount.page_size, 0);
    if (!file.ok()) return file.status();
    (*file)->path = path;
    m.names[path] = *file;
    return m.NewFd(*file);
  }
  return ErrnoStatus(ENOENT, what);
}

absl::Status FakeOs::Close(int fd) {
  std::lock_guard<std::mutex> lock(model_->mu);
  auto it = model_->fds.find(fd);
  if (it == model_->fds.end()) return ErrnoStatus(EBADF, "close");
  ::close(fd);
  std::shared_ptr<File> file = it->second.file;
  model_->fds.erase(it);
  if (file) {
    --file->refs;
    model_->MaybeRelease(*file);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> FakeOs::Duplicate(int fd) {
  std::lock_guard<std::mutex> lock(model_->mu);
  auto it = model_->fds.find(fd);
  if (it == model_->fds.end()) return ErrnoStatus(EBADF, "fcntl F_DUPFD_CLOEXEC");
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return ErrnoStatus(errno, "fcntl F_DUPFD_CLOEXEC");
  fake_internal::Fd& entry = model_->fds[copy] = it->second;
  if (entry.file) ++entry.file->refs;
  return copy;
}

absl::Status FakeOs::Ftruncate(int fd, off_t length) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const std::string what = absl::StrCat("ftruncate to ", length, " bytes");
  auto it = model_->fds.find(fd);
  if (it == model_->fds.end()) return ErrnoStatus(EBADF, what);
  File* file = it->second.file.get();
  if (file == nullptr || file->dax) return ErrnoStatus(EINVAL, what);
  const auto bytes = static_cast<uint64_t>(length);
  if (bytes % file->page_size) return ErrnoStatus(EINVAL, what);
  if (::ftruncate(fd, length) != 0) return ErrnoStatus(errno, what);
  model_->FreePagesFrom(*file, bytes / file->page_size);
  return absl::OkStatus();
}

absl::StatusOr<struct stat> FakeOs::Fstat(int fd) {
  std::lock_guard<std::mutex> lock(model_->mu);
  if (!model_->fds.count(fd)) return ErrnoStatus(EBADF, "fstat");
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat");
  return st;
}

absl::StatusOr<struct stat> FakeOs::Stat(const std::string& path) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  struct stat st = {};
  if (auto it = m.names.find(path); it != m.names.end()) {
    if (::fstat(it->second->master, &st) != 0) return ErrnoStatus(errno, "stat " + path);
    return st;
  }
  for (const FakeMachine::Mount& mount : m.machine.mounts) {
    if (path == mount.path) {
      st.st_mode = S_IFDIR | 0755;
      return st;
    }
  }
  for (const FakeMachine::DaxDevice& d : m.machine.dax) {
    if (path == "/dev/" + d.name) {
      st.st_mode = S_IFCHR | 0600;
      return st;
    }
  }
  const std::map<std::string, std::string> files = m.VirtualFiles();
  if (auto it = files.find(path); it != files.end()) {
    st.st_mode = S_IFREG | 0444;
    st.st_size = static_cast<off_t>(it->second.size());
    return st;
  }
  auto below = files.lower_bound(path + "/");
  if (below != files.end() && absl::StartsWith(below->first, path + "/")) {
    st.st_mode = S_IFDIR | 0555;
    return st;
  }
  return ErrnoStatus(ENOENT, "stat " + path);
}

absl::Status FakeOs::Unlink(const std::string& path) {
  std::lock_guard<std::mutex> lock(model_->mu);
  auto it = model_->names.find(path);
  if (it == model_->names.end()) return ErrnoStatus(ENOENT, "unlink " + path);
  std::shared_ptr<File> file = it->second;
  model_->names.erase(it);
  file->path.clear();
  model_->MaybeRelease(*file);
  return absl::OkStatus();
}

absl::Status FakeOs::Pread(int fd, void* buf, size_t length, off_t offset) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const std::string what = absl::StrCat("pread ", length, " bytes at offset ", offset);
  auto it = m.fds.find(fd);
  if (it == m.fds.end()) return ErrnoStatus(EBADF, what);
  auto* out = static_cast<uint64_t*>(buf);
  switch (it->second.kind) {
    case FdKind::kPagemap:
    case FdKind::kKpageflags:
      if (length % 8 || offset % 8) return ErrnoStatus(EINVAL, what);
      for (size_t i = 0; i < length / 8; ++i) {
        const uint64_t index = static_cast<uint64_t>(offset) / 8 + i;
        if (it->second.kind == FdKind::kKpageflags) {
          out[i] = m.FlagsOf(index);
          continue;
        }
        const uint64_t pfn = m.PfnAt(index * 4096);
        // Present, with the PFN only for root (bit 63: present; bits 0-54: PFN).
        out[i] =
            pfn == fake_internal::kNoPfn ? 0 : (uint64_t{1} << 63) | (m.machine.root ? pfn : 0);
      }
      return absl::OkStatus();
    case FdKind::kRing:
    case FdKind::kVfioContainer:
      return ErrnoStatus(EINVAL, what);
    case FdKind::kFile:
      break;
  }
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, static_cast<char*>(buf) + done, length - done,
                              offset + static_cast<off_t>(done));
    if (n < 0) return ErrnoStatus(errno, what);
    if (n == 0) return absl::OutOfRangeError("pread: end of file");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FakeOs::ReadFile(const std::string& path) {
  std::lock_guard<std::mutex> lock(model_->mu);
  if (path == "/proc/self/smaps") return model_->Smaps();
  std::map<std::string, std::string> files = model_->VirtualFiles();
  auto it = files.find(path);
  if (it == files.end()) return ErrnoStatus(ENOENT, "cannot read " + path);
  return it->second;
}

absl::StatusOr<std::vector<std::string>> FakeOs::ListDir(const std::string& path) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  std::set<std::string> names;
  for (const FakeMachine::Mount& mount : m.machine.mounts) {
    if (path != mount.path) continue;
    for (const auto& [file, f] : m.names) {
      if (absl::StartsWith(file, path + "/")) names.insert(file.substr(path.size() + 1));
    }
    return std::vector<std::string>(names.begin(), names.end());
  }
  const std::string prefix = path + "/";
  for (const auto& [file, contents] : m.VirtualFiles()) {
    if (!absl::StartsWith(file, prefix)) continue;
    const std::string rest = file.substr(prefix.size());
    names.insert(rest.substr(0, rest.find('/')));
  }
  if (names.empty()) return ErrnoStatus(ENOENT, "cannot list " + path);
  return std::vector<std::string>(names.begin(), names.end());
}

absl::StatusOr<std::string> FakeOs::HugetlbfsMountFor(size_t page_size) {
  for (const FakeMachine::Mount& mount : model_->machine.mounts) {
    if (mount.page_size == page_size) return mount.path;
  }
  return absl::NotFoundError(absl::StrCat("no hugetlbfs mount with ", page_size >> 10, "kB pages"));
}

absl::StatusOr<int> FakeOs::IoUringSetup(unsigned entries) {
  std::lock_guard<std::mutex> lock(model_->mu);
  if (entries == 0) return ErrnoStatus(EINVAL, "io_uring_setup");
  return model_->NewSpecialFd(FdKind::kRing);
}

namespace {

// The ring behind `fd`, or null.
fake_internal::Ring* RingOf(fake_internal::Model& m, int fd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m.mu) {
  auto it = m.fds.find(fd);
  return it == m.fds.end() || it->second.kind != FdKind::kRing ? nullptr : it->second.ring.get();
}

// What every ring's table pins, clones aside: the kernel counts a buffer once.
size_t PinnedByRings(const fake_internal::Model& m) ABSL_EXCLUSIVE_LOCKS_REQUIRED(m.mu) {
  std::set<const fake_internal::Ring*> rings;
  size_t bytes = 0;
  for (const auto& [fd, f] : m.fds) {
    if (f.ring != nullptr && rings.insert(f.ring.get()).second) bytes += f.ring->pinned_bytes;
  }
  return bytes;
}

void Recount(fake_internal::Ring& ring) {
  ring.pinned_bytes = 0;
  for (const fake_internal::RingSlot& s : ring.slots) {
    if (!s.cloned) ring.pinned_bytes += s.length;
  }
}

}  // namespace

absl::Status FakeOs::IoUringRegisterBuffers(int ring_fd, absl::Span<const iovec> buffers) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const std::string what = absl::StrCat("io_uring_register of ", buffers.size(), " buffers");
  fake_internal::Ring* ring = RingOf(*model_, ring_fd);
  if (ring == nullptr) return ErrnoStatus(EBADF, what);
  if (ring->registered) return ErrnoStatus(EBUSY, what);
  std::vector<fake_internal::RingSlot> slots;
  size_t bytes = 0;
  for (const iovec& v : buffers) {
    const auto start = reinterpret_cast<uintptr_t>(v.iov_base);
    if (!model_->Covered(start, start + v.iov_len)) return ErrnoStatus(EFAULT, what);
    slots.push_back({start, v.iov_len, false});
    bytes += v.iov_len;
  }
  const size_t limit = model_->machine.memlock_bytes;
  if (limit != 0 && PinnedByRings(*model_) + bytes > limit) return ErrnoStatus(ENOMEM, what);
  ring->registered = true;
  ring->slots = std::move(slots);
  Recount(*ring);
  return absl::OkStatus();
}

absl::Status FakeOs::IoUringUnregisterBuffers(int ring_fd) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Ring* ring = RingOf(*model_, ring_fd);
  if (ring == nullptr) return ErrnoStatus(EBADF, "io_uring_unregister");
  if (!ring->registered) return ErrnoStatus(ENXIO, "io_uring_unregister");
  ring->registered = false;
  ring->slots.clear();
  ring->pinned_bytes = 0;
  return absl::OkStatus();
}

absl::Status FakeOs::IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const std::string what = absl::StrCat("io_uring_register of a sparse table of ", slots);
  fake_internal::Ring* ring = RingOf(*model_, ring_fd);
  if (ring == nullptr) return ErrnoStatus(EBADF, what);
  if (ring->registered) return ErrnoStatus(EBUSY, what);
  if (slots == 0 || slots > (1u << 14)) return ErrnoStatus(EINVAL, what);
  ring->registered = true;
  ring->slots.assign(slots, {});
  ring->pinned_bytes = 0;
  return absl::OkStatus();
}

absl::Status FakeOs::IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                          absl::Span<const iovec> buffers) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const std::string what = absl::StrCat("io_uring_register update of buffers ", first_slot);
  fake_internal::Ring* ring = RingOf(*model_, ring_fd);
  if (ring == nullptr) return ErrnoStatus(EBADF, what);
  if (!ring->registered) return ErrnoStatus(ENXIO, what);
  if (first_slot + buffers.size() > ring->slots.size()) return ErrnoStatus(EINVAL, what);
  size_t adding = 0;
  for (const iovec& v : buffers) {
    const auto start = reinterpret_cast<uintptr_t>(v.iov_base);
    if (v.iov_base == nullptr && v.iov_len == 0) continue;
    if (v.iov_base == nullptr || v.iov_len == 0 || v.iov_len > (size_t{1} << 30) ||
        !model_->Covered(start, start + v.iov_len)) {
      return ErrnoStatus(EFAULT, what);
    }
    adding += v.iov_len;
  }
  const size_t limit = model_->machine.memlock_bytes;
  if (limit != 0 && PinnedByRings(*model_) + adding > limit) return ErrnoStatus(ENOMEM, what);
  for (size_t i = 0; i < buffers.size(); ++i) {
    ring->slots[first_slot + i] = {reinterpret_cast<uintptr_t>(buffers[i].iov_base),
                                   buffers[i].iov_len, false};
  }
  Recount(*ring);
  return absl::OkStatus();
}

absl::Status FakeOs::IoUringCloneBuffers(int dst_fd, int src_fd, const IoUringCloneRange& range) {
  std::lock_guard<std::mutex> lock(model_->mu);
  const std::string what = "io_uring_register clone of buffers";
  using Clone = FakeMachine::Clone;
  const Clone kernel = model_->machine.io_uring_clone;
  if (kernel == Clone::kNone) return ErrnoStatus(EINVAL, what);
  fake_internal::Ring* dst = RingOf(*model_, dst_fd);
  fake_internal::Ring* src = RingOf(*model_, src_fd);
  if (dst == nullptr || src == nullptr) return ErrnoStatus(EBADF, what);
  const bool ranged = range.slots != 0 || range.src_slot != 0 || range.dst_slot != 0;
  if (kernel == Clone::kWhole) {
    // As 6.12 does: a destination with a table is refused before the arguments are read.
    if (dst->registered) return ErrnoStatus(EBUSY, what);
    if (ranged || range.replace) return ErrnoStatus(EINVAL, what);
  }
  if (!src->registered) return ErrnoStatus(ENXIO, what);
  if (dst->registered && !range.replace) return ErrnoStatus(EBUSY, what);
  const size_t n = range.slots == 0 ? src->slots.size() : range.slots;
  if (range.src_slot + n > src->slots.size()) return ErrnoStatus(EINVAL, what);
  std::vector<fake_internal::RingSlot> table = dst->slots;
  if (table.size() < range.dst_slot + n) table.resize(range.dst_slot + n);
  for (size_t i = 0; i < n; ++i) {
    fake_internal::RingSlot s = src->slots[range.src_slot + i];
    s.cloned = s.length != 0;
    table[range.dst_slot + i] = s;
  }
  dst->registered = true;
  dst->slots = std::move(table);
  Recount(*dst);
  return absl::OkStatus();
}

iovec FakeOs::RingSlotOf(int ring_fd, unsigned slot) const {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Ring* ring = RingOf(*model_, ring_fd);
  if (ring == nullptr || slot >= ring->slots.size()) return {nullptr, 0};
  const fake_internal::RingSlot& s = ring->slots[slot];
  return {reinterpret_cast<void*>(s.start), s.length};
}

absl::StatusOr<int> FakeOs::OpenVfioContainer() {
  std::lock_guard<std::mutex> lock(model_->mu);
  return model_->NewSpecialFd(FdKind::kVfioContainer);
}

namespace {

// The mappings of the container behind `fd`, or null.
std::map<uint64_t, fake_internal::RingSlot>* ContainerOf(fake_internal::Model& m, int fd)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(m.mu) {
  auto it = m.fds.find(fd);
  return it == m.fds.end() || it->second.kind != FdKind::kVfioContainer ? nullptr
                                                                        : it->second.dma.get();
}

}  // namespace

absl::Status FakeOs::VfioMapDma(int container_fd, const void* va, size_t length, uint64_t iova) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const std::string what =
      absl::StrCat("VFIO_IOMMU_MAP_DMA of ", length, " bytes at IOVA 0x", absl::Hex(iova));
  if (m.fds.find(container_fd) == m.fds.end()) return ErrnoStatus(EBADF, what);
  std::map<uint64_t, fake_internal::RingSlot>* c = ContainerOf(m, container_fd);
  if (c == nullptr) return ErrnoStatus(ENOTTY, what);
  const auto start = reinterpret_cast<uintptr_t>(va);
  constexpr uint64_t kMask = 4095;
  if (length == 0 || ((start | iova | length) & kMask) != 0 || iova + length < iova) {
    return ErrnoStatus(EINVAL, what);
  }
  if (!m.Covered(start, start + length)) return ErrnoStatus(EFAULT, what);
  auto next = c->lower_bound(iova);
  if (next != c->end() && next->first < iova + length) return ErrnoStatus(EEXIST, what);
  if (next != c->begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.length > iova) return ErrnoStatus(EEXIST, what);
  }
  (*c)[iova] = fake_internal::RingSlot{start, length, false};
  return absl::OkStatus();
}

absl::Status FakeOs::VfioUnmapDma(int container_fd, uint64_t iova, size_t length) {
  std::lock_guard<std::mutex> lock(model_->mu);
  fake_internal::Model& m = *model_;
  const std::string what =
      absl::StrCat("VFIO_IOMMU_UNMAP_DMA of ", length, " bytes at IOVA 0x", absl::Hex(iova));
  if (m.fds.find(container_fd) == m.fds.end()) return ErrnoStatus(EBADF, what);
  std::map<uint64_t, fake_internal::RingSlot>* c = ContainerOf(m, container_fd);
  if (c == nullptr) return ErrnoStatus(ENOTTY, what);
  auto it = c->find(iova);
  // Type1 unmaps whole mappings only; a range that would split one is refused.
  if (it == c->end() || it->second.length != length) return ErrnoStatus(EINVAL, what);
  c->erase(it);
  return absl::OkStatus();
}

std::map<uint64_t, iovec> FakeOs::VfioMappings(int container_fd) const {
  std::lock_guard<std::mutex> lock(model_->mu);
  std::map<uint64_t, iovec> out;
  std::map<uint64_t, fake_internal::RingSlot>* c = ContainerOf(*model_, container_fd);
  if (c == nullptr) return out;
  for (const auto& [iova, s] : *c) out[iova] = {reinterpret_cast<void*>(s.start), s.length};
  return out;
}

}  // namespace hugemm::testing
