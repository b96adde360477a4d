// A fake machine for tests that need neither root nor huge pages.
//
// FakeOs is an Os whose huge page pools, hugetlbfs mounts, device-DAX devices, NUMA
// nodes, sysfs, /proc/mounts, /proc/self/smaps, pagemap and kpageflags are a model kept
// over ordinary memory:
//   - a hugetlb memfd is a plain memfd, a hugetlbfs file or a DAX device a plain memfd
//     behind a name; mappings are real, so the memory can be written and read back;
//   - huge pages are counted, not faulted: MADV_POPULATE_WRITE takes pages from the
//     model's pools (free and reserved counts move as the kernel's do, so a pool runs
//     out), and the memory behind them stays untouched until the test writes to it;
//   - each huge page has a synthetic PFN, aligned to its size, which pagemap shows and
//     kpageflags describes as a compound head and tails;
//   - sysfs (pool counters per size and node, DAX devices), /proc/mounts, /proc/meminfo,
//     /proc/cpuinfo and /proc/self/smaps are written from the model when read.
//
//   FakeOs machine({.nodes = 2, .pools = {{kPageSize2M, 8}}});
//   auto alloc = Allocator::Create({.os = &machine});
//   EXPECT_EQ(machine.Pool(kPageSize2M).free, 16);
//
// What it stands in for, and what not: the kernel's bookkeeping as hugemm sees it through
// the Os. It cannot show what only real memory shows: that the kernel really maps a
// 2M page with a PMD leaf, that PFNs are the hardware's, migration, fork. Those stay with
// the tests on real huge pages. It is a closed world: paths it does not model do not
// exist, and only mappings made through it appear in its smaps and pagemap.
//
// Simplifications: private hugetlb mappings share pages with the file as shared ones
// do (no copy-on-write); a page is reserved at mmap and taken at the prefault;
// surplus pages and overcommit are not modelled.
//
// Thread-safe: one mutex guards the model.
#ifndef HUGEMM_TESTS_FAKE_OS_H_
#define HUGEMM_TESTS_FAKE_OS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hugemm/huge_pages.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"

namespace hugemm::testing {
namespace fake_internal {
struct Model;
}  // namespace fake_internal

struct FakeMachine {
  struct Pool {
    size_t page_size = kPageSize2M;
    int64_t pages_per_node = 0;
  };
  struct Mount {
    std::string path;
    size_t page_size = kPageSize2M;
  };
  struct DaxDevice {
    std::string name = "dax0.0";  // /dev/<name>, /sys/bus/dax/devices/<name>
    uint64_t size = 0;
    uint64_t align = kPageSize2M;
    int node = 0;
    // The driver bound to it (listed under /sys/bus/dax/drivers): "" for none. Opening
    // /dev/<name> fails with ENXIO unless it is device_dax, as on a real machine.
    std::string driver = "device_dax";
  };

  int nodes = 1;
  std::vector<Pool> pools = {{kPageSize2M, 32}, {kPageSize1G, 2}};
  std::vector<Mount> mounts = {{"/fake/hugepages", kPageSize2M},
                               {"/fake/hugepages1G", kPageSize1G}};
  std::vector<DaxDevice> dax;
  // As root: pagemap shows PFNs and kpageflags can be read. false: PFNs read as 0 and
  // kpageflags cannot be opened, as for a process without CAP_SYS_ADMIN.
  bool root = true;
  // Bytes io_uring may pin in all (RLIMIT_MEMLOCK without CAP_IPC_LOCK); 0 = no limit.
  // Past it a registration fails with ENOMEM, as the kernel's does.
  size_t memlock_bytes = 0;
  // Which IORING_REGISTER_CLONE_BUFFERS the kernel has: none (before 6.12, EINVAL), a
  // whole table into a ring without one (6.12), or ranges and replace (6.13 and later).
  enum class Clone { kNone, kWhole, kRanges };
  Clone io_uring_clone = Clone::kRanges;
};

class FakeOs final : public Os {
 public:
  explicit FakeOs(FakeMachine machine = {});
  // Must outlive everything made through it. Whatever is still mapped or open then is
  // unmapped and closed, so that one failing test does not leak into the next.
  ~FakeOs() override;
  FakeOs(const FakeOs&) = delete;
  FakeOs& operator=(const FakeOs&) = delete;

  // The model, as sysfs shows it: NotFound-free, an all-zero pool for a size it lacks.
  [[nodiscard]] HugePagePool Pool(size_t page_size) const;
  // Mappings and descriptors made through this Os and not yet undone.
  [[nodiscard]] size_t live_mappings() const;
  [[nodiscard]] size_t open_fds() const;
  // Bytes held by registered io_uring buffers (kernel long-term pins).
  [[nodiscard]] size_t pinned_bytes() const;
  // Names of the files in a fake hugetlbfs mount.
  [[nodiscard]] std::vector<std::string> FilesIn(const std::string& mount) const;

  absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                             off_t offset) override;
  absl::Status Munmap(void* addr, size_t length) override;
  absl::Status Madvise(void* addr, size_t length, int advice) override;
  absl::Status Mprotect(void* addr, size_t length, int prot) override;
  absl::Status BindToNode(void* addr, size_t length, int node) override;
  absl::StatusOr<int> NodeOfAddress(const void* addr) override;
  absl::StatusOr<int> MemfdCreate(const std::string& name, unsigned int flags) override;
  absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode) override;
  absl::Status Close(int fd) override;
  absl::StatusOr<int> Duplicate(int fd) override;
  absl::Status Ftruncate(int fd, off_t length) override;
  absl::StatusOr<struct stat> Fstat(int fd) override;
  absl::StatusOr<struct stat> Stat(const std::string& path) override;
  absl::Status Unlink(const std::string& path) override;
  absl::Status Pread(int fd, void* buf, size_t length, off_t offset) override;
  absl::StatusOr<std::string> ReadFile(const std::string& path) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override;
  absl::StatusOr<std::string> HugetlbfsMountFor(size_t page_size) override;
  absl::StatusOr<int> IoUringSetup(unsigned entries) override;
  absl::Status IoUringRegisterBuffers(int ring_fd, absl::Span<const iovec> buffers) override;
  absl::Status IoUringUnregisterBuffers(int ring_fd) override;
  absl::Status IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) override;
  absl::Status IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                    absl::Span<const iovec> buffers) override;
  absl::Status IoUringCloneBuffers(int dst_fd, int src_fd, const IoUringCloneRange& range) override;
  // The buffer in slot `slot` of a ring's table ({nullptr, 0} when empty or out of range).
  [[nodiscard]] iovec RingSlotOf(int ring_fd, unsigned slot) const;

  // A VFIO type1 container (as /dev/vfio/vfio after VFIO_SET_IOMMU): its descriptor.
  // Mappings must be 4K-aligned in address, IOVA and length, inside the machine's memory
  // mapped through this Os, and may not overlap in IOVA (EEXIST, as the kernel says).
  [[nodiscard]] absl::StatusOr<int> OpenVfioContainer();
  absl::Status VfioMapDma(int container_fd, const void* va, size_t length, uint64_t iova) override;
  absl::Status VfioUnmapDma(int container_fd, uint64_t iova, size_t length) override;
  // A container's mappings: IOVA -> (address, length).
  [[nodiscard]] std::map<uint64_t, iovec> VfioMappings(int container_fd) const;

 private:
  std::unique_ptr<fake_internal::Model> model_;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_FAKE_OS_H_
