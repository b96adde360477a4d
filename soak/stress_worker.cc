// One soak thread: random operations on the shared slots, checked as they go.
#include "soak/stress_worker.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <utility>

#include "absl/strings/str_format.h"

namespace hugemm::soak::stress_internal {
namespace {

using Code = absl::StatusCode;
constexpr size_t kMaxViolations = 32;

const char* OutputName(Output o) {
  switch (o) {
    case Output::kPages:
      return "pin pages";
    case Output::kSpans:
      return "pin folios";
    case Output::kSegments:
      return "pin segments";
    case Output::kHandle:
      return "pin range";
  }
  return "pin";
}

}  // namespace

void Shared::Violation(const std::string& what) {
  std::lock_guard<std::mutex> lock(violations_mu);
  if (violations.size() < kMaxViolations) violations.push_back(what);
}

Worker::Worker(Shared& shared, int thread)
    : s_(shared),
      thread_(thread),
      rng_(shared.config.seed * 7919 + static_cast<uint64_t>(thread)) {}

Slot& Worker::PickSlot(size_t* index) {
  *index = Below(s_.slots.size());
  return *s_.slots[*index];
}

void Worker::Refused(const char* op, const absl::Status& st,
                     std::initializer_list<absl::StatusCode> ok) {
  if (st.ok()) return;
  if (st.message().empty()) s_.Violation(absl::StrFormat("%s: an error without words", op));
  for (Code c : ok) {
    if (st.code() == c) {
      ++refusals[absl::StrFormat("%s: %s", op, absl::StatusCodeToString(c))];
      return;
    }
  }
  s_.Violation(absl::StrFormat("%s: %s", op, st.ToString()));
}

void Worker::Run() {
  try {
    Loop();
    // After another worker ran out of memory halfway through an operation (the library's
    // or its own), nothing more is asked of the runtime: the run ends as one that could
    // not be done, and what was pinned goes with the process.
    if (s_.out_of_memory) return;
    while (!pins_.empty()) Unpin();
    sub_.reset();
  } catch (const std::bad_alloc&) {
    // Under RLIMIT_AS, say: what the worker was doing may be half done, which the run's
    // error (not a report of violations) stands for.
    s_.out_of_memory = true;
    s_.stop = true;
  }
}

void Worker::Loop() {
  while (!s_.stop.load(std::memory_order_relaxed)) {
    size_t i = 0;
    Slot& slot = PickSlot(&i);
    const char* kind = "";
    switch (Below(20)) {
      case 0:
      case 1:
        kind = "create";
        Create(i, slot);
        break;
      case 2:
        kind = "free";
        Free(i, slot);
        break;
      case 3:
      case 4:
      case 5:
      case 6:
        kind = "pin";
        Pin(i, slot);
        break;
      case 7:
      case 8:
      case 9:
        kind = "unpin";
        Unpin();
        break;
      case 10:
        kind = "split";
        Split(slot);
        break;
      case 11:
        kind = "protect";
        Protect(slot);
        break;
      case 12:
      case 13:
        kind = "translate";
        Translate(slot);
        break;
      case 14:
        kind = "subscribe";
        Subscribe(slot);
        break;
      case 15:
        kind = "audit";
        Audit(i, slot);
        break;
      case 19:
        kind = "trim";
        Trim();
        break;
      default:
        kind = "register";
        Register(i, slot);
        break;
    }
    ++by_kind[kind];
    if (sub_ != nullptr && ++sub_ops_ > 64) Subscribe(slot);  // drops it
  }
}

void Worker::Create(size_t i, Slot& s) {
  std::unique_lock<std::shared_mutex> lock(s.mu);
  if (s.kind != SlotKind::kEmpty) return;
  absl::StatusOr<Buffer> b;
  const bool mapped = Below(3) == 0;
  if (mapped) {
    const bool anon = Below(4) == 0;
    const size_t length = anon ? (1 + Below(16)) * kPageSize4K : (1 + Below(2)) * kPageSize2M;
    if (s_.buffer_bytes.fetch_add(length) + length > s_.config.max_bytes) {
      s_.buffer_bytes.fetch_sub(length);
      return;
    }
    b = s_.rt.MapBuffer(length, {.backing = anon ? BackingKind::kAnon : BackingKind::kHugetlb});
    if (!b.ok()) s_.buffer_bytes.fetch_sub(length);
  } else {
    const size_t bytes = kPageSize4K << Below(10);
    if (s_.buffer_bytes.fetch_add(bytes) + bytes > s_.config.max_bytes) {
      s_.buffer_bytes.fetch_sub(bytes);
      return;
    }
    b = s_.rt.Allocate(bytes);
    if (!b.ok()) s_.buffer_bytes.fetch_sub(bytes);
  }
  if (!b.ok()) {
    Refused(mapped ? "map buffer" : "allocate", b.status(), {Code::kResourceExhausted});
    return;
  }
  // A new owner sees zeroes: no canary (nor anything else) of an earlier owner.
  const size_t words = static_cast<size_t>(s_.config.threads);
  for (size_t off = 0; off < b->size(); off += kPageSize4K) {
    const auto* w = reinterpret_cast<const uint64_t*>(b->data() + off);
    for (size_t k = 0; k < words; ++k) {
      if (w[k] != 0) {
        s_.Violation(
            absl::StrFormat("slot %u: a new buffer's page at +0x%x holds 0x%x: "
                            "memory reached a new owner unzeroed",
                            i, off, w[k]));
        break;
      }
    }
  }
  s.kind = mapped ? SlotKind::kMapped : SlotKind::kAllocated;
  s.data = b->data();
  s.size = b->size();
  b->Detach();  // freed by address, like the C API does
}

void Worker::Free(size_t i, Slot& s) {
  std::unique_lock<std::shared_mutex> lock(s.mu);
  if (s.kind != SlotKind::kMapped && s.kind != SlotKind::kAllocated) return;
  if (absl::Status st = s_.rt.Free(s.data); !st.ok()) {
    s_.Violation(absl::StrFormat("slot %u: free: %s", i, st.ToString()));
  }
  s_.buffer_bytes.fetch_sub(s.size);
  {
    // Its pins stay with their threads, which give them back by their spans.
    std::lock_guard<std::mutex> pins(s.pins_mu);
    s.pins.clear();
  }
  ++s.generation;
  s.kind = SlotKind::kEmpty;
  s.data = nullptr;
  s.size = 0;
}

void Worker::Pin(size_t i, Slot& s) {
  std::shared_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty || (s.kind == SlotKind::kExternal && !s.registered)) return;
  auto p = std::make_unique<PinRecord>();
  p->output = static_cast<Output>(Below(4));
  p->slot = i;
  p->generation = s.generation;
  const size_t pages = s.size >> kPageShift;
  const size_t first = Below(pages);
  const size_t n = 1 + Below(std::min<size_t>(pages - first, 1024));
  p->asked = reinterpret_cast<uintptr_t>(s.data) + (first << kPageShift);
  p->asked_length = n << kPageShift;
  GupFlags flags = Below(4) == 0 ? kGupGet : kGupPin;
  if (Below(2) == 0) flags |= kGupWrite;
  if (Below(8) == 0 && flags == kGupPin) flags |= kGupLongterm;
  if (Below(8) == 0) flags |= kGupFastOnly;
  p->kind = HasAny(flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
  const void* va = reinterpret_cast<const void*>(p->asked);
  Pinner& pinner = s_.rt.pinner();
  absl::Status st;
  switch (p->output) {
    case Output::kPages: {
      p->refs.resize(n);
      absl::StatusOr<size_t> r = pinner.PinPages(va, n, flags, absl::MakeSpan(p->refs));
      st = r.status();
      break;
    }
    case Output::kSpans: {
      p->spans.resize(1 + Below(4));
      absl::StatusOr<size_t> r =
          pinner.PinFolios(va, p->asked_length, flags, absl::MakeSpan(p->spans));
      st = r.status();
      if (r.ok()) p->spans.resize(*r);
      break;
    }
    case Output::kSegments: {
      std::vector<DmaSegment> segs(1 + Below(8));
      absl::StatusOr<size_t> r = pinner.PinSegments(
          va, p->asked_length, flags, Below(2) ? 0 : kPageSize2M, absl::MakeSpan(segs), &p->spans);
      st = r.status();
      break;
    }
    case Output::kHandle: {
      absl::StatusOr<PinnedRange> r = pinner.Pin(va, p->asked_length, flags);
      st = r.status();
      if (r.ok()) p->handle = std::move(*r);
      break;
    }
  }
  if (!st.ok()) {
    // Read-only after a protect; borrowed memory takes no LONGTERM pin; outputs of fixed
    // room fill up; FAST_ONLY gives up on a mapping that keeps changing.
    Refused(OutputName(p->output), st,
            {Code::kPermissionDenied, Code::kFailedPrecondition, Code::kResourceExhausted,
             Code::kUnavailable});
    if (st.code() == Code::kFailedPrecondition &&
        !(HasAny(flags, kGupLongterm) && s.kind == SlotKind::kExternal) &&
        !(p->output == Output::kSegments && !s_.pfns_known)) {
      s_.Violation(absl::StrFormat("slot %u: %s", i, st.ToString()));
    }
    return;
  }
  if (p->output == Output::kHandle) p->spans = p->handle.spans();
  p->start = p->asked;
  p->pages = n;
  WriteCanaries(*p);
  // Room first: once other threads can see the record (s.pins), nothing may throw and
  // destroy it under them.
  pins_.reserve(pins_.size() + 1);
  {
    std::lock_guard<std::mutex> pins(s.pins_mu);
    s.pins.insert(p.get());
  }
  pins_.push_back(std::move(p));
}

void Worker::WriteCanaries(const PinRecord& p) {
  for (size_t k = 0; k < p.pages; ++k) {
    const uintptr_t page = p.start + (k << kPageShift);
    auto& [word, count] = canaries_[page];
    word = (uint64_t{0xca} << 56) | (static_cast<uint64_t>(thread_) << 40) | next_canary_++;
    ++count;
    *CanaryAt(page) = word;
  }
}

void Worker::CheckCanaries(const PinRecord& p) {
  for (size_t k = 0; k < p.pages; ++k) {
    const uintptr_t page = p.start + (k << kPageShift);
    auto it = canaries_.find(page);
    const uint64_t seen = *CanaryAt(page);
    ++canaries_checked;
    if (it == canaries_.end() || seen != it->second.first) {
      s_.Violation(absl::StrFormat(
          "the pinned page at 0x%x holds 0x%x, not its canary 0x%x: reused while pinned", page,
          seen, it == canaries_.end() ? 0 : it->second.first));
    }
    if (it != canaries_.end() && --it->second.second == 0) canaries_.erase(it);
  }
}

void Worker::Unpin() {
  if (pins_.empty()) return;
  const size_t k = Below(pins_.size());
  std::unique_ptr<PinRecord> p = std::move(pins_[k]);
  pins_.erase(pins_.begin() + static_cast<ptrdiff_t>(k));
  Slot& s = *s_.slots[p->slot];
  std::shared_lock<std::shared_mutex> lock(s.mu);
  // Out of the slot's records before the slot's lock goes, however this ends (a check
  // that throws for want of memory included): an audit must never meet it destroyed.
  struct Forget {
    Slot& s;
    const PinRecord* p;
    ~Forget() {
      std::lock_guard<std::mutex> pins(s.pins_mu);
      s.pins.erase(p);
    }
  } forget{s, p.get()};
  CheckCanaries(*p);
  const bool same = s.generation == p->generation && s.kind != SlotKind::kEmpty;
  const bool dirty = Below(2) == 0;
  Pinner& pinner = s_.rt.pinner();
  switch (p->output) {
    case Output::kPages:
      pinner.UnpinPages(p->refs, dirty);
      break;
    case Output::kSpans:
      pinner.UnpinFolios(p->spans, p->kind, dirty);
      break;
    case Output::kSegments:
      // By the range while the slot still maps what was pinned (splits and protections
      // change no folio); by the spans the pin logged once it may not.
      if (same && s.kind != SlotKind::kExternal) {
        if (absl::Status st = pinner.UnpinRange(reinterpret_cast<const void*>(p->asked),
                                                p->asked_length, p->kind, dirty);
            !st.ok()) {
          s_.Violation("unpin range of a live buffer: " + st.ToString());
        }
      } else {
        pinner.UnpinFolios(p->spans, p->kind, dirty);
      }
      break;
    case Output::kHandle:
      p->handle.Release();
      break;
  }
}

void Worker::Split(Slot& s) {
  std::shared_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty || (s.kind == SlotKind::kExternal && !s.registered)) return;
  absl::Status st = s_.rt.table().Split(s.data + Below(s.size));
  Refused("split", st, {Code::kFailedPrecondition});  // a single PTE
}

