// The operating system as hugemm calls it.
//
// Every system call of the library and every file it reads under /proc and /sys goes
// through an Os, passed per instance through options (BackingOptions::os,
// AllocatorOptions::os, RuntimeOptions::os), as LevelDB passes an Env. The default is the
// real OS (Os::Default()). A test passes a fake machine (tests/fake_os.h) to run the
// allocator and the memory sources without root and without huge pages, or a wrapper
// that fails a chosen call (tests/faulty_os.h) to check that every error path unwinds.
//
//   hugemm::Os& os = hugemm::Os::Default();
//   auto backing = hugemm::Backing::Create({.kind = hugemm::BackingKind::kHugetlb, .os = &os});
//
// Errors: every method reports failure with ErrnoStatus(errno, what): the status code
// follows errno (absl::ErrnoToStatusCode), the message names the call and the errno
// ("mmap: Cannot allocate memory (ENOMEM)"), and ErrnoOf() gives the errno back.
//
// Thread safety: an Os is called from many threads at once; every implementation must be
// thread-safe. The real one keeps no state.
#ifndef HUGEMM_OS_H_
#define HUGEMM_OS_H_

#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace hugemm {

// A status for a failed system call: "what: Cannot allocate memory (ENOMEM)", its code
// from absl::ErrnoToStatusCode(err), the errno kept for ErrnoOf(). Never OK: err 0 (a call
// that failed without an errno) gives Unknown, "what: failed without an errno".
[[nodiscard]] absl::Status ErrnoStatus(int err, absl::string_view what);

// The errno a status was built from by ErrnoStatus, also after it was annotated by the
// layers above; 0 when it carries none.
[[nodiscard]] int ErrnoOf(const absl::Status& status);

// A thread's NUMA memory policy as get_mempolicy(2) reports it and set_mempolicy(2)
// takes it back: the mode (MPOL_DEFAULT, MPOL_BIND, ...) with its mode flags ORed in
// (MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES, MPOL_F_NUMA_BALANCING), and the nodes (the
// ones the thread named when a flag says they are kept as named).
struct MemoryPolicy {
  static constexpr int kMaxNodes = 1024;
  int mode = 0;  // MPOL_DEFAULT
  std::array<unsigned long, kMaxNodes / (8 * sizeof(unsigned long))> nodes{};

  // Node `node` (0 .. kMaxNodes - 1) added to `nodes`; whether it is in them.
  void AddNode(int node) { nodes[node / kBitsPerWord] |= 1UL << (node % kBitsPerWord); }
  bool HasNode(int node) const {
    return (nodes[node / kBitsPerWord] >> (node % kBitsPerWord)) & 1UL;
  }
  bool operator==(const MemoryPolicy&) const = default;

 private:
  static constexpr int kBitsPerWord = 8 * sizeof(unsigned long);
};

class Os {
 public:
  virtual ~Os() = default;

  // The real OS: system calls, /proc and /sys, libhugetlbfs for mounts. Lives for the
  // whole process.
  static Os& Default();

