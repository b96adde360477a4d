#include "tests/faulty_os.h"

#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace hugemm::testing {

const char* OsCallName(OsCall call) {
  switch (call) {
    case OsCall::kMmap:
      return "mmap";
    case OsCall::kMunmap:
      return "munmap";
    case OsCall::kMadvise:
      return "madvise";
    case OsCall::kBindToNode:
      return "mbind";
    case OsCall::kNodeOfAddress:
      return "get_mempolicy";
    case OsCall::kThreadMemoryPolicy:
      return "get_mempolicy (thread)";
    case OsCall::kSetThreadMemoryPolicy:
      return "set_mempolicy";
    case OsCall::kMemfdCreate:
      return "memfd_create";
    case OsCall::kOpen:
      return "open";
    case OsCall::kClose:
      return "close";
    case OsCall::kDuplicate:
      return "fcntl";
    case OsCall::kSameFile:
      return "kcmp";
    case OsCall::kFtruncate:
      return "ftruncate";
    case OsCall::kFstat:
      return "fstat";
    case OsCall::kStat:
      return "stat";
    case OsCall::kUnlink:
      return "unlink";
    case OsCall::kPread:
      return "pread";
    case OsCall::kReadFile:
      return "read";
    case OsCall::kListDir:
      return "list";
    case OsCall::kHugetlbfsMountFor:
      return "hugetlbfs mount lookup";
    case OsCall::kIoUringSetup:
      return "io_uring_setup";
    case OsCall::kIoUringRegisterBuffers:
      return "io_uring_register";
    case OsCall::kIoUringUnregisterBuffers:
      return "io_uring_unregister";
    case OsCall::kIoUringRegisterSparseBuffers:
      return "io_uring_register sparse";
    case OsCall::kIoUringUpdateBuffers:
      return "io_uring_register update";
    case OsCall::kIoUringCloneBuffers:
      return "io_uring_register clone";
  }
  return "?";
}

void FaultyOs::FailNth(int n, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  ResetLocked();
  fail_at_ = n;
  err_ = err;
}

void FaultyOs::FailNth(OsCall call, int n, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  ResetLocked();
  by_kind_ = true;
  kind_ = call;
  fail_at_ = n;
  err_ = err;
}

void FaultyOs::FailEvery(OsCall call, int err) {
  std::lock_guard<std::mutex> lock(mu_);
  ResetLocked();
  every_ = true;
  kind_ = call;
  err_ = err;
}

void FaultyOs::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  ResetLocked();
}

void FaultyOs::ResetLocked() {
  calls_ = kind_calls_ = fail_at_ = err_ = 0;
  by_kind_ = every_ = fired_ = false;
  fired_message_.clear();
  log_.clear();
}

int FaultyOs::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

bool FaultyOs::fired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_;
}

OsCall FaultyOs::fired_call() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_call_;
}

std::string FaultyOs::fired_message() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fired_message_;
}

std::string FaultyOs::Log() const {
  std::lock_guard<std::mutex> lock(mu_);
  return absl::StrJoin(log_, ", ");
}

size_t FaultyOs::live_mapping_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t bytes = 0;
  for (const auto& [start, end] : mappings_) bytes += end - start;
  return bytes;
}

std::set<int> FaultyOs::live_fds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fds_;
}

size_t FaultyOs::live_registrations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_.size() + filled_.size();
}

absl::Status FaultyOs::Inject(OsCall call, const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++calls_;
  log_.push_back(what);
  bool fail = false;
  if (every_) {
    fail = call == kind_;
  } else if (by_kind_) {
    fail = call == kind_ && ++kind_calls_ == fail_at_;
  } else {
    fail = calls_ == fail_at_;
  }
  if (!fail) return absl::OkStatus();
  absl::Status st = ErrnoStatus(err_, what);
  fired_ = true;
  fired_call_ = call;
  fired_message_ = std::string(st.message());
  return st;
}

void FaultyOs::AddMapping(uintptr_t start, size_t length) {
  RemoveMapping(start, length);  // MAP_FIXED replaces what was there
  mappings_[start] = start + length;
}

void FaultyOs::RemoveMapping(uintptr_t start, size_t length) {
  const uintptr_t end = start + length;
  auto it = mappings_.upper_bound(start);
  if (it != mappings_.begin()) --it;
  while (it != mappings_.end() && it->first < end) {
    const uintptr_t a = it->first, b = it->second;
    if (b <= start) {
      ++it;
      continue;
    }
    it = mappings_.erase(it);
    if (a < start) mappings_[a] = start;
    if (b > end) mappings_[end] = b;
  }
}

absl::StatusOr<void*> FaultyOs::Mmap(void* addr, size_t length, int prot, int flags, int fd,
                                     off_t offset) {
  if (absl::Status st = Inject(OsCall::kMmap, "mmap"); !st.ok()) return st;
  absl::StatusOr<void*> p = OsWrapper::Mmap(addr, length, prot, flags, fd, offset);
  if (p.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    AddMapping(reinterpret_cast<uintptr_t>(*p), length);
  }
  return p;
}

