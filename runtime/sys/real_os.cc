// The real OS: each method is one system call (or one libhugetlbfs lookup) and turns
// errno into a status that names the call.
#include <dirent.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/kcmp.h>
#include <linux/vfio.h>
#include <numaif.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
extern "C" {  // hugetlbfs.h has no C++ guards
#include <hugetlbfs.h>
}

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"

namespace hugemm {
namespace {

class RealOs final : public Os {
 public:
  absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                             off_t offset) override {
    void* p = ::mmap(addr, length, prot, flags, fd, offset);
    if (p == MAP_FAILED) return ErrnoStatus(errno, "mmap");
    return p;
  }

  absl::Status Munmap(void* addr, size_t length) override {
    if (::munmap(addr, length) != 0) return ErrnoStatus(errno, "munmap");
    return absl::OkStatus();
  }

  absl::Status Madvise(void* addr, size_t length, int advice) override {
    if (::madvise(addr, length, advice) != 0) {
      return ErrnoStatus(errno, absl::StrCat("madvise(", advice, ")"));
    }
    return absl::OkStatus();
  }

  absl::Status BindToNode(void* addr, size_t length, int node) override {
    constexpr int kMaxNodes = 1024;
    constexpr int kBits = 8 * sizeof(unsigned long);
    if (node < 0 || node >= kMaxNodes) {
      return absl::InvalidArgumentError(absl::StrCat("NUMA node ", node, " out of range"));
    }
    unsigned long mask[kMaxNodes / kBits] = {};
    mask[node / kBits] |= 1UL << (node % kBits);
    if (::mbind(addr, length, MPOL_BIND, mask, kMaxNodes, MPOL_MF_STRICT) != 0) {
      return ErrnoStatus(errno, absl::StrCat("mbind to node ", node));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> NodeOfAddress(const void* addr) override {
    int node = -1;
    if (::get_mempolicy(&node, nullptr, 0, const_cast<void*>(addr), MPOL_F_NODE | MPOL_F_ADDR) !=
        0) {
      return ErrnoStatus(errno, "get_mempolicy(MPOL_F_NODE|MPOL_F_ADDR)");
    }
    return node;
  }

  // maxnode counts one bit more than the mask holds: the kernel reads maxnode - 1 bits.
  absl::StatusOr<MemoryPolicy> ThreadMemoryPolicy() override {
    MemoryPolicy policy;
    if (::get_mempolicy(&policy.mode, policy.nodes.data(), MemoryPolicy::kMaxNodes + 1, nullptr,
                        0) != 0) {
      return ErrnoStatus(errno, "get_mempolicy");
    }
    return policy;
  }

  absl::Status SetThreadMemoryPolicy(const MemoryPolicy& policy) override {
    if (::set_mempolicy(policy.mode, policy.nodes.data(), MemoryPolicy::kMaxNodes + 1) != 0) {
      return ErrnoStatus(errno, "set_mempolicy");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int> MemfdCreate(const std::string& name, unsigned int flags) override {
    int fd = ::memfd_create(name.c_str(), flags);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("memfd_create ", name));
    return fd;
  }

  absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode) override {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
    return fd;
  }

  absl::Status Close(int fd) override {
    if (::close(fd) != 0) return ErrnoStatus(errno, "close");
    return absl::OkStatus();
  }

  absl::Status Ftruncate(int fd, off_t length) override {
    if (::ftruncate(fd, length) != 0) {
      return ErrnoStatus(errno, absl::StrCat("ftruncate to ", length, " bytes"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<struct stat> Fstat(int fd) override {
    struct stat st;
    if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat");
    return st;
  }

  absl::StatusOr<struct stat> Stat(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
    return st;
  }

  absl::Status Unlink(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus(errno, absl::StrCat("unlink ", path));
    return absl::OkStatus();
  }

  absl::Status Pread(int fd, void* buf, size_t length, off_t offset) override {
    auto* out = static_cast<char*>(buf);
    size_t done = 0;
    while (done < length) {
      ssize_t n = ::pread(fd, out + done, length - done, offset + static_cast<off_t>(done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, absl::StrCat("pread ", length, " bytes at offset ", offset));
      }
      if (n == 0) {
        return absl::OutOfRangeError(
            absl::StrCat("pread: end of file at offset ", offset + static_cast<off_t>(done)));
      }
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    // read(2) into a string, not a stream: a stream would swallow a failure of the heap
    // (or of a read) part way and hand back a file cut short; here the error comes
    // back, or the std::bad_alloc goes on to the caller, and the descriptor is closed.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      return ErrnoStatus(err, absl::StrCat("cannot read ", path));
    }
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    std::string text;
    char chunk[16384];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n == 0) return text;
      if (n > 0) {
        text.append(chunk, static_cast<size_t>(n));
      } else if (const int err = errno; err != EINTR) {
        return ErrnoStatus(err, absl::StrCat("error reading ", path));
      }
    }
  }

  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    // Closed on every way out, a std::bad_alloc from the names included.
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
    if (dir == nullptr) return ErrnoStatus(errno, absl::StrCat("cannot list ", path));
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(dir.get())) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    dir.reset();
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::StatusOr<std::string> HugetlbfsMountFor(size_t page_size) override {
    const char* found = hugetlbfs_find_path_for_size(static_cast<long>(page_size));
    if (found == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("no hugetlbfs mount with ", PageSizeName(page_size), " pages"));
    }
    return std::string(found);
  }

  // The raw system calls: a ring that only holds registrations needs neither its
  // submission nor its completion queue mapped.
  absl::StatusOr<int> IoUringSetup(unsigned entries) override {
    io_uring_params params = {};
    const long fd = ::syscall(__NR_io_uring_setup, entries, &params);
    if (fd < 0) return ErrnoStatus(errno, "io_uring_setup");
    return static_cast<int>(fd);
  }

  absl::Status IoUringRegisterBuffers(int ring_fd, absl::Span<const iovec> buffers) override {
    if (::syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS, buffers.data(),
                  static_cast<unsigned>(buffers.size())) != 0) {
      return ErrnoStatus(errno, absl::StrCat("io_uring_register of ", buffers.size(), " buffers"));
    }
    return absl::OkStatus();
  }

  absl::Status IoUringUnregisterBuffers(int ring_fd) override {
    // Before Linux 6.13 the call waits, interruptibly, for the ring's requests in flight
    // that hold a reference on its registered resources, and a signal ends the wait with
    // EINTR, the table still registered: it is asked again until it is gone.
    while (::syscall(__NR_io_uring_register, ring_fd, IORING_UNREGISTER_BUFFERS, nullptr, 0) != 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "io_uring_unregister");
    }
    return absl::OkStatus();
  }