  // --- Memory ---
  // mmap(2): the mapping's address.
  [[nodiscard]] virtual absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags,
                                                   int fd, off_t offset) = 0;
  // munmap(2).
  virtual absl::Status Munmap(void* addr, size_t length) = 0;
  // madvise(2): MADV_POPULATE_WRITE (a shortage fails here, never as a later SIGBUS),
  // MADV_DONTFORK.
  [[nodiscard]] virtual absl::Status Madvise(void* addr, size_t length, int advice) = 0;
  // mprotect(2). The default calls the kernel's, for an Os whose Mmap returns the
  // kernel's mappings; an Os that fakes memory overrides it.
  [[nodiscard]] virtual absl::Status Mprotect(void* addr, size_t length, int prot);
  // mbind(addr, length, MPOL_BIND, {node}, MPOL_MF_STRICT). InvalidArgument for a node
  // outside 0..1023.
  [[nodiscard]] virtual absl::Status BindToNode(void* addr, size_t length, int node) = 0;
  // get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR): the node of the page holding `addr`.
  [[nodiscard]] virtual absl::StatusOr<int> NodeOfAddress(const void* addr) = 0;
  // get_mempolicy(2) without an address: the calling thread's memory policy. The default
  // answers MPOL_DEFAULT, for an Os that fakes memory.
  [[nodiscard]] virtual absl::StatusOr<MemoryPolicy> ThreadMemoryPolicy();
  // set_mempolicy(2): the calling thread's memory policy becomes `policy` (EINVAL for
  // nodes the process's cpuset does not allow or that have no memory). The default
  // answers OK and changes nothing.
  [[nodiscard]] virtual absl::Status SetThreadMemoryPolicy(const MemoryPolicy& policy);

  // --- Files ---
  // memfd_create(2): the new descriptor.
  [[nodiscard]] virtual absl::StatusOr<int> MemfdCreate(const std::string& name,
                                                        unsigned int flags) = 0;
  // open(2) with O_CLOEXEC added: the new descriptor.
  [[nodiscard]] virtual absl::StatusOr<int> Open(const std::string& path, int flags,
                                                 mode_t mode) = 0;
  // close(2). The descriptor is released even when it reports an error, as on Linux.
  virtual absl::Status Close(int fd) = 0;
  // fcntl(fd, F_DUPFD_CLOEXEC, 3): a second descriptor of the open file behind `fd`, which
  // keeps that file open after `fd` is closed (never 0, 1 or 2, which a program that
  // closed its standard streams reopens). The default makes the real call; an Os that
  // fakes a descriptor (a VFIO container known by number only) fakes this and Close.
  [[nodiscard]] virtual absl::StatusOr<int> Duplicate(int fd);
  // kcmp(2) KCMP_FILE within this process: whether `a` and `b` are descriptors of one
  // open file (false when either is not open). The default makes the real call; an
  // error (ENOSYS, EPERM under a seccomp filter) means it cannot tell.
  [[nodiscard]] virtual absl::StatusOr<bool> SameFile(int a, int b);
  // ftruncate(2).
  [[nodiscard]] virtual absl::Status Ftruncate(int fd, off_t length) = 0;
  // fstat(2) and stat(2).
  [[nodiscard]] virtual absl::StatusOr<struct stat> Fstat(int fd) = 0;
  [[nodiscard]] virtual absl::StatusOr<struct stat> Stat(const std::string& path) = 0;
  // unlink(2).
  [[nodiscard]] virtual absl::Status Unlink(const std::string& path) = 0;
  // Exactly `length` bytes at `offset` (pread(2), retried); OutOfRange at end of file.
  [[nodiscard]] virtual absl::Status Pread(int fd, void* buf, size_t length, off_t offset) = 0;
  // A whole file, for /proc and /sys: "cannot read <path>: ..." when it cannot be read.
  [[nodiscard]] virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // The names in a directory, without "." and "..", sorted.
  [[nodiscard]] virtual absl::StatusOr<std::vector<std::string>> ListDir(
      const std::string& path) = 0;

  // --- Huge pages ---
  // A mounted hugetlbfs of that page size (the real OS asks libhugetlbfs); NotFound when
  // there is none.
  [[nodiscard]] virtual absl::StatusOr<std::string> HugetlbfsMountFor(size_t page_size) = 0;

  // --- io_uring registered buffers: the kernel's long-term pins, fixed buffers ---
  // io_uring_setup(2) of a ring with `entries` entries: its descriptor (Close it).
  [[nodiscard]] virtual absl::StatusOr<int> IoUringSetup(unsigned entries) = 0;
  // IORING_REGISTER_BUFFERS: the kernel pins every page of `buffers` FOLL_LONGTERM.
  [[nodiscard]] virtual absl::Status IoUringRegisterBuffers(int ring_fd,
                                                            absl::Span<const iovec> buffers) = 0;
  // IORING_UNREGISTER_BUFFERS: the kernel drops those pins (a table of any kind).
  virtual absl::Status IoUringUnregisterBuffers(int ring_fd) = 0;
  // IORING_REGISTER_BUFFERS2 with IORING_RSRC_REGISTER_SPARSE: a table of `slots` empty
  // slots (at most 16384), filled later by IoUringUpdateBuffers.
  [[nodiscard]] virtual absl::Status IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) = 0;
  // IORING_REGISTER_BUFFERS_UPDATE: slots [first_slot, first_slot + buffers.size()) of
  // the table become `buffers`, each pinned FOLL_LONGTERM; {nullptr, 0} empties a slot.
  // What a slot held before is let go once no request uses it.
  [[nodiscard]] virtual absl::Status IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                                          absl::Span<const iovec> buffers) = 0;
  // IORING_REGISTER_CLONE_BUFFERS (Linux 6.12): `dst_fd`'s table takes references to
  // the buffers of `src_fd`'s slots [range.src_slot, + range.slots) at range.dst_slot
  // without pinning them again (slots = 0: the whole table). `replace` swaps that part of
  // an existing table (Linux 6.13; 6.12 takes only a whole clone into a ring without a
  // table). EINVAL where the kernel lacks it, EBUSY into a table without `replace`.
  struct IoUringCloneRange {
    unsigned src_slot = 0;
    unsigned dst_slot = 0;
    unsigned slots = 0;
    bool replace = false;
  };
  [[nodiscard]] virtual absl::Status IoUringCloneBuffers(int dst_fd, int src_fd,
                                                         const IoUringCloneRange& range) = 0;

  // --- VFIO: an IOMMU's mappings for a device (hugemm/vfio.h) ---
  // VFIO_IOMMU_MAP_DMA on a type1 container: the device may read and write
  // [va, va + length) at [iova, iova + length); the kernel pins the pages.
  [[nodiscard]] virtual absl::Status VfioMapDma(int container_fd, const void* va, size_t length,
                                                uint64_t iova) = 0;
  // VFIO_IOMMU_UNMAP_DMA of exactly what one VfioMapDma mapped at `iova`.
  virtual absl::Status VfioUnmapDma(int container_fd, uint64_t iova, size_t length) = 0;
  // OK when `container_fd` is a VFIO container with an IOMMU set (VFIO_SET_IOMMU): it
  // answers VFIO_GET_API_VERSION with VFIO_API_VERSION and VFIO_IOMMU_GET_INFO.
  // Otherwise the failing call's errno (ENOTTY: no VFIO container; EINVAL: no IOMMU
  // set yet). The default answers OK, for an Os that fakes containers (which fakes
  // Duplicate and Close of them too: the IOVA mapper holds a descriptor of its own).
  [[nodiscard]] virtual absl::Status VfioCheckContainer(int container_fd);
};

