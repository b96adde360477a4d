// The facade: buffers mapped into the shadow table, their folios' owner, kernel pins.
#include "hugemm/runtime.h"

#include <sys/mman.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "runtime/alloc/address_index.h"
#include "runtime/alloc/pool.h"
#include "runtime/api/kernel_pin_table.h"
#include "runtime/api/memory_observers.h"
#include "runtime/pgtable/kernel_prot.h"
#include "runtime/sys/address_space.h"
#include "runtime/sys/fork_watch.h"
#include "runtime/sys/status.h"
#include "runtime/util/format.h"

namespace hugemm {

// What a Buffer holds. A MapBuffer record owns the extent and one descriptor per native
// page and is the owner of those folios: it deletes itself (telling the runtime's memory
// observers, the kernel pin table first of all, then unmapping the extent) when the last
// of them is released, which is after the buffer was freed and the last pin dropped. An
// Allocate record holds the allocator's handle; the allocator owns the folio, and the
// pool extent it came from is what the observers know.
class Runtime::BufferRecord final : public FolioOwner {
 public:
  // `made_by`: the runtime's own (a copy: asking getpid per allocation would cost more).
  explicit BufferRecord(const bridge::ForkWatch& made_by) : made_by_(made_by) {}

  void ReleaseFolio(Folio* /*folio*/) override {
    if (live_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  Extent extent;
  std::unique_ptr<Folio[]> folios;
  size_t nfolios = 0;
  std::shared_ptr<api_internal::MemoryObservers> observers;  // told of the extent
  FolioHandle handle;                                        // Allocate records
  std::byte* data = nullptr;
  size_t size = 0;
  Prot prot = kProtNone;

  void SetLive(size_t n) { live_.store(n, std::memory_order_relaxed); }

  MemoryRange range() const {
    return {.data = extent.data(),
            .length = extent.size(),
            .page_size = extent.page_size(),
            .node = extent.node(),
            .backing = backing,
            .kind = MemoryRangeKind::kBuffer};
  }

  ~BufferRecord() override {
    // In a child of fork() (its copy of a pin of a buffer freed before the fork was the
    // last): the rings, containers and tables the observers know are the parent's too,
    // and the address may hold the child's own mapping by now. Nothing is told and
    // nothing unmapped; the child's copy of the extent goes with its exit or exec.
    if (made_by_.InChild()) [[unlikely]] {
      (void)new Extent(std::move(extent));  // never unmapped here, as ~Runtime leaves it
      return;
    }
    // The kernel and every device table let go before the memory goes.
    if (observers != nullptr) observers->MemoryRemoving(range());
    (void)extent.Unmap();
  }

  BackingKind backing = BackingKind::kHugetlb;

 private:
  std::atomic<size_t> live_{0};
  const bridge::ForkWatch made_by_;  // the process that mapped the extent
};

namespace {

// An entry of a std::map made apart from it, to be moved in later (insert of a node
// handle allocates nothing): so that entering something in two maps cannot run out of
// memory between the first and the second.
template <typename Map>
typename Map::node_type NewNode() {
  Map scratch;
  scratch.emplace();
  return scratch.extract(scratch.begin());
}

// Unmaps what of the record's folios the table still maps.
absl::Status UnmapRecord(PageTable& table, const Runtime::BufferRecord& record) {
  absl::Status st = table.Unmap(record.data, record.size);
  if (!absl::IsNotFound(st)) return st;
  // A program unmapped part of the buffer through table(): what is left still holds
  // references on the buffer's folios, which must go too or its memory would stay until
  // the runtime closes. Leaves of other folios (mapped into a hole since) stay.
  auto owned = [&record](const Folio* f) {
    if (record.handle) return f == record.handle.folio();
    return f >= record.folios.get() && f < record.folios.get() + record.nfolios;
  };
  // One run of them at a time, found by a walk from where the last ended: no list is
  // made, so a free never needs the heap for it.
  const auto end = reinterpret_cast<uintptr_t>(record.data) + record.size;
  for (uintptr_t from = reinterpret_cast<uintptr_t>(record.data); from < end;) {
    uintptr_t run = 0;
    size_t bytes = 0;
    bool closed = false;  // the first run ended before the walk did
    table.Walk(reinterpret_cast<const void*>(from), end - from, [&](const LogicalLeaf& l) {
      if (closed) return;
      if (!owned(l.folio) || (bytes != 0 && run + bytes != l.va)) {
        closed = bytes != 0;
        return;
      }
      if (bytes == 0) run = l.va;
      bytes += l.bytes;
    });
    if (bytes == 0) break;
    if (st = table.Unmap(reinterpret_cast<const void*>(run), bytes); !st.ok()) return st;
    from = run + bytes;
  }
  return absl::OkStatus();
}

// The runtime whose RegisterExternal or UnregisterExternal this thread is in: a notifier
// callback those run may not start another (it would wait for the first to end).
thread_local const Runtime* t_changing_external = nullptr;

class ChangingExternal {
 public:
  explicit ChangingExternal(const Runtime* rt) : outer_(t_changing_external) {
    t_changing_external = rt;
  }
  ~ChangingExternal() { t_changing_external = outer_; }
  ChangingExternal(const ChangingExternal&) = delete;
  ChangingExternal& operator=(const ChangingExternal&) = delete;

 private:
  const Runtime* const outer_;  // another runtime's, when a callback of it runs this
};

absl::Status RefuseNestedExternalChange(const Runtime* rt, absl::string_view what) {
  if (t_changing_external != rt) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(what,
                   ": called from a notifier callback of this runtime's own external "
                   "registration or unregistration, which waits for it; call it after the "
                   "callback returns"));
}

}  // namespace

Runtime::Runtime(const RuntimeOptions& options)
    : options_(options),
      os_(options.os != nullptr ? *options.os : Os::Default()),
      observers_(std::make_shared<api_internal::MemoryObservers>()) {
  options_.os = &os_;
  options_.allocator.os = &os_;
  options_.allocator.observer = observers_.get();
}

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Open(const RuntimeOptions& options) {
  if (options.allocator.os != nullptr && options.os != nullptr &&
      options.allocator.os != options.os) {
    return absl::InvalidArgumentError(
        "RuntimeOptions: allocator.os and os name different Os; set os only");
  }
  RuntimeOptions resolved = options;
  if (resolved.os == nullptr) resolved.os = resolved.allocator.os;
  std::unique_ptr<Runtime> rt(new Runtime(resolved));
  absl::StatusOr<std::unique_ptr<api_internal::KernelPinTable>> pins =
      api_internal::KernelPinTable::Create(
          rt->os_, {.slots = options.kernel_pin_slots, .pin = options.kernel_pins});
  if (!pins.ok()) return pins.status();
  rt->kernel_pins_ = std::move(*pins);
  // The kernel pin table hears of memory first and of its removal last; an observer the
  // options name comes after it.
  (void)rt->observers_->Add(rt->kernel_pins_.get());
  if (options.allocator.observer != nullptr) {
    if (absl::Status st = rt->observers_->Add(options.allocator.observer); !st.ok()) return st;
  }
  absl::StatusOr<std::unique_ptr<Allocator>> alloc = Allocator::Create(rt->options_.allocator);
  if (!alloc.ok()) return alloc.status();
  rt->allocator_ = std::move(*alloc);
  // The real machine's answer never changes, and is asked only once.
  rt->table_ = std::make_unique<PageTable>(
      &rt->os_ == &Os::Default() ? DetectHostGeometry() : DetectHostGeometry(rt->os_), rt->os_);
  rt->pinner_ = std::make_unique<Pinner>(
      *rt->table_, PinnerOptions{.granularity = options.refcount, .owner_refs = 1});
  return rt;
}

Runtime::~Runtime() {
  if (kernel_pins_ != nullptr && kernel_pins_->InForkedChild()) {
    // A child of fork() has none of the memory (MADV_DONTFORK): unmapping would hit holes
    // that may hold the child's own mappings by now, and a lock or a read section another
    // of the parent's threads held at the fork stays held here forever, so a teardown
    // could wait for good. Everything is left to the child's exit; only the child's
    // descriptor of the kernel pin ring is closed.
    // No lock: a thread that held it at the fork does not exist here.
    (void)new std::map<uint64_t, std::unique_ptr<BufferRecord>>(std::move(buffers_));
    (void)pinner_.release();
    (void)table_.release();
    (void)allocator_.release();
    kernel_pins_.reset();
    return;
  }
  // Each buffer in turn, by id, without a list (the heap may be what ran out).
  for (uint64_t last = 0;;) {
    uint64_t id = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = buffers_.upper_bound(last);
      if (it == buffers_.end()) break;
      id = it->first;
    }
    last = id;
    try {
      if (absl::Status st = FreeById(id); !st.ok()) {
        std::fprintf(stderr, "hugemm: freeing buffer %llu at exit: %s\n",
                     static_cast<unsigned long long>(id), std::string(st.message()).c_str());
      }
    } catch (...) {
      // Kept mapped (FreeById put it back) and left to the process's exit.
      std::fprintf(stderr, "hugemm: freeing buffer %llu at exit: out of memory; left mapped\n",
                   static_cast<unsigned long long>(id));
    }
  }
  pinner_.reset();
  table_.reset();       // drops the references of whatever else is still mapped
  allocator_.reset();   // idle pools give their extents back, told to the observers
  observers_->Close();  // memory still pinned now outlives the runtime, unreported
  kernel_pins_.reset();
}

absl::Status Runtime::AddMemoryObserver(MemoryObserver* observer,
                                        absl::FunctionRef<absl::Status()> first) {
  return observers_->Add(observer, first);
}

absl::Status Runtime::RemoveMemoryObserver(MemoryObserver* observer) {
  return observers_->Remove(observer);
}

KernelPinStats Runtime::kernel_pin_stats() const {
  const api_internal::KernelPinTable::Stats s = kernel_pins_->stats();
  return {.slots = s.capacity,
          .slots_used = s.used,
          .bytes = s.bytes,
          .pinned_bytes = s.pinned_bytes,
          .ring_fd = s.ring_fd};
}

absl::StatusOr<Buffer> Runtime::MapBuffer(size_t length, const BufferOptions& options) {
  // Its memory would be the child's own, but the table, the kernel pin ring and the
  // observers (a VFIO container, a program's ring) are the parent's as well.
  if (kernel_pins_->InForkedChild()) [[unlikely]]
    return RefuseInForkedChild(absl::StrCat("map ", length, " bytes"));
  // A length no address space holds is a bad argument, not a shortage: refused before
  // the kernel is asked to reserve it (which would answer ENOMEM).
  if (length > sys::kMaxMappingBytes) {
    return absl::InvalidArgumentError(hugemm::Format(
        "map %u bytes: longer than the %d-bit user address space", length, sys::kUserAddressBits));
  }
  if (HasAny(options.prot, ~(kProtRead | kProtWrite | kProtExec)) ||
      !HasAny(options.prot, kProtRead)) {
    return absl::InvalidArgumentError(
        hugemm::Format("map %u bytes: protection 0x%x must include read and only read, write "
                       "and exec",
                       length, static_cast<uint32_t>(options.prot)));
  }
  BackingOptions bo{.kind = options.backing,
                    .page_size = options.page_size,
                    .hugetlbfs_mount = options.hugetlbfs_mount,
                    .devdax_path = options.devdax_path,
                    .os = &os_};
  absl::StatusOr<std::shared_ptr<Backing>> backing = Backing::Create(bo);
  if (!backing.ok()) return backing.status();
  const MapRequest request{
      .length = length, .node = options.node, .shared = options.shared, .name = options.file_name};
  absl::StatusOr<Extent> extent = (*backing)->Map(request);
  // Huge pages this runtime's pools hold free are its own to give back: a 1G page a freed
  // allocation left in a pool would otherwise stay out of reach until the runtime closes.
  if (extent.status().code() == absl::StatusCode::kResourceExhausted && allocator_->Shrink() > 0) {
    extent = (*backing)->Map(request);
  }
  if (!extent.ok()) return extent.status();

  // The runtime's entries for the buffer are made before anything changes, so that
  // entering it at the end cannot run out of memory half way.
  auto entry = NewNode<decltype(buffers_)>();
  auto address_entry = NewNode<decltype(by_address_)>();
  auto owned = std::make_unique<BufferRecord>(kernel_pins_->fork_watch());
  owned->nfolios = extent->page_count();
  owned->folios.reset(new Folio[owned->nfolios]);
  const std::string created_file =
      extent->created_file() ? (*backing)->FilePath(options.file_name) : "";
  for (size_t i = 0; i < owned->nfolios; ++i) {
    InitFolioForPage(&owned->folios[i], *extent, i, owned.get());  // the buffer's reference
  }
  owned->SetLive(owned->nfolios);
  owned->data = extent->data();
  owned->size = extent->size();
  owned->prot = options.prot;
  owned->backing = options.backing;
  const size_t folio_size = extent->page_size();
  owned->extent = std::move(*extent);
  // From here the buffer's references own the record: it deletes itself with the last.
  BufferRecord* record = owned.release();

  // Every way out but the last unwinds here, an exception's too: the table lets go of
  // the leaves it mapped, then the buffer's references go. A named file this call created
  // goes too, as it would had the backing failed.
  size_t mapped = 0;
  bool entered = false;
  absl::Cleanup drop = [&]() noexcept {
    if (entered) return;
    if (mapped > 0) {
      // A table short of memory to unmap keeps the leaves, and with them the buffer:
      // leaked whole rather than freed under a leaf.
      try {
        (void)table_->Unmap(record->data, mapped * folio_size);
      } catch (...) {
        return;
      }
    }
    const size_t n = record->nfolios;
    Folio* folios = record->folios.get();
    for (size_t i = 0; i < n; ++i) FolioPut(&folios[i]);
    if (!created_file.empty()) (void)os_.Unlink(created_file);
  };
  // The kernel pin table and every other observer learn the buffer before it is handed
  // out (its PFNs may go to a device at once).
  if (absl::Status st = observers_->MemoryAdded(record->range()); !st.ok()) return st;
  record->observers = observers_;
  for (; mapped < record->nfolios; ++mapped) {
    Folio* f = &record->folios[mapped];
    if (absl::Status st = table_->Map(f, f->data, options.prot); !st.ok()) return st;
  }
  // The kernel's mapping gets the same protection as the table's, so that Verify holds
  // them equal and the program's own accesses obey it. Mapped read and write (the
  // backing faults the pages in and the kernel pins register them writable), it changes
  // only after.
  if (options.prot != (kProtRead | kProtWrite)) {
    const int prot = (HasAny(options.prot, kProtRead) ? PROT_READ : 0) |
                     (HasAny(options.prot, kProtWrite) ? PROT_WRITE : 0) |
                     (HasAny(options.prot, kProtExec) ? PROT_EXEC : 0);
    if (absl::Status st = os_.Mprotect(record->data, record->size, prot); !st.ok()) {
      return sys::Annotate(st, hugemm::Format("map %u bytes as %s", length,
                                              pgtable_internal::ProtLetters(options.prot)));
    }
  }

  Buffer buffer;
  buffer.runtime_ = this;
  buffer.data_ = record->data;
  buffer.size_ = record->size;
  buffer.folio_size_ = folio_size;
  std::lock_guard<std::mutex> lock(mu_);
  buffer.id_ = next_id_++;
  entry.key() = buffer.id_;
  entry.mapped().reset(record);
  address_entry.key() = reinterpret_cast<uintptr_t>(record->data);
  address_entry.mapped() = buffer.id_;
  buffers_.insert(std::move(entry));
  by_address_.insert(std::move(address_entry));
  entered = true;
  return buffer;
}

absl::StatusOr<Buffer> Runtime::Allocate(size_t bytes, const AllocOptions& options) {
  // The pools' extents are the parent's and MADV_DONTFORK: a folio a child took from them
  // (a free one, or one in the magazine it inherited) would be memory it does not have.
  if (kernel_pins_->InForkedChild()) [[unlikely]]
    return RefuseInForkedChild(absl::StrCat("allocate ", bytes, " bytes"));
  absl::StatusOr<FolioHandle> handle = allocator_->Allocate(bytes, options);
  // Another pool may hold free the pages this one needs: hugetlb and hugetlbfs pools of a
  // page size draw on the same kernel pool.
  if (handle.status().code() == absl::StatusCode::kResourceExhausted && allocator_->Shrink() > 0) {
    handle = allocator_->Allocate(bytes, options);
  }
  if (!handle.ok()) return handle.status();
  Folio* folio = handle->folio();
  // Everything that may run out of memory comes before the table maps the folio: after
  // it, nothing can fail.
  auto entry = NewNode<decltype(buffers_)>();
  auto address_entry = NewNode<decltype(by_address_)>();
  auto record = std::make_unique<BufferRecord>(kernel_pins_->fork_watch());
  if (absl::Status st = table_->Map(folio, folio->data, kProtRead | kProtWrite); !st.ok()) {
    return st;
  }
  record->data = folio->data;
  record->size = folio->size();
  record->prot = kProtRead | kProtWrite;
  // The kernel pin is the pool extent's, taken when the pool grew by it.
  record->handle = std::move(*handle);
  Buffer buffer;
  buffer.runtime_ = this;
  buffer.data_ = record->data;
  buffer.size_ = record->size;
  buffer.folio_size_ = record->size;
  std::lock_guard<std::mutex> lock(mu_);
  buffer.id_ = next_id_++;
  address_entry.key() = reinterpret_cast<uintptr_t>(record->data);
  address_entry.mapped() = buffer.id_;
  entry.key() = buffer.id_;
  entry.mapped() = std::move(record);
  buffers_.insert(std::move(entry));
  by_address_.insert(std::move(address_entry));
  return buffer;
}

absl::Status Runtime::FreeById(uint64_t id) {
  if (kernel_pins_->InForkedChild()) [[unlikely]]
    return RefuseInForkedChild(hugemm::Format("free of buffer %u", id));
  // Taken out of both maps as node handles, so that a free that cannot finish puts the
  // buffer back as it was without the heap.
  decltype(buffers_)::node_type by_id;
  decltype(by_address_)::node_type by_data;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = buffers_.find(id);
    if (it == buffers_.end()) {
      return absl::NotFoundError(hugemm::Format("no buffer with id %u", id));
    }
    by_id = buffers_.extract(it);
    by_data = by_address_.extract(reinterpret_cast<uintptr_t>(by_id.mapped()->data));
  }
  // Out of the table first (its mapping references), then the owner's references. The
  // table's unmap needs no heap; a throw is still the buffer's to keep (a later free
  // finishes it: UnmapRecord unmaps what is left).
  absl::Status unmapped;
  try {
    unmapped = UnmapRecord(*table_, *by_id.mapped());
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    buffers_.insert(std::move(by_id));
    if (!by_data.empty()) by_address_.insert(std::move(by_data));
    throw;
  }
  std::unique_ptr<BufferRecord> record = std::move(by_id.mapped());
  if (record->handle) {
    record->handle.Reset();  // the allocator takes the folio back after the last pin
    return unmapped;
  }
  BufferRecord* r = record.release();  // deletes itself with its last folio
  const size_t n = r->nfolios;
  Folio* folios = r->folios.get();
  for (size_t i = 0; i < n; ++i) FolioPut(&folios[i]);
  return unmapped;
}

