// Memory sources. A Backing hands out Extents: aligned, prefaulted, MADV_DONTFORK'd
// mappings at one native page size, each with its NUMA node and the PFN of every
// native page (read once, at map time).
//
//   auto backing = hugemm::Backing::Create({.kind = hugemm::BackingKind::kHugetlb,
//                                           .page_size = hugemm::kPageSize1G});
//   auto extent = (*backing)->Map({.length = 2 * hugemm::kPageSize1G, .node = 0});
//
// Four kinds:
//   hugetlb    memfd_create(MFD_HUGETLB | MFD_HUGE_2MB / MFD_HUGE_1GB); no mount needed.
//   hugetlbfs  a file in a hugetlbfs mount of that page size (found with libhugetlbfs);
//              a named file is created mode 0600 and another process may open it.
//   devdax     /dev/daxX.Y; size, align and node from sysfs; MAP_SHARED only, offsets
//              and lengths in multiples of the device alignment.
//   anon       4K anonymous pages, for machines without huge pages.
//
// Every call to the kernel goes through the Os of BackingOptions (os.h).
#ifndef HUGEMM_BACKING_H_
#define HUGEMM_BACKING_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"

namespace hugemm {

enum class BackingKind : uint8_t { kHugetlb, kHugetlbfs, kDevDax, kAnon };

// "hugetlb", "hugetlbfs", "devdax", "anon".
[[nodiscard]] absl::string_view BackingKindName(BackingKind kind);
// The kind of that name; InvalidArgument naming the four for any other.
[[nodiscard]] absl::StatusOr<BackingKind> ParseBackingKind(absl::string_view name);

// A PFN the process could not read. Never zero: PFN 0 is a real frame.
inline constexpr uint64_t kUnknownPfn = ~uint64_t{0};

struct BackingOptions {
  BackingKind kind = BackingKind::kHugetlb;
  // 0 = the kind's own: 2M for hugetlb and hugetlbfs, the device alignment for devdax,
  // 4K for anon. hugetlb / hugetlbfs take any size the kernel lists (2M, 1G); devdax
  // must match the device alignment; anon is always 4K.
  size_t page_size = 0;
  // hugetlbfs: the mount to use, its path spelled any way (a trailing slash, "."; links
  // are not followed); empty = libhugetlbfs finds one of page_size.
  std::string hugetlbfs_mount;
  // devdax: the character device, e.g. "/dev/dax0.0".
  std::string devdax_path;
  // devdax: where <root>/bus/dax/devices/<name>/{size,align,numa_node} live. Tests point
  // this at a fake tree.
  std::string sysfs_root = "/sys";
  // The OS to call, for the backing's life and its extents'; nullptr = Os::Default().
  Os* os = nullptr;
};

struct MapRequest {
  // Bytes; a positive multiple of the backing's page size.
  size_t length = 0;
  // NUMA node to place the pages on (mbind before the prefault, checked after);
  // -1 = let the kernel choose. Served whatever the calling thread's memory policy: the
  // kernel reserves hugetlb pages at mmap from the nodes of that policy, so for the mmap
  // alone Map binds the thread to the node (Os::SetThreadMemoryPolicy), then gives it
  // back its own policy exactly (mode, flags, nodes). devdax memory sits where the
  // device is: a node other than the device's is an error.
  int node = -1;
  // MAP_SHARED (true) or MAP_PRIVATE. devdax refuses private mappings.
  bool shared = true;
  // devdax and named hugetlbfs files: byte offset into the device or file. Unset for
  // devdax = the lowest free range; must be a multiple of the page size.
  std::optional<uint64_t> offset;
  // Virtual alignment of the mapping; 0 = the page size. A power of two of at least the
  // page size (the allocator indexes 4K memory in 2M-aligned regions).
  size_t align = 0;
  // hugetlbfs: a file name inside the mount. Created (mode 0600) or, if another process
  // made it, opened; it outlives the mapping, and grows to offset + length if shorter. A
  // Map that fails removes a file it created, and leaves one it opened at the size it
  // gave it (another process may map that by then; a size holds no huge pages). Empty =
  // a private unlinked file.
  std::string name;
};

class Backing;
namespace backing_internal {
class Kind;
}  // namespace backing_internal

// One mapping of a backing: data(), size() and the PFN of every native page. Move-only;
// unmapped when destroyed. Its memory may be read and written from any thread; the
// object itself is not thread-safe (one owner moves or unmaps it).
class Extent {
 public:
  Extent() = default;
  ~Extent();
  Extent(Extent&& other) noexcept;
  Extent& operator=(Extent&& other) noexcept;
  Extent(const Extent&) = delete;
  Extent& operator=(const Extent&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  size_t page_size() const { return page_size_; }
  size_t page_count() const { return page_size_ ? size_ / page_size_ : 0; }
  // The node all pages sit on; -1 when unknown or spread over several nodes.
  int node() const { return node_; }
  BackingKind kind() const { return kind_; }
  // Offset in the device or file (0 for memfd and anon).
  uint64_t offset() const { return offset_; }
  // PFN of the first 4K frame of native page `i` (< page_count()); kUnknownPfn if the
  // kernel would not show it, or once ForgetPfns dropped the list.
  uint64_t pfn(size_t i) const { return i < pfns_.size() ? pfns_[i] : kUnknownPfn; }
  absl::Span<const uint64_t> pfns() const { return pfns_; }
  bool pfns_known() const { return !pfns_.empty() && pfns_[0] != kUnknownPfn; }
  // Drops the PFN list (8 bytes per native page) for an owner that keeps the PFNs
  // elsewhere; pfns() is empty afterwards.
  void ForgetPfns() { std::vector<uint64_t>().swap(pfns_); }
  const std::shared_ptr<Backing>& backing() const { return backing_; }
  // hugetlbfs: whether this Map created the named file (MapRequest::name) rather than
  // opening one that existed; false for a private file and the other kinds. The file
  // outlives the extent: an owner that fails right after Map removes it (at
  // Backing::FilePath), as Map does on its own errors.
  bool created_file() const { return created_file_; }
  bool mapped() const { return data_ != nullptr; }

  // Unmaps now (a no-op when not mapped) and reports what the destructor would have to
  // swallow: the OS's munmap error, annotated. The extent is empty afterwards either way.
  absl::Status Unmap();

 private:
  friend class Backing;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
  size_t page_size_ = 0;
  int node_ = -1;
  BackingKind kind_ = BackingKind::kAnon;
  bool created_file_ = false;
  uint64_t offset_ = 0;
  std::vector<uint64_t> pfns_;
  std::shared_ptr<Backing> backing_;  // keeps a devdax offset map alive
};

struct DaxDeviceInfo {
  std::string name;  // "dax0.0"
  std::string path;  // "/dev/dax0.0"
  uint64_t size = 0;
  uint64_t align = 0;
  int numa_node = -1;
  // Where the device's bytes sit physically: <dir>/mappingN/{start,end,page_offset}, or
  // <dir>/resource for a single range. Root only; empty when unreadable. The kernel's
  // pagemap does not report PFNs of PUD-mapped (1G) device-DAX, so this is how 1G
  // devices get known PFNs.
  struct Range {
    uint64_t offset = 0;  // byte offset in the device
    uint64_t phys = 0;    // physical address of that byte
    uint64_t size = 0;
  };
  std::vector<Range> ranges;
  // The physical address of device byte `offset`, or ~0 when unknown.
  [[nodiscard]] uint64_t PhysicalAddress(uint64_t offset) const;
};

// Reads <sysfs_root>/bus/dax/devices/<name>/{size,align,numa_node} through `os`.
// `device` is a name ("dax0.0") or a path whose last component is the name. NotFound
// when sysfs has no such device, or the device has no capacity (size 0: a region's empty
// seed device); DataLoss naming the file when one is garbled; the OS's error when one
// cannot be read.
[[nodiscard]] absl::StatusOr<DaxDeviceInfo> ReadDaxDevice(absl::string_view device,
                                                          const std::string& sysfs_root = "/sys",
                                                          Os& os = Os::Default());
// Every device under <sysfs_root>/bus/dax/devices but those of size 0 (empty seed
// devices; none is not an error); the first device's error otherwise.
[[nodiscard]] absl::StatusOr<std::vector<DaxDeviceInfo>> ListDaxDevices(
    const std::string& sysfs_root = "/sys", Os& os = Os::Default());
// The same list as libdaxctl sees it: the live system only, a cross-check of the sysfs
// reading above (libdaxctl reads sysfs itself, not through an Os). Unavailable when
// libdaxctl cannot start.
[[nodiscard]] absl::StatusOr<std::vector<DaxDeviceInfo>> ListDaxDevicesWithLibdaxctl();
// The driver bound to device `name` ("dax0.0"): "device_dax" (the one the devdax backing
// opens), "kmem" (daxctl's system-ram mode), or "" when none is: the directory under
// <sysfs_root>/bus/dax/drivers that lists it. InvalidArgument for a name that is not a
// plain name (empty, ".", ".." or with a slash); the OS's error when sysfs cannot be read.
[[nodiscard]] absl::StatusOr<std::string> DaxDeviceDriver(absl::string_view name,
                                                          const std::string& sysfs_root = "/sys",
                                                          Os& os = Os::Default());
// Whether the devdax backing can use `info`'s device: OK, or the error Backing::Create
// gives for it, by the same steps (it opens info.path and checks it is the device sysfs
// names, then closes it; nothing is mapped). A device no driver serves, or one in
// system-ram mode, fails with ENXIO (ErrnoOf) and a message naming its driver.
[[nodiscard]] absl::Status CheckDaxDeviceOpens(const DaxDeviceInfo& info,
                                               const std::string& sysfs_root = "/sys",
                                               Os& os = Os::Default());

// A source of extents of one kind and page size. Thread-safe: Map may be called from
// many threads at once, and extents may be unmapped on any thread. Held by shared_ptr;
// each extent keeps its backing alive.
class Backing final : public std::enable_shared_from_this<Backing> {
 public:
  // Checks the options against the system (page size supported, mount present, device
  // readable and described by sysfs) and returns a ready backing. InvalidArgument for a
  // page size the kind or kernel does not offer, a devdax backing without a path, or a
  // mount of another page size; NotFound for a missing mount or device, and for a devdax
  // path that is not the character device sysfs numbers in <dir>/dev (a regular file, a
  // directory or another device that carries its name); PermissionDenied for a hugetlbfs
  // mount of the page size this process may not write; the OS's error (naming the call)
  // when sysfs or /proc/mounts cannot be read or the device opened.
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<Backing>> Create(
      const BackingOptions& options);