void Worker::Protect(Slot& s) {
  std::shared_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty || (s.kind == SlotKind::kExternal && !s.registered)) return;
  const size_t pages = s.size >> kPageShift;
  const size_t first = Below(pages);
  const size_t n = 1 + Below(pages - first);
  // Mostly back to writable: a read-only page refuses every WRITE pin.
  const Prot prot = Below(4) == 0 ? kProtRead : kProtRead | kProtWrite;
  absl::Status st = s_.rt.table().Protect(s.data + (first << kPageShift), n << kPageShift, prot);
  if (!st.ok()) s_.Violation("protect of a live slot: " + st.ToString());
}

void Worker::Translate(Slot& s) {
  std::shared_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty) return;
  const std::byte* va = s.data + Below(s.size);
  std::optional<Translation> t = s_.rt.Translate(va);
  const bool mapped = s.kind != SlotKind::kExternal || s.registered;
  if (t.has_value() != mapped) {
    s_.Violation(absl::StrFormat("translate of %p: %s", va, mapped ? "unmapped" : "mapped"));
  } else if (t && (t->folio == nullptr || !t->folio->contains(va) || t->folio->refcount() <= 0)) {
    s_.Violation(absl::StrFormat("translate of %p: not its folio", va));
  }
}

void Worker::Subscribe(Slot& s) {
  if (sub_ != nullptr) {
    sub_.reset();  // once this returns no callback runs
    const int64_t open = starts_.load() - ends_.load();
    // Each change in progress when it ended may have been heard starting only.
    if (open < 0 || open > s_.config.threads) {
      s_.Violation(absl::StrFormat("a subscription heard %d starts and %d ends", starts_.load(),
                                   ends_.load()));
    }
    return;
  }
  std::shared_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty) return;
  starts_ = 0;
  ends_ = 0;
  sub_ops_ = 0;
  sub_ = s_.rt.Subscribe(s.data, s.size,
                         {.invalidate_start = [this](const Invalidation&) { ++starts_; },
                          .invalidate_end = [this](const Invalidation&) { ++ends_; }});
}