absl::Status Runtime::Free(const void* data) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_address_.find(reinterpret_cast<uintptr_t>(data));
    if (it == by_address_.end()) {
      return absl::NotFoundError(hugemm::Format("%p is not the start of a hugemm buffer", data));
    }
    id = it->second;
  }
  if (absl::Status st = MayFree(id); !st.ok()) return st;
  return FreeById(id);
}

absl::Status Runtime::MayFree(uint64_t id) {
  // A fork() child's observers are its parent's too, and FreeById refuses there anyway.
  if (kernel_pins_->InForkedChild()) [[unlikely]]
    return absl::OkStatus();
  MemoryRange range;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = buffers_.find(id);
    if (it == buffers_.end() || it->second->handle) return absl::OkStatus();
    range = it->second->range();
  }
  // Asked before anything changes: a refusal leaves the buffer as it was.
  if (absl::Status st = observers_->MayRemove(range); !st.ok()) {
    return sys::Annotate(st, hugemm::Format("free of the buffer at %p", range.data));
  }
  return absl::OkStatus();
}

absl::StatusOr<BufferSpan> Runtime::BufferAt(const void* va) {
  const auto p = reinterpret_cast<uintptr_t>(va);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_address_.upper_bound(p);
  if (it != by_address_.begin()) {
    --it;
    const BufferRecord& r = *buffers_.at(it->second);
    const auto data = reinterpret_cast<uintptr_t>(r.data);
    if (p - data < r.size) {
      BufferSpan span{.id = it->second, .data = r.data, .size = r.size};
      span.extent_data = r.data;
      span.extent_size = r.size;
      if (r.handle) {
        // The folio holds a reference, so its pool keeps the extent mapped (and indexed).
        span.allocated = true;
        alloc_internal::IndexReader reader;
        if (const alloc_internal::ExtentRecord* rec = reader.Lookup(r.data)) {
          const Extent& extent = rec->extent;
          span.extent_data = extent.data();
          span.extent_size = extent.size();
        }
      }
      return span;
    }
  }
  return absl::NotFoundError(hugemm::Format("%p is not in a buffer of this runtime", va));
}