// An Os that hands every call to another one: subclass it and override the calls to
// change (LevelDB's EnvWrapper). Thread-safe when the target is.
class OsWrapper : public Os {
 public:
  explicit OsWrapper(Os& target) : target_(target) {}
  Os& target() const { return target_; }

  absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                             off_t offset) override {
    return target_.Mmap(addr, length, prot, flags, fd, offset);
  }
  absl::Status Munmap(void* addr, size_t length) override { return target_.Munmap(addr, length); }
  absl::Status Madvise(void* addr, size_t length, int advice) override {
    return target_.Madvise(addr, length, advice);
  }
  absl::Status Mprotect(void* addr, size_t length, int prot) override {
    return target_.Mprotect(addr, length, prot);
  }
  absl::Status BindToNode(void* addr, size_t length, int node) override {
    return target_.BindToNode(addr, length, node);
  }
  absl::StatusOr<int> NodeOfAddress(const void* addr) override {
    return target_.NodeOfAddress(addr);
  }
  absl::StatusOr<MemoryPolicy> ThreadMemoryPolicy() override {
    return target_.ThreadMemoryPolicy();
  }
  absl::Status SetThreadMemoryPolicy(const MemoryPolicy& policy) override {
    return target_.SetThreadMemoryPolicy(policy);
  }
  absl::StatusOr<int> MemfdCreate(const std::string& name, unsigned int flags) override {
    return target_.MemfdCreate(name, flags);
  }
  absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode) override {
    return target_.Open(path, flags, mode);
  }
  absl::Status Close(int fd) override { return target_.Close(fd); }
  absl::StatusOr<int> Duplicate(int fd) override { return target_.Duplicate(fd); }
  absl::StatusOr<bool> SameFile(int a, int b) override { return target_.SameFile(a, b); }
  absl::Status Ftruncate(int fd, off_t length) override { return target_.Ftruncate(fd, length); }
  absl::StatusOr<struct stat> Fstat(int fd) override { return target_.Fstat(fd); }
  absl::StatusOr<struct stat> Stat(const std::string& path) override { return target_.Stat(path); }
  absl::Status Unlink(const std::string& path) override { return target_.Unlink(path); }
  absl::Status Pread(int fd, void* buf, size_t length, off_t offset) override {
    return target_.Pread(fd, buf, length, offset);
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    return target_.ReadFile(path);
  }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    return target_.ListDir(path);
  }
  absl::StatusOr<std::string> HugetlbfsMountFor(size_t page_size) override {
    return target_.HugetlbfsMountFor(page_size);
  }
  absl::StatusOr<int> IoUringSetup(unsigned entries) override {
    return target_.IoUringSetup(entries);
  }
  absl::Status IoUringRegisterBuffers(int ring_fd, absl::Span<const iovec> buffers) override {
    return target_.IoUringRegisterBuffers(ring_fd, buffers);
  }
  absl::Status IoUringUnregisterBuffers(int ring_fd) override {
    return target_.IoUringUnregisterBuffers(ring_fd);
  }
  absl::Status IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) override {
    return target_.IoUringRegisterSparseBuffers(ring_fd, slots);
  }
  absl::Status IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                    absl::Span<const iovec> buffers) override {
    return target_.IoUringUpdateBuffers(ring_fd, first_slot, buffers);
  }
  absl::Status IoUringCloneBuffers(int dst_fd, int src_fd,
                                   const IoUringCloneRange& range) override {
    return target_.IoUringCloneBuffers(dst_fd, src_fd, range);
  }
  absl::Status VfioMapDma(int container_fd, const void* va, size_t length, uint64_t iova) override {
    return target_.VfioMapDma(container_fd, va, length, iova);
  }
  absl::Status VfioUnmapDma(int container_fd, uint64_t iova, size_t length) override {
    return target_.VfioUnmapDma(container_fd, iova, length);
  }
  absl::Status VfioCheckContainer(int container_fd) override {
    return target_.VfioCheckContainer(container_fd);
  }

 private:
  Os& target_;
};

}  // namespace hugemm

#endif  // HUGEMM_OS_H_