// With the slot held still: each folio's refcount is its owner's, one per entry mapping
// it and the pins held on it; its pincount the DMA pins of a large folio.
void Worker::Audit(size_t i, Slot& s) {
  std::unique_lock<std::shared_mutex> lock(s.mu);
  if (s.kind == SlotKind::kEmpty || (s.kind == SlotKind::kExternal && !s.registered)) return;
  ++audits;
  std::map<Folio*, int64_t> refs, pins;
  s_.rt.table().Walk(s.data, s.size, [&](const LogicalLeaf& l) {
    refs[l.folio] +=
        l.cont ? static_cast<int64_t>(l.bytes / s_.rt.table().geometry().entry_bytes(l.level)) : 1;
  });
  std::lock_guard<std::mutex> guard(s.pins_mu);
  auto add = [&](Folio* f, int64_t n, RefKind kind) {
    if (!refs.contains(f)) return;  // another slot's folio: not audited here
    if (kind == RefKind::kGet) {
      refs[f] += n;
    } else if (f->large()) {
      refs[f] += n;
      pins[f] += n;
    } else {
      refs[f] += n * kPinBias;
    }
  };
  for (const PinRecord* p : s.pins) {
    for (const PageRef& r : p->refs) add(r.folio(), 1, r.kind());
    for (const FolioSpan& sp : p->spans) add(sp.folio, sp.pages, p->kind);
  }
  for (const auto& [folio, want] : refs) {
    const int32_t count = folio->refcount() - 1;  // the owner's
    const int32_t pinned = folio->pincount();
    if (count != want || pinned != pins[folio]) {
      s_.Violation(absl::StrFormat(
          "slot %u: the folio at %p has refcount %d and pincount %d, not 1 + %d and %d", i,
          folio->data, count + 1, pinned, want, pins[folio]));
    }
  }
}