absl::Status Runtime::RefuseInForkedChild(absl::string_view what) const {
  if (!kernel_pins_->InForkedChild()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(what,
                   ": this process is a fork() child of the one that opened the runtime, has "
                   "none of its memory and must not change its table; open a runtime of its own"));
}

absl::StatusOr<uint64_t> Runtime::RegisterExternal(const void* va, size_t length) {
  if (absl::Status st = RefuseInForkedChild("register external memory"); !st.ok()) return st;
  if (absl::Status st = RefuseNestedExternalChange(this, "register external memory"); !st.ok())
    return st;
  // One registration or unregistration at a time: a range registered again while its
  // unregistration gives back its hold must not meet that hold still in the kernel pin
  // table (it would be registered without one).
  std::lock_guard<std::mutex> order(external_order_mu_);
  ChangingExternal changing(this);
  // The kernel pin table holds the frames as it holds the runtime's own memory, so that
  // whatever the program does to its mapping later, the frames the table hands out stay
  // this process's until the registration goes. The hold is taken before the table maps
  // the range, so that a refusal leaves nothing any reader could have pinned. The kernel
  // pins only memory it may write (io_uring registers buffers for writing): read-only
  // memory is registered without.
  // The record's map node, made before anything is taken, so that the last step needs no
  // heap: a registration is either kept whole or undone.
  decltype(external_)::node_type record;
  {
    decltype(external_) one;
    one.emplace(0, MemoryRange{});
    record = one.extract(one.begin());
  }
  std::optional<MemoryRange> held;
  // A throw (the heap ran out) gives back what was taken so far, as a refusal does.
  const auto give_back_hold = [&] {
    if (held) kernel_pins_->MemoryRemoving(*held);
  };
  absl::StatusOr<uint64_t> id = [&]() -> absl::StatusOr<uint64_t> {
    try {
      return table_->RegisterExternal(
          va, length, [&](absl::Span<const PageTable::ExternalPage> pages) -> absl::Status {
            if (pages.empty()) return absl::OkStatus();
            MemoryRange range{.data = static_cast<std::byte*>(const_cast<void*>(va)),
                              .length = length,
                              .page_size = pages.front().folio->size(),
                              .node = pages.front().folio->node,
                              .backing = pages.front().folio->backing,
                              .kind = MemoryRangeKind::kBuffer};
            bool writable = true;
            for (const PageTable::ExternalPage& p : pages) writable &= HasAny(p.prot, kProtWrite);
            if (!writable && kernel_pins_->ring_fd() >= 0) return absl::OkStatus();
            absl::Status st = kernel_pins_->MemoryAdded(range);
            // A limit the program can change refuses the registration; memory the kernel will
            // not pin at all is registered without a hold, as read-only memory is.
            if (absl::IsResourceExhausted(st)) return st;
            if (st.ok()) held = range;
            return absl::OkStatus();
          });
    } catch (...) {
      give_back_hold();
      throw;
    }
  }();
  if (!id.ok()) {
    give_back_hold();  // the table refused after the hold
    return id;
  }
  if (held) {
    record.key() = *id;
    record.mapped() = *held;
    std::lock_guard<std::mutex> lock(mu_);
    external_.insert(std::move(record));
  }
  return id;
}