absl::Status FaultyOs::Munmap(void* addr, size_t length) {
  absl::Status injected = Inject(OsCall::kMunmap, "munmap");
  absl::Status st = OsWrapper::Munmap(addr, length);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    RemoveMapping(reinterpret_cast<uintptr_t>(addr), length);
  }
  return injected.ok() ? st : injected;
}

absl::Status FaultyOs::Madvise(void* addr, size_t length, int advice) {
  if (absl::Status st = Inject(OsCall::kMadvise, absl::StrCat("madvise(", advice, ")")); !st.ok()) {
    return st;
  }
  return OsWrapper::Madvise(addr, length, advice);
}

absl::Status FaultyOs::BindToNode(void* addr, size_t length, int node) {
  if (absl::Status st = Inject(OsCall::kBindToNode, absl::StrCat("mbind to node ", node));
      !st.ok()) {
    return st;
  }
  return OsWrapper::BindToNode(addr, length, node);
}

absl::StatusOr<int> FaultyOs::NodeOfAddress(const void* addr) {
  if (absl::Status st = Inject(OsCall::kNodeOfAddress, "get_mempolicy"); !st.ok()) return st;
  return OsWrapper::NodeOfAddress(addr);
}

absl::StatusOr<MemoryPolicy> FaultyOs::ThreadMemoryPolicy() {
  if (absl::Status st = Inject(OsCall::kThreadMemoryPolicy, "get_mempolicy"); !st.ok()) return st;
  return OsWrapper::ThreadMemoryPolicy();
}

absl::Status FaultyOs::SetThreadMemoryPolicy(const MemoryPolicy& policy) {
  if (absl::Status st = Inject(OsCall::kSetThreadMemoryPolicy, "set_mempolicy"); !st.ok()) {
    return st;
  }
  return OsWrapper::SetThreadMemoryPolicy(policy);
}

absl::StatusOr<int> FaultyOs::MemfdCreate(const std::string& name, unsigned int flags) {
  if (absl::Status st = Inject(OsCall::kMemfdCreate, "memfd_create " + name); !st.ok()) return st;
  absl::StatusOr<int> fd = OsWrapper::MemfdCreate(name, flags);
  if (fd.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.insert(*fd);
  }
  return fd;
}

absl::StatusOr<int> FaultyOs::Open(const std::string& path, int flags, mode_t mode) {
  if (absl::Status st = Inject(OsCall::kOpen, "open " + path); !st.ok()) return st;
  absl::StatusOr<int> fd = OsWrapper::Open(path, flags, mode);
  if (fd.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.insert(*fd);
  }
  return fd;
}

absl::StatusOr<int> FaultyOs::Duplicate(int fd) {
  if (absl::Status st = Inject(OsCall::kDuplicate, "fcntl F_DUPFD_CLOEXEC"); !st.ok()) return st;
  absl::StatusOr<int> copy = OsWrapper::Duplicate(fd);
  if (copy.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.insert(*copy);
  }
  return copy;
}

absl::StatusOr<bool> FaultyOs::SameFile(int a, int b) {
  if (absl::Status st = Inject(OsCall::kSameFile, "kcmp"); !st.ok()) return st;
  return OsWrapper::SameFile(a, b);
}

absl::Status FaultyOs::Close(int fd) {
  absl::Status injected = Inject(OsCall::kClose, "close");
  absl::Status st = OsWrapper::Close(fd);
  {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.erase(fd);
    ForgetRing(fd);
  }
  return injected.ok() ? st : injected;
}

absl::Status FaultyOs::Ftruncate(int fd, off_t length) {
  if (absl::Status st = Inject(OsCall::kFtruncate, absl::StrCat("ftruncate to ", length, " bytes"));
      !st.ok()) {
    return st;
  }
  return OsWrapper::Ftruncate(fd, length);
}

absl::StatusOr<struct stat> FaultyOs::Fstat(int fd) {
  if (absl::Status st = Inject(OsCall::kFstat, "fstat"); !st.ok()) return st;
  return OsWrapper::Fstat(fd);
}

absl::StatusOr<struct stat> FaultyOs::Stat(const std::string& path) {
  if (absl::Status st = Inject(OsCall::kStat, "stat " + path); !st.ok()) return st;
  return OsWrapper::Stat(path);
}

absl::Status FaultyOs::Unlink(const std::string& path) {
  absl::Status injected = Inject(OsCall::kUnlink, "unlink " + path);
  absl::Status st = OsWrapper::Unlink(path);
  return injected.ok() ? st : injected;
}

absl::Status FaultyOs::Pread(int fd, void* buf, size_t length, off_t offset) {
  if (absl::Status st =
          Inject(OsCall::kPread, absl::StrCat("pread ", length, " bytes at offset ", offset));
      !st.ok()) {
    return st;
  }
  return OsWrapper::Pread(fd, buf, length, offset);
}

absl::StatusOr<std::string> FaultyOs::ReadFile(const std::string& path) {
  if (absl::Status st = Inject(OsCall::kReadFile, "cannot read " + path); !st.ok()) return st;
  return OsWrapper::ReadFile(path);
}

