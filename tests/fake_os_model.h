// The state of a FakeOs: pools, files, descriptors and mappings, and the kernel rules
// the fake keeps over them (reserve at mmap, take at the prefault, give back when the
// last descriptor and mapping of a file go). Internal to fake_os*.cc.
#ifndef HUGEMM_TESTS_FAKE_OS_MODEL_H_
#define HUGEMM_TESTS_FAKE_OS_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/fake_os.h"

namespace hugemm::testing::fake_internal {

inline constexpr uint64_t kNoPfn = ~uint64_t{0};

// One page size's pool: pages_per_node pages on each node, each with a fixed PFN.
struct SizePool {
  size_t page_size = 0;
  int64_t per_node = 0;
  std::vector<uint64_t> base_pfn;       // per node: the PFN of its first page
  std::vector<std::set<int64_t>> free;  // per node: indexes of free pages
  int64_t resv = 0;                     // promised to mappings, not yet taken
  uint64_t frames() const { return page_size >> 12; }
  int64_t free_total() const;
};

struct Page {
  int node = 0;
  uint64_t pfn = kNoPfn;  // of the page's first 4K frame
};

// A memfd, a hugetlbfs file or a DAX device. The bytes live in a real memfd (`master`).
struct File {
  size_t page_size = 4096;  // 4K: ordinary memory
  bool dax = false;
  const FakeMachine::DaxDevice* device = nullptr;
  uint64_t dax_pfn = 0;  // the device's first PFN
  int master = -1;
  int refs = 0;      // descriptors and mapping records
  std::string path;  // in a fake mount while linked
  bool released = false;
  std::map<uint64_t, Page> pages;  // page index -> the page holding it
  std::set<uint64_t> reserved;     // page indexes promised by a mapping, not yet taken
};

enum class FdKind { kFile, kPagemap, kKpageflags, kRing, kVfioContainer };

// One slot of a ring's registered-buffer table.
struct RingSlot {
  uintptr_t start = 0;
  size_t length = 0;    // 0: empty
  bool cloned = false;  // a reference to another ring's pinned buffer: pins nothing
};

// A ring: one kernel object, shared by every descriptor of it (Duplicate).
struct Ring {
  size_t pinned_bytes = 0;  // its registered buffers
  bool registered = false;
  std::vector<RingSlot> slots;  // its table, sparse or not
};

struct Fd {
  FdKind kind = FdKind::kFile;
  std::shared_ptr<File> file;
  std::shared_ptr<Ring> ring;  // kRing
  // kVfioContainer: its mappings, by IOVA, shared by every descriptor of it.
  std::shared_ptr<std::map<uint64_t, RingSlot>> dma;
};

struct Mapping {
  size_t length = 0;
  std::shared_ptr<File> file;  // null: anonymous memory
  uint64_t offset = 0;         // of the mapping's first byte in the file
  int prot = 0;
  int flags = 0;
  int node = -1;  // mbind
  bool dontfork = false;
};

struct Model {
  explicit Model(FakeMachine m);

  const FakeMachine machine;
  mutable std::mutex mu;
  std::vector<SizePool> pools ABSL_GUARDED_BY(mu);
  std::map<int, Fd> fds ABSL_GUARDED_BY(mu);
  std::map<uintptr_t, Mapping> maps ABSL_GUARDED_BY(mu);  // by start address
  std::map<std::string, std::shared_ptr<File>> names ABSL_GUARDED_BY(mu);
  std::map<std::string, std::shared_ptr<File>> devices ABSL_GUARDED_BY(mu);
  std::map<uintptr_t, uint64_t> anon_pfns ABSL_GUARDED_BY(mu);  // 4K page -> PFN
  uint64_t next_anon_pfn ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> dax_pfn;  // per machine.dax entry

  SizePool* PoolFor(size_t page_size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // A new File over a fresh real memfd of `bytes` bytes.
  absl::StatusOr<std::shared_ptr<File>> NewFile(const std::string& name, size_t page_size,
                                                uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // A real descriptor for `file` (a duplicate of its memfd), recorded as open.
  absl::StatusOr<int> NewFd(const std::shared_ptr<File>& file) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // A real descriptor of /dev/null, recorded as `kind`.
  absl::StatusOr<int> NewSpecialFd(FdKind kind) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Gives the file's pages and reservations back once nothing holds it.
  void MaybeRelease(File& file) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Frees the file's pages at or beyond page index `from`.
  void FreePagesFrom(File& file, uint64_t from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Splits mapping records so that none straddles `at`.
  void SplitAt(uintptr_t at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Whether [start, end) is wholly covered by mapping records.
  bool Covered(uintptr_t start, uintptr_t end) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // Drops the records of [start, end) (the real memory is the caller's to unmap).
  void Forget(uintptr_t start, uintptr_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The record holding `va` and its start, or maps.end().
  std::map<uintptr_t, Mapping>::iterator Find(uintptr_t va) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // Takes pool pages for every page of [start, end) not yet backed (the prefault).
  absl::Status Populate(uintptr_t start, uintptr_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The PFN behind `va` as pagemap shows it (kNoPfn: not present or hidden).
  uint64_t PfnAt(uintptr_t va) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // kpageflags' word for `pfn`.
  uint64_t FlagsOf(uint64_t pfn) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  // /proc and /sys as the model makes them: path -> contents (smaps aside).
  std::map<std::string, std::string> VirtualFiles() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  std::string Smaps() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  HugePagePool PoolView(size_t page_size) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
};

}  // namespace hugemm::testing::fake_internal

#endif  // HUGEMM_TESTS_FAKE_OS_MODEL_H_