absl::Status Runtime::UnregisterExternal(uint64_t id) {
  if (absl::Status st = RefuseInForkedChild("unregister external memory"); !st.ok()) return st;
  if (absl::Status st = RefuseNestedExternalChange(this, "unregister external memory"); !st.ok())
    return st;
  std::lock_guard<std::mutex> order(external_order_mu_);
  ChangingExternal changing(this);
  if (absl::Status st = table_->UnregisterExternal(id); !st.ok()) return st;
  std::optional<MemoryRange> held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = external_.find(id); it != external_.end()) {
      held = it->second;
      external_.erase(it);
    }
  }
  // Nothing of the table refers to the frames any more, and no pin holds them.
  if (held) kernel_pins_->MemoryRemoving(*held);
  return absl::OkStatus();
}

std::optional<Translation> Runtime::Translate(const void* va, size_t max_run) const {
  return table_->Translate(va, max_run);
}

absl::StatusOr<FolioInfo> Runtime::FolioInfoAt(const void* va) const {
  // Under the leaf's lock, so the folio cannot be freed while it is read.
  std::optional<FolioInfo> info;
  table_->WithLeafLocked(va, [&](const LogicalLeaf& leaf) { info = DescribeFolio(*leaf.folio); });
  if (!info) return absl::NotFoundError(hugemm::Format("%p is not mapped by hugemm", va));
  return *info;
}