absl::StatusOr<std::vector<std::string>> FaultyOs::ListDir(const std::string& path) {
  if (absl::Status st = Inject(OsCall::kListDir, "cannot list " + path); !st.ok()) return st;
  return OsWrapper::ListDir(path);
}

absl::StatusOr<std::string> FaultyOs::HugetlbfsMountFor(size_t page_size) {
  if (absl::Status st =
          Inject(OsCall::kHugetlbfsMountFor, absl::StrCat("hugetlbfs mount of ", page_size));
      !st.ok()) {
    return st;
  }
  return OsWrapper::HugetlbfsMountFor(page_size);
}

absl::StatusOr<int> FaultyOs::IoUringSetup(unsigned entries) {
  if (absl::Status st = Inject(OsCall::kIoUringSetup, "io_uring_setup"); !st.ok()) return st;
  absl::StatusOr<int> fd = OsWrapper::IoUringSetup(entries);
  if (fd.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    fds_.insert(*fd);
  }
  return fd;
}

absl::Status FaultyOs::IoUringRegisterBuffers(int ring_fd, absl::Span<const iovec> buffers) {
  if (absl::Status st = Inject(OsCall::kIoUringRegisterBuffers,
                               absl::StrCat("io_uring_register of ", buffers.size(), " buffers"));
      !st.ok()) {
    return st;
  }
  absl::Status st = OsWrapper::IoUringRegisterBuffers(ring_fd, buffers);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    registered_.insert(ring_fd);
  }
  return st;
}

absl::Status FaultyOs::IoUringUnregisterBuffers(int ring_fd) {
  absl::Status injected = Inject(OsCall::kIoUringUnregisterBuffers, "io_uring_unregister");
  absl::Status st = OsWrapper::IoUringUnregisterBuffers(ring_fd);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ForgetRing(ring_fd);
  }
  return injected.ok() ? st : injected;
}

void FaultyOs::ForgetRing(int ring_fd) {
  registered_.erase(ring_fd);
  filled_.erase(filled_.lower_bound({ring_fd, 0}), filled_.lower_bound({ring_fd + 1, 0}));
}

absl::Status FaultyOs::IoUringRegisterSparseBuffers(int ring_fd, unsigned slots) {
  if (absl::Status st = Inject(OsCall::kIoUringRegisterSparseBuffers,
                               absl::StrCat("io_uring_register of a sparse table of ", slots));
      !st.ok()) {
    return st;
  }
  absl::Status st = OsWrapper::IoUringRegisterSparseBuffers(ring_fd, slots);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    registered_.insert(ring_fd);
  }
  return st;
}

absl::Status FaultyOs::IoUringUpdateBuffers(int ring_fd, unsigned first_slot,
                                            absl::Span<const iovec> buffers) {
  // Emptying slots gives pins back: done before an injected failure is reported.
  bool clearing = true;
  for (const iovec& v : buffers) clearing = clearing && v.iov_base == nullptr;
  const std::string what = absl::StrCat("io_uring_register update of buffers ", first_slot);
  absl::Status injected = Inject(OsCall::kIoUringUpdateBuffers, what);
  if (!injected.ok() && !clearing) return injected;
  absl::Status st = OsWrapper::IoUringUpdateBuffers(ring_fd, first_slot, buffers);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < buffers.size(); ++i) {
      const std::pair<int, unsigned> key{ring_fd, first_slot + static_cast<unsigned>(i)};
      if (buffers[i].iov_base == nullptr) {
        filled_.erase(key);
      } else {
        filled_.insert(key);
      }
    }
  }
  return injected.ok() ? st : injected;
}

absl::Status FaultyOs::IoUringCloneBuffers(int dst_fd, int src_fd, const IoUringCloneRange& range) {
  if (absl::Status st = Inject(OsCall::kIoUringCloneBuffers, "io_uring_register clone of buffers");
      !st.ok()) {
    return st;
  }
  absl::Status st = OsWrapper::IoUringCloneBuffers(dst_fd, src_fd, range);
  if (st.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    registered_.insert(dst_fd);
    for (unsigned i = 0; i < range.slots; ++i) filled_.insert({dst_fd, range.dst_slot + i});
  }
  return st;
}

void SweepFailures(FaultyOs& os, int err, absl::FunctionRef<absl::Status()> op,
                   absl::FunctionRef<void(const FailedRun&)> check) {
  os.Reset();
  if (absl::Status clean = op(); !clean.ok()) {
    ADD_FAILURE() << "without an injected failure: " << clean;
    return;
  }
  const int total = os.calls();
  const std::string clean_log = os.Log();
  for (int n = 1; n <= total; ++n) {
    os.FailNth(n, err);
    FailedRun run;
    run.n = n;
    run.status = op();
    if (!os.fired()) {
      ADD_FAILURE() << "call " << n << " of " << total << " never came: " << os.Log();
      continue;
    }
    run.call = os.fired_call();
    run.injected = os.fired_message();
    SCOPED_TRACE(::testing::Message() << "call " << n << " of " << total << " failed ("
                                      << run.injected << "); the calls: " << clean_log);
    check(run);
  }
  os.Reset();
}

}  // namespace hugemm::testing
