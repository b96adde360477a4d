// Backing::Map, the one mapping procedure every kind shares:
//   reserve aligned VA -> map the source over it (hugetlb kinds: with the thread bound to
//   the node) -> bind to the node -> prefault -> MADV_DONTFORK -> check the node ->
//   read PFNs.
// Each kind only says what to map (Prepare) and what to give back (Release).
#include "hugemm/backing.h"

#include <numaif.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "runtime/backing/kind.h"
#include "runtime/sys/address_space.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/pagemap.h"
#include "runtime/sys/status.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace hugemm {
namespace {

// For hugetlb kinds, how many pages of this size the pool still has: the first thing
// anyone asks after "cannot allocate"; then a limit of the kind's own (a hugetlbfs
// mount's size=), which may be what ran out while the pool has pages free.
std::string PoolHint(Os& os, BackingKind kind, size_t page_size, int node,
                     const std::string& limit) {
  std::string counts;
  if (kind == BackingKind::kHugetlb || kind == BackingKind::kHugetlbfs) {
    counts = sys::DescribePool(os, page_size, node);
  }
  const std::string hint =
      counts.empty() || limit.empty() ? counts + limit : absl::StrCat(counts, "; ", limit);
  return hint.empty() ? "" : absl::StrCat(" (", hint, ")");
}

// The prefault of a hugetlb mapping fails with ENOMEM when the pool is short, and with
// EFAULT when the mapping is bound to a node that has no free page of the size: both
// are exhaustion, not a bad argument.
absl::Status PrefaultError(const absl::Status& st, BackingKind kind) {
  const int err = ErrnoOf(st);
  if ((kind == BackingKind::kHugetlb || kind == BackingKind::kHugetlbfs) &&
      (err == ENOMEM || err == EFAULT)) {
    return absl::Status(absl::StatusCode::kResourceExhausted, st.message());
  }
  return st;
}

// An mmap of hugetlb memory bound to a node, refused for want of pages while that node
// has them free: the kernel reserves the pages at mmap, before the mbind, and counts only
// the free pages of the nodes the calling thread's memory policy and cpuset allow. Map
// binds the thread to the node for the mmap; this is for when it could not.
std::string PolicyHint(Os& os, BackingKind kind, size_t page_size, int node, size_t length) {
  if (node < 0 || (kind != BackingKind::kHugetlb && kind != BackingKind::kHugetlbfs)) return "";
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(os, page_size);
  if (!pool.ok()) return "";
  const auto pages = static_cast<int64_t>(length / page_size);
  if (pool->free - pool->resv < pages) return "";  // the machine is short: the counts say so
  for (const NodePool& n : pool->nodes) {
    if (n.node == node && n.free >= pages) {
      return absl::StrCat(
          "; node ", node, " has the pages free, but the kernel reserves them at mmap from the ",
          "nodes of this thread's memory policy (set_mempolicy, numactl --membind) and cpuset");
    }
  }
  return "";
}

// Whether `node` is in a list such as "0-2,5" (/proc/self/status's Mems_allowed_list).
bool InNodeList(absl::string_view list, int node) {
  for (absl::string_view range : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> ends = absl::StrSplit(range, '-');
    int first = 0;
    int last = 0;
    if (!absl::SimpleAtoi(ends.first, &first)) continue;
    if (ends.second.empty()) {
      last = first;
    } else if (!absl::SimpleAtoi(ends.second, &last)) {
      continue;
    }
    if (first <= node && node <= last) return true;
  }
  return false;
}

// mbind refuses (EINVAL) an online node the process's cpuset does not allow.
std::string CpusetHint(Os& os, int node) {
  absl::StatusOr<std::string> status = os.ReadFile("/proc/self/status");
  if (!status.ok()) return "";
  for (absl::string_view line : absl::StrSplit(*status, '\n')) {
    if (!absl::ConsumePrefix(&line, "Mems_allowed_list:")) continue;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || InNodeList(line, node)) return "";
    return absl::StrCat("; node ", node, " is outside this process's cpuset (memory nodes ", line,
                        ")");
  }
  return "";
}

}  // namespace