std::unique_ptr<RangeSubscription> Runtime::Subscribe(const void* va, size_t length,
                                                      NotifierCallbacks callbacks) {
  return std::make_unique<RangeSubscription>(table_->notifiers(), va, length, std::move(callbacks));
}

absl::StatusOr<VerifyReport> Runtime::Verify(const void* va, size_t length) const {
  return table_->Verify(va, length);
}

// Without asking the observers: nothing could hear a refusal.
Buffer::~Buffer() {
  if (runtime_ != nullptr) (void)runtime_->FreeById(id_);
}

Buffer::Buffer(Buffer&& other) noexcept { *this = std::move(other); }

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    if (runtime_ != nullptr) (void)runtime_->FreeById(id_);
    runtime_ = std::exchange(other.runtime_, nullptr);
    id_ = std::exchange(other.id_, 0);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    folio_size_ = std::exchange(other.folio_size_, 0);
  }
  return *this;
}

absl::Status Buffer::Free() {
  if (runtime_ == nullptr) return absl::OkStatus();
  if (absl::Status st = runtime_->MayFree(id_); !st.ok()) return st;  // still this Buffer's
  Runtime* rt = std::exchange(runtime_, nullptr);
  data_ = nullptr;
  size_ = 0;
  return rt->FreeById(std::exchange(id_, 0));
}

}  // namespace hugemm
