// An Os that fails chosen calls, and keeps account of what went through it.
//
// FaultyOs wraps another Os (the real one, or a FakeOs) and makes the nth call, or the
// nth call of one kind, fail with a chosen errno instead of reaching it:
//
//   FaultyOs os(Os::Default());
//   os.FailNth(OsCall::kMadvise, 1, ENOMEM);  // the first madvise: the prefault
//   auto backing = Backing::Create({.kind = BackingKind::kHugetlb, .os = &os});
//
// The calls that give something back (munmap, close, unlink, io_uring unregister) are
// carried out before their injected failure is reported, as close(2) releases the
// descriptor even when it reports an error: a sweep over them checks how the caller
// handles the status, not a leak the kernel would never cause.
//
// It also records the mappings, descriptors and io_uring registrations made through it
// and not yet undone, so a test can check that a failed operation left nothing behind.
//
// SweepFailures runs an operation once to count its calls, then once per call with that
// call failing.
//
// Thread-safe.
#ifndef HUGEMM_TESTS_FAULTY_OS_H_
#define HUGEMM_TESTS_FAULTY_OS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "hugemm/os.h"

namespace hugemm::testing {

enum class OsCall {
  kMmap,
  kMunmap,
  kMadvise,
  kBindToNode,
  kNodeOfAddress,
  kThreadMemoryPolicy,
  kSetThreadMemoryPolicy,
  kMemfdCreate,
  kOpen,
  kClose,
  kDuplicate,
  kSameFile,
  kFtruncate,
  kFstat,
  kStat,
  kUnlink,
  kPread,
  kReadFile,
  kListDir,
  kHugetlbfsMountFor,
  kIoUringSetup,
  kIoUringRegisterBuffers,
  kIoUringUnregisterBuffers,
  kIoUringRegisterSparseBuffers,
  kIoUringUpdateBuffers,
  kIoUringCloneBuffers,
};

// "mmap", "madvise", "io_uring_register", ...
const char* OsCallName(OsCall call);

class FaultyOs final : public OsWrapper {
 public:
  explicit FaultyOs(Os& target) : OsWrapper(target) {}

  // From now on the nth call (1-based) fails with `err`; counting starts again here.
  void FailNth(int n, int err);
  // From now on the nth call of `call` fails with `err`.
  void FailNth(OsCall call, int n, int err);
  // Every call of `call` fails with `err` until Reset().
  void FailEvery(OsCall call, int err);
  // No more failures; counting starts again.
  void Reset();

  // Calls since the last FailNth, FailEvery or Reset.
  [[nodiscard]] int calls() const;
  // Whether a failure was injected since then, which call it was, and its message
  // ("mmap: Cannot allocate memory (ENOMEM)").
  [[nodiscard]] bool fired() const;
  [[nodiscard]] OsCall fired_call() const;
  [[nodiscard]] std::string fired_message() const;
  // Every call since then, by name, for a test's failure message.
  [[nodiscard]] std::string Log() const;

  // Made through this Os and not yet undone.
  [[nodiscard]] size_t live_mapping_bytes() const;
  [[nodiscard]] std::set<int> live_fds() const;
  // Rings with a registered-buffer table, plus the slots filled by updates and ranged
  // clones.
  [[nodiscard]] size_t live_registrations() const;

  absl::StatusOr<void*> Mmap(void* addr, size_t length, int prot, int flags, int fd,
                             off_t offset) override;
  absl::Status Munmap(void* addr, size_t length) override;
  absl::Status Madvise(void* addr, size_t length, int advice) override;
  absl::Status BindToNode(void* addr, size_t length, int node) override;
  absl::StatusOr<int> NodeOfAddress(const void* addr) override;
  absl::StatusOr<MemoryPolicy> ThreadMemoryPolicy() override;
  absl::Status SetThreadMemoryPolicy(const MemoryPolicy& policy) override;
  absl::StatusOr<int> MemfdCreate(const std::string& name, unsigned int flags) override;
  absl::StatusOr<int> Open(const std::string& path, int flags, mode_t mode) override;
  absl::Status Close(int fd) override;
  absl::StatusOr<int> Duplicate(int fd) override;
  absl::StatusOr<bool> SameFile(int a, int b) override;
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

 private:
  // Counts the call; the failure to inject now, or OK. `what` names it in messages.
  absl::Status Inject(OsCall call, const std::string& what);
  void ResetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddMapping(uintptr_t start, size_t length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveMapping(uintptr_t start, size_t length) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetRing(int ring_fd) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable std::mutex mu_;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  int kind_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_at_ ABSL_GUARDED_BY(mu_) = 0;  // 0: none
  bool by_kind_ ABSL_GUARDED_BY(mu_) = false;
  bool every_ ABSL_GUARDED_BY(mu_) = false;
  OsCall kind_ ABSL_GUARDED_BY(mu_) = OsCall::kMmap;
  int err_ ABSL_GUARDED_BY(mu_) = 0;
  bool fired_ ABSL_GUARDED_BY(mu_) = false;
  OsCall fired_call_ ABSL_GUARDED_BY(mu_) = OsCall::kMmap;
  std::string fired_message_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> log_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, uintptr_t> mappings_ ABSL_GUARDED_BY(mu_);  // start -> end
  std::set<int> fds_ ABSL_GUARDED_BY(mu_);
  std::set<int> registered_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<int, unsigned>> filled_ ABSL_GUARDED_BY(mu_);  // (ring, slot)
};

// One run of a sweep: the call that failed (its number and kind, and the injected
// message), and what the operation returned.
struct FailedRun {
  int n = 0;
  OsCall call = OsCall::kMmap;
  std::string injected;
  absl::Status status;
};

// Runs `op` once without failures to count its calls (ADD_FAILURE if it fails), then
// for n = 1 .. that count runs it again with the nth call failing with `err`, and hands
// each run to `check`. `op` must leave everything as it found it when it returns
// (dropping what it made); `check` then looks for what it left behind.
void SweepFailures(FaultyOs& os, int err, absl::FunctionRef<absl::Status()> op,
                   absl::FunctionRef<void(const FailedRun&)> check);

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_FAULTY_OS_H_