absl::string_view BackingKindName(BackingKind kind) {
  switch (kind) {
    case BackingKind::kHugetlb:
      return "hugetlb";
    case BackingKind::kHugetlbfs:
      return "hugetlbfs";
    case BackingKind::kDevDax:
      return "devdax";
    case BackingKind::kAnon:
      return "anon";
  }
  return "unknown";
}

absl::StatusOr<BackingKind> ParseBackingKind(absl::string_view name) {
  for (BackingKind k :
       {BackingKind::kHugetlb, BackingKind::kHugetlbfs, BackingKind::kDevDax, BackingKind::kAnon}) {
    if (name == BackingKindName(k)) return k;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backing \"", name, "\" (hugetlb, hugetlbfs, devdax or anon)"));
}

absl::StatusOr<std::shared_ptr<Backing>> Backing::Create(const BackingOptions& options) {
  Os& os = options.os != nullptr ? *options.os : Os::Default();
  absl::StatusOr<std::unique_ptr<backing_internal::Kind>> impl =
      absl::InvalidArgumentError("unknown backing kind");
  switch (options.kind) {
    case BackingKind::kHugetlb:
      impl = backing_internal::NewHugetlb(options, os);
      break;
    case BackingKind::kHugetlbfs:
      impl = backing_internal::NewHugetlbfs(options, os);
      break;
    case BackingKind::kDevDax:
      impl = backing_internal::NewDevDax(options, os);
      break;
    case BackingKind::kAnon:
      impl = backing_internal::NewAnon(options, os);
      break;
  }
  if (!impl.ok()) return impl.status();
  return std::shared_ptr<Backing>(new Backing(std::move(*impl), os));
}

Backing::Backing(std::unique_ptr<backing_internal::Kind> impl, Os& os)
    : impl_(std::move(impl)), kind_(impl_->kind()), page_size_(impl_->page_size()), os_(os) {}

Backing::~Backing() = default;

std::string Backing::Describe() const { return impl_->Describe(); }

std::string Backing::FilePath(absl::string_view name) const { return impl_->FilePath(name); }