void Worker::Register(size_t i, Slot& s) {
  // Whether a slot is external is fixed by its place: buffer slots change kind under
  // their lock, so reading `kind` here unlocked would race with Create and Free.
  if (i < s_.buffer_slots) return;
  std::unique_lock<std::shared_mutex> lock(s.mu);
  if (!s.registered) {
    absl::StatusOr<uint64_t> id = s_.rt.RegisterExternal(s.data, s.size);
    if (!id.ok()) {
      // No descriptor, no RLIMIT_MEMLOCK or no kernel pin slot left: a refusal hugemm.h
      // documents; without PFNs, the permission refusal too.
      if (!s_.pfns_known) {
        Refused("register external", id.status(),
                {Code::kPermissionDenied, Code::kResourceExhausted});
      } else {
        Refused("register external", id.status(), {Code::kResourceExhausted});
      }
      return;
    }
    s.registered = true;
    s.external_id = *id;
    return;
  }
  bool pinned;
  {
    std::lock_guard<std::mutex> guard(s.pins_mu);
    pinned = !s.pins.empty();
  }
  absl::Status st = s_.rt.UnregisterExternal(s.external_id);
  if (pinned) {
    if (st.code() != Code::kFailedPrecondition) {
      s_.Violation("unregister of pinned memory: " + st.ToString());
    } else {
      Refused("unregister", st, {Code::kFailedPrecondition});
    }
    return;
  }
  if (!st.ok()) {
    s_.Violation("unregister of unpinned memory: " + st.ToString());
    return;
  }
  s.registered = false;
  ++s.generation;
}

void Worker::Trim() { s_.rt.allocator().Shrink(); }

}  // namespace hugemm::soak::stress_internal