  ~Backing();
  Backing(const Backing&) = delete;
  Backing& operator=(const Backing&) = delete;

  BackingKind kind() const { return kind_; }
  size_t page_size() const { return page_size_; }
  // The OS this backing and its extents call.
  Os& os() const { return os_; }
  // "hugetlb 2M", "hugetlbfs 1G at /dev/hugepages1G", "devdax /dev/dax0.0 (align 2M)".
  [[nodiscard]] std::string Describe() const;
  // hugetlbfs: where the named file `name` lives, "<mount>/<name>"; empty for the other
  // kinds.
  [[nodiscard]] std::string FilePath(absl::string_view name) const;

  // Maps, places, prefaults and records PFNs. On any error nothing stays mapped, no file
  // this call created stays, and no huge page stays reserved. The calling thread's memory
  // policy, bound to the node for the mmap, is its own again on every path (should the
  // kernel refuse it back, the error says that the thread stays bound). Every error
  // names the backing, the length and the node, and the step and OS error where one
  // failed:
  //   InvalidArgument    a length that is not a positive multiple of the page size (or
  //                      that, aligned, would pass the end of the address space), a
  //                      bad or offline node (or one outside the process's cpuset),
  //                      a bad alignment, or what the kind refuses
  //                      (a name or offset for hugetlb and anon, a private or misaligned
  //                      devdax mapping, a file name with a '/', or one of a
  //                      directory or other file that is not a regular file);
  //   OutOfRange         a devdax range beyond the device;
  //   AlreadyExists      a devdax range already mapped by this backing;
  //   ResourceExhausted  no huge page or no free device range left (ENOMEM; hugetlb
  //                      kinds add the pool's free, reserved and total counts, and
  //                      hugetlbfs the mount's size= limit when it has one: a full
  //                      mount refuses while the pool has pages free);
  //   FailedPrecondition a page that landed on another node than requested;
  //   otherwise the code of the failed OS call.
  // A PFN the kernel does not show is recorded as kUnknownPfn, not an error.
  [[nodiscard]] absl::StatusOr<Extent> Map(const MapRequest& request);

 private:
  friend class Extent;
  Backing(std::unique_ptr<backing_internal::Kind> impl, Os& os);

  std::unique_ptr<backing_internal::Kind> impl_;
  BackingKind kind_;
  size_t page_size_;
  Os& os_;
};

}  // namespace hugemm

#endif  // HUGEMM_BACKING_H_