absl::StatusOr<Extent> Backing::Map(const MapRequest& request) {
  const std::string context =
      absl::StrCat(Describe(), ": map ", HumanBytes(request.length),
                   request.node >= 0 ? absl::StrCat(" on node ", request.node) : "");
  if (request.length == 0 || request.length % page_size_ != 0) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": length ", request.length,
                                                   " is not a positive multiple of the ",
                                                   PageSizeName(page_size_), " page size"));
  }
  if (request.node < -1) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": bad NUMA node ", request.node));
  }
  if (request.node >= 0) {
    absl::StatusOr<std::vector<int>> nodes = sys::OnlineNodes(os_, "/sys");
    if (!nodes.ok()) return sys::Annotate(nodes.status(), context);
    if (std::find(nodes->begin(), nodes->end(), request.node) == nodes->end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(context, ": NUMA node ", request.node, " is not online"));
    }
  }

  const size_t align = request.align ? request.align : page_size_;
  if (align < page_size_ || (align & (align - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": alignment ", align,
                                                   " is not a power of two of at least ",
                                                   PageSizeName(page_size_)));
  }
  // The reservation below is length + align bytes: a sum that wraps would reserve a
  // little and then trim (munmap) far beyond it, through other mappings; one past the
  // user address space is a bad request, not a shortage (mmap would say ENOMEM).
  if (request.length > std::numeric_limits<size_t>::max() - align ||
      request.length + align > sys::kMaxMappingBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(context, ": length ", request.length, " aligned to ", align,
                     " passes the end of the ", sys::kUserAddressBits, "-bit user address space"));
  }

  absl::StatusOr<backing_internal::Source> source = impl_->Prepare(request);
  if (!source.ok()) return sys::Annotate(source.status(), context);
  const size_t length = request.length;
  Os& os = os_;

  // Everything below unwinds through `undo`, once: the reservation, the fd, the source
  // range and a thread bound to the node for the mmap. An error return (fail) runs it, and
  // so does an exception on the way (a std::bad_alloc building a message or the PFN list).
  std::byte* mapped = nullptr;
  std::optional<MemoryPolicy> own_policy;  // while set, the thread is bound for the mmap
  bool undone = false;
  auto undo = [&] {
    if (undone) return;
    undone = true;
    if (own_policy.has_value()) (void)os.SetThreadMemoryPolicy(*own_policy);
    if (mapped != nullptr) (void)os.Munmap(mapped, length);
    if (source->owns_fd) (void)os.Close(source->fd);
    if (!source->created_path.empty()) (void)os.Unlink(source->created_path);
    impl_->Release(source->offset, length);
  };
  absl::Cleanup undo_on_throw = undo;
  auto with_pool_hint = [&](const absl::Status& status) {
    return sys::AppendToMessage(status,
                                PoolHint(os, kind_, page_size_, request.node, impl_->LimitHint()));
  };
  auto fail = [&](const absl::Status& status, absl::string_view step) -> absl::Status {
    undo();
    // A step the OS's message names already ("mmap: ...") is not named twice.
    if (absl::StartsWith(status.message(), absl::StrCat(step, ": "))) {
      return sys::Annotate(status, context);
    }
    return sys::Annotate(status, absl::StrCat(context, ": ", step));
  };

  if (source->fixed_node >= 0 && request.node >= 0 && request.node != source->fixed_node) {
    return fail(
        absl::InvalidArgumentError(absl::StrCat("the memory sits on node ", source->fixed_node)),
        "placement");
  }

  // Over-reserve PROT_NONE and trim to an aligned window, so that the kernel can map
  // every page at its natural level (a PMD or PUD leaf).
  absl::StatusOr<void*> reservation = os.Mmap(nullptr, length + align, PROT_NONE,
                                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (!reservation.ok()) return fail(reservation.status(), "reserve address space");
  auto base = reinterpret_cast<uintptr_t>(*reservation);
  uintptr_t aligned = (base + align - 1) & ~(uintptr_t{align} - 1);
  if (aligned > base) (void)os.Munmap(*reservation, aligned - base);
  if (uintptr_t tail = base + align - aligned; tail > 0) {
    (void)os.Munmap(reinterpret_cast<void*>(aligned + length), tail);
  }
  mapped = reinterpret_cast<std::byte*>(aligned);

  // The kernel reserves a hugetlb mapping's pages at mmap, before the mbind below places
  // them, and counts only the free pages of the nodes the calling thread's memory policy
  // binds it to: a thread bound to node 0 would be refused node 1's free pages. For the
  // mmap alone the thread is bound to the node asked for, then given back its own policy
  // exactly (mode, flags, nodes). A node the process's cpuset does not allow cannot be
  // bound to (EINVAL): the mmap goes ahead under the thread's own policy and the mbind
  // refuses the node, as it should.
  if (request.node >= 0 && source->fixed_node < 0 &&
      (kind_ == BackingKind::kHugetlb || kind_ == BackingKind::kHugetlbfs)) {
    absl::StatusOr<MemoryPolicy> own = os.ThreadMemoryPolicy();
    if (!own.ok()) return fail(own.status(), "read the thread's memory policy");
    if (request.node >= MemoryPolicy::kMaxNodes) {
      return fail(
          absl::InvalidArgumentError(absl::StrCat("NUMA node ", request.node, " out of range")),
          "bind the thread to the node");
    }
    MemoryPolicy bound;
    bound.mode = MPOL_BIND;
    bound.AddNode(request.node);
    if (absl::Status st = os.SetThreadMemoryPolicy(bound); st.ok()) {
      own_policy = *own;
    } else if (ErrnoOf(st) != EINVAL) {
      return fail(st, "bind the thread to the node");
    }
  }
  absl::StatusOr<void*> fixed =
      os.Mmap(mapped, length, PROT_READ | PROT_WRITE, source->flags | MAP_FIXED, source->fd,
              static_cast<off_t>(source->offset));
  const bool bound = own_policy.has_value();
  if (bound) {
    const MemoryPolicy own = *std::exchange(own_policy, std::nullopt);
    if (absl::Status st = os.SetThreadMemoryPolicy(own); !st.ok()) {
      return fail(
          sys::AppendToMessage(st, absl::StrCat("; the thread stays bound to node ", request.node)),
          "give the thread back its memory policy");
    }
  }
  if (!fixed.ok()) {
    absl::Status st = with_pool_hint(fixed.status());
    if (ErrnoOf(st) == ENOMEM && request.node >= 0 && !bound) {
      std::string hint = CpusetHint(os, request.node);
      if (hint.empty()) hint = PolicyHint(os, kind_, page_size_, request.node, length);
      st = sys::AppendToMessage(st, hint);
    }
    return fail(st, "mmap");
  }
  if (request.node >= 0 && source->fixed_node < 0) {
    if (absl::Status st = os.BindToNode(mapped, length, request.node); !st.ok()) {
      if (ErrnoOf(st) == EINVAL) st = sys::AppendToMessage(st, CpusetHint(os, request.node));
      return fail(st, "bind");
    }
  }
  // Fault everything in now: a shortage is an error here, never a SIGBUS later.
  if (absl::Status st = os.Madvise(mapped, length, MADV_POPULATE_WRITE); !st.ok()) {
    return fail(with_pool_hint(PrefaultError(st, kind_)), "prefault");
  }
  // A child's copy-on-write must never split a page a device is writing to.
  if (absl::Status st = os.Madvise(mapped, length, MADV_DONTFORK); !st.ok()) {
    return fail(st, "MADV_DONTFORK");
  }

  // Where did the pages land? One query per native page.
  int node = source->fixed_node;
  if (source->fixed_node < 0) {
    for (size_t off = 0; off < length; off += page_size_) {
      absl::StatusOr<int> n = os.NodeOfAddress(mapped + off);
      if (!n.ok()) return fail(n.status(), "node check");
      if (off == 0) {
        node = *n;
      } else if (*n != node) {
        node = -1;  // spread over several nodes
      }
      if (request.node >= 0 && *n != request.node) {
        return fail(absl::FailedPreconditionError(absl::StrCat("page at +", off, " landed on node ",
                                                               *n, " instead of ", request.node)),
                    "node check");
      }
    }
  }

  std::vector<uint64_t> pfns(length / page_size_, kUnknownPfn);
  if (absl::StatusOr<std::vector<uint64_t>> read =
          sys::ReadPfns(os, mapped, pfns.size(), page_size_);
      read.ok()) {
    pfns = std::move(*read);
  } else if (const int err = ErrnoOf(read.status()); err == EMFILE || err == ENFILE) {
    // No descriptor left to read pagemap with: the process's shortage, not PFNs the kernel
    // hides (those read as zero), and the caller must hear which.
    return fail(read.status(), "read the PFNs");
  }
  for (size_t i = 0; i < pfns.size(); ++i) {
    if (pfns[i] == kUnknownPfn) pfns[i] = impl_->PfnWithoutPagemap(source->offset + i * page_size_);
  }

  // From here on nothing throws: the extent owns the mapping and the source range.
  std::move(undo_on_throw).Cancel();
  if (source->owns_fd) (void)os.Close(source->fd);
  Extent extent;
  extent.data_ = mapped;
  extent.size_ = length;
  extent.page_size_ = page_size_;
  extent.node_ = node;
  extent.kind_ = kind_;
  extent.offset_ = source->offset;
  extent.pfns_ = std::move(pfns);
  extent.created_file_ = !source->created_path.empty();
  extent.backing_ = shared_from_this();
  return extent;
}

Extent::~Extent() { (void)Unmap(); }

Extent::Extent(Extent&& other) noexcept { *this = std::move(other); }

Extent& Extent::operator=(Extent&& other) noexcept {
  if (this != &other) {
    (void)Unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    page_size_ = std::exchange(other.page_size_, 0);
    node_ = std::exchange(other.node_, -1);
    kind_ = other.kind_;
    offset_ = std::exchange(other.offset_, 0);
    pfns_ = std::move(other.pfns_);
    other.pfns_.clear();
    created_file_ = std::exchange(other.created_file_, false);
    backing_ = std::move(other.backing_);
  }
  return *this;
}

absl::Status Extent::Unmap() {
  if (data_ == nullptr) return absl::OkStatus();
  absl::Status st = backing_->os().Munmap(data_, size_);
  backing_->impl_->Release(offset_, size_);
  data_ = nullptr;
  size_ = 0;
  pfns_.clear();
  created_file_ = false;
  backing_.reset();
  if (!st.ok()) return sys::Annotate(st, "unmap extent");
  return absl::OkStatus();
}

}  // namespace hugemm