  absl::Status IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) override {
    io_uring_rsrc_register reg = {};
    reg.nr = slots;
    reg.flags = IORING_RSRC_REGISTER_SPARSE;
    if (::syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS2, &reg, sizeof(reg)) !=
        0) {
      return ErrnoStatus(
          errno, absl::StrCat("io_uring_register of a sparse table of ", slots, " buffers"));
    }
    return absl::OkStatus();
  }

  absl::Status IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                    absl::Span<const iovec> buffers) override {
    // No tags: the kernel reads them only through a non-null pointer, so emptying a slot
    // as memory goes needs no heap (which may be what ran out).
    io_uring_rsrc_update2 up = {};
    up.offset = first_slot;
    up.data = reinterpret_cast<uintptr_t>(buffers.data());
    up.tags = 0;
    up.nr = static_cast<unsigned>(buffers.size());
    const long n =
        ::syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS_UPDATE, &up, sizeof(up));
    if (n < 0) {
      return ErrnoStatus(errno, absl::StrCat("io_uring_register update of buffers ", first_slot,
                                             "..", first_slot + buffers.size() - 1));
    }
    if (static_cast<size_t>(n) != buffers.size()) {
      // The kernel stops at the first slot it cannot fill and reports how far it got.
      return ErrnoStatus(EIO,
                         absl::StrCat("io_uring_register update of buffers ", first_slot, "..",
                                      first_slot + buffers.size() - 1, ": only ", n, " updated"));
    }
    return absl::OkStatus();
  }

  absl::Status IoUringCloneBuffers(int dst_fd, int src_fd,
                                   const IoUringCloneRange& range) override {
    // Debian 12's headers predate the call: its number and argument, from the kernel's
    // uapi (include/uapi/linux/io_uring.h, 6.13).
    constexpr unsigned kRegisterCloneBuffers = 30;
    constexpr uint32_t kDstReplace = 1u << 1;
    struct {
      uint32_t src_fd, flags, src_off, dst_off, nr, pad[3];
    } arg = {static_cast<uint32_t>(src_fd),
             range.replace ? kDstReplace : 0u,
             range.src_slot,
             range.dst_slot,
             range.slots,
             {0, 0, 0}};
    if (::syscall(__NR_io_uring_register, dst_fd, kRegisterCloneBuffers, &arg, 1) != 0) {
      return ErrnoStatus(
          errno, range.slots == 0
                     ? std::string("io_uring_register clone of a buffer table")
                     : absl::StrCat("io_uring_register clone of buffers ", range.src_slot, "..",
                                    range.src_slot + range.slots - 1, " to ", range.dst_slot));
    }
    return absl::OkStatus();
  }

  absl::Status VfioMapDma(int container_fd, const void* va, size_t length, uint64_t iova) override {
    vfio_iommu_type1_dma_map map = {};
    map.argsz = sizeof(map);
    map.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
    map.vaddr = reinterpret_cast<uintptr_t>(va);
    map.iova = iova;
    map.size = length;
    if (::ioctl(container_fd, VFIO_IOMMU_MAP_DMA, &map) != 0) {
      return ErrnoStatus(errno, absl::StrCat("VFIO_IOMMU_MAP_DMA of ", length, " bytes at IOVA 0x",
                                             absl::Hex(iova)));
    }
    return absl::OkStatus();
  }

  absl::Status VfioUnmapDma(int container_fd, uint64_t iova, size_t length) override {
    vfio_iommu_type1_dma_unmap unmap = {};
    unmap.argsz = sizeof(unmap);
    unmap.iova = iova;
    unmap.size = length;
    const std::string what =
        absl::StrCat("VFIO_IOMMU_UNMAP_DMA of ", length, " bytes at IOVA 0x", absl::Hex(iova));
    if (::ioctl(container_fd, VFIO_IOMMU_UNMAP_DMA, &unmap) != 0) return ErrnoStatus(errno, what);
    // The kernel reports in `size` how much it unmapped: all of one mapping, or nothing.
    if (unmap.size != length) {
      return ErrnoStatus(EINVAL, absl::StrCat(what, ": ", unmap.size, " bytes unmapped"));
    }
    return absl::OkStatus();
  }

  absl::Status VfioCheckContainer(int container_fd) override {
    const int version = ::ioctl(container_fd, VFIO_GET_API_VERSION);
    if (version < 0) {
      const int err = errno;
      const char* why = " (not a VFIO container)";
      if (err == EBADF) {
        // Open with O_PATH (no ioctl through it), or not open at all.
        const int flags = ::fcntl(container_fd, F_GETFL);
        why = flags != -1 && (flags & O_PATH) != 0 ? " (opened with O_PATH, which allows no ioctl)"
                                                   : " (not open)";
      }
      return ErrnoStatus(err,
                         absl::StrCat("VFIO_GET_API_VERSION on descriptor ", container_fd, why));
    }
    if (version != VFIO_API_VERSION) {
      return ErrnoStatus(EPROTO, absl::StrCat("VFIO_GET_API_VERSION: version ", version, ", not ",
                                              VFIO_API_VERSION));
    }
    vfio_iommu_type1_info info = {};
    info.argsz = sizeof(info);
    if (::ioctl(container_fd, VFIO_IOMMU_GET_INFO, &info) != 0) {
      const int err = errno;
      return ErrnoStatus(err, absl::StrCat("VFIO_IOMMU_GET_INFO on VFIO container ", container_fd,
                                           " (no IOMMU set: VFIO_SET_IOMMU first)"));
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<int> Os::Duplicate(int fd) {
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) {
    const int err = errno;
    return ErrnoStatus(
        err, absl::StrCat("duplicating descriptor ", fd, err == EBADF ? " (not open)" : ""));
  }
  return copy;
}

absl::StatusOr<bool> Os::SameFile(int a, int b) {
  const pid_t self = ::getpid();
  const long r = ::syscall(SYS_kcmp, self, self, KCMP_FILE, a, b);
  if (r == 0) return true;
  if (r > 0) return false;
  const int err = errno;
  if (err == EBADF) return false;
  return ErrnoStatus(err, absl::StrCat("kcmp of descriptors ", a, " and ", b));
}

absl::Status Os::Mprotect(void* addr, size_t length, int prot) {
  if (::mprotect(addr, length, prot) != 0) return ErrnoStatus(errno, "mprotect");
  return absl::OkStatus();
}

absl::Status Os::VfioCheckContainer(int /*container_fd*/) { return absl::OkStatus(); }

absl::StatusOr<MemoryPolicy> Os::ThreadMemoryPolicy() { return MemoryPolicy{}; }

absl::Status Os::SetThreadMemoryPolicy(const MemoryPolicy& /*policy*/) { return absl::OkStatus(); }

Os& Os::Default() {
  static Os* real = new RealOs();
  return *real;
}

}  // namespace hugemm
