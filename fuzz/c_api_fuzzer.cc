// The C API (hugemm.h) under random call sequences on real huge pages: each input makes
// up to kMaxOps calls with random lengths, flags, offsets inside and outside its buffers
// and pointers freed or never handed out.
//
// Every call must answer as the header says: 0 or a count on success, a negative errno
// and a message on failure, never a crash (ASan, UBSan). Beyond that the input is held
// to what the API promises:
//   - a pin's output is the memory asked for (page addresses, segments as long as the
//     range), and an unpinned buffer's refcounts are its owner's and its mappings';
//   - memory handed out zeroed reads zero; a buffer freed while pinned keeps its memory
//     (a canary written at pin time is intact at unpin) until its last pin is released
//     by the unpin of its own output;
//   - subscriptions hear as many ends as starts, and the sequence word says so.
// Most inputs run on runtimes opened once (with and without kernel pins, folio and page
// refcounts), so that an input costs what its calls cost; each must free, unpin and
// unsubscribe what it made, and leave the process's descriptors and VmPin as it found
// them. One input in eight opens a runtime of its own and closes it with buffers and a
// registration still held: then nothing at all may be left (descriptors, huge page
// mappings, VmPin). At most kBudget bytes of huge pages are mapped at a time.
#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "fuzz/c_failure.h"
#include "fuzz/fuzz_input.h"
#include "hugemm/hugemm.h"
#include "soak/footprint.h"

namespace hugemm::fuzz {
namespace {

constexpr int kMaxOps = 32;
constexpr size_t k2M = size_t{2} << 20;
constexpr size_t kBudget = 16 * k2M;
constexpr uint64_t kCanary = 0x6875'6765'6d6d'2121;

struct Buf {
  hugemm_buffer b{};
  bool freed = false;
};

enum class Out { kPages, kFolios, kSegments };

struct Pin {
  Out out = Out::kPages;
  unsigned flags = 0;
  const void* addr = nullptr;
  size_t length = 0;
  std::vector<hugemm_page> pages;
  std::vector<hugemm_folio_span> spans;
  uint64_t* canary_at = nullptr;  // in the first pinned page, when the pin may write
  uint64_t canary = 0;
};

struct Sub {
  hugemm_subscription* sub = nullptr;
  const volatile uint64_t* seq = nullptr;
  int starts = 0, ends = 0;
  bool hears_ends = false;
};
void OnStart(void* user, const void*, size_t, int) { ++static_cast<Sub*>(user)->starts; }
void OnEnd(void* user, const void*, size_t, int) { ++static_cast<Sub*>(user)->ends; }

// The runtimes opened once, for every input that does not open its own.
struct Shared {
  hugemm_runtime* runtimes[3] = {};  // no kernel pins; kernel pins; page refcounts
  hugemm_runtime* other = nullptr;   // never the input's: its pointers are not ours
};

Shared& Runtimes() {
  static Shared* shared = [] {
    auto* s = new Shared;
    const hugemm_options options[3] = {
        {HUGEMM_REFCOUNT_FOLIO, 0}, {HUGEMM_REFCOUNT_FOLIO, 1}, {HUGEMM_REFCOUNT_PAGE, 0}};
    for (int i = 0; i < 3; ++i) {
      FUZZ_CHECK(hugemm_open(&options[i], &s->runtimes[i]) == 0, hugemm_last_error());
    }
    FUZZ_CHECK(hugemm_open(&options[0], &s->other) == 0, hugemm_last_error());
    return s;
  }();
  return *shared;
}

class Driver {
 public:
  explicit Driver(FuzzInput& in) : in_(in) {}
  void Run();

 private:
  // A failed call: a known negative errno and words for it.
  void CheckFailure(const char* call, long rc) {
    CheckCFailure(call, rc, {EINVAL, ENOENT, EEXIST, EPERM, ENOMEM, EFAULT, EAGAIN, EOPNOTSUPP},
                  trace_);
  }
  // Huge page memory held: live buffers, and freed ones while a pin may hold them.
  size_t Mapped() const {
    size_t n = 0;
    for (const Buf& b : bufs_) n += b.freed && pins_.empty() ? 0 : b.b.size;
    return n;
  }
  // An address: in a buffer (live or freed), past one, or anything.
  const void* PickAddress(size_t* buf);
  size_t PickLength();
  unsigned PickFlags();

  void OpMap();
  void OpAlloc();
  void OpFree();
  void OpPin();
  void OpUnpin();
  void OpQuery();
  void OpExternal();
  void OpSubscribe();
  void CheckCounts(size_t buf);
  void CheckSubscriptions();
  void Finish();

  FuzzInput& in_;
  hugemm_runtime* rt_ = nullptr;
  hugemm_runtime* other_ = nullptr;  // a second runtime, for pointers that are not ours
  bool own_ = false;                 // rt_ is this input's, closed at its end
  std::vector<Buf> bufs_;
  std::vector<Pin> pins_;
  std::vector<std::unique_ptr<Sub>> subs_;
  void* external_ = nullptr;
  uint64_t external_id_ = 0;
  bool registered_ = false;
  uint64_t next_canary_ = 1;
  const bool trace_ = std::getenv("HUGEMM_FUZZ_TRACE") != nullptr;
};

const void* Driver::PickAddress(size_t* buf) {
  *buf = SIZE_MAX;
  if (!bufs_.empty() && in_.Below(8) != 0) {
    *buf = in_.Below(bufs_.size());
    const hugemm_buffer& b = bufs_[*buf].b;
    size_t off = 0;
    switch (in_.Weighted({8, 4, 2, 1})) {
      case 1:
        off = in_.Below(b.size / 4096) * 4096;
        break;
      case 2:
        off = in_.Below(b.size + 3 * 4096);
        break;
      case 3:
        off = b.size;
        break;
    }
    return static_cast<const char*>(b.data) + off;
  }
  switch (in_.Below(4)) {
    case 0:
      return nullptr;
    case 1:
      return external_;
    default:
      return reinterpret_cast<const void*>(static_cast<uintptr_t>(in_.U64()));
  }
}

size_t Driver::PickLength() {
  switch (in_.Weighted({6, 6, 2, 1, 1})) {
    case 0:
      return (1 + in_.Below(16)) * 4096;
    case 1:
      return (1 + in_.Below(4)) * k2M;
    case 2:
      return in_.Below(3 * k2M);
    case 3:
      return 0;
    default:
      return static_cast<size_t>(in_.U64());
  }
}

unsigned Driver::PickFlags() {
  if (in_.Below(12) == 0) return in_.Below(4) == 0 ? in_.U32() : in_.Byte();
  unsigned f = in_.Below(3) == 0 ? HUGEMM_GET : HUGEMM_PIN;
  if (in_.Bool()) f |= HUGEMM_WRITE;
  if (in_.Below(6) == 0) f |= HUGEMM_LONGTERM;
  if (in_.Below(6) == 0) f |= HUGEMM_FAST_ONLY;
  if (in_.Below(4) == 0) f |= HUGEMM_PARTIAL;
  return f;
}

void Driver::OpMap() {
  size_t length = (1 + in_.Below(4) / 3) * k2M;
  hugemm_buffer_options o{HUGEMM_BACKING_HUGETLB, 0, -1, nullptr};
  hugemm_buffer_options* opts = in_.Bool() ? nullptr : &o;
  switch (in_.Weighted({10, 2, 2, 1, 1, 1, 1})) {
    case 1:
      o.backing = HUGEMM_BACKING_HUGETLBFS;
      break;
    case 2:
      o.backing = HUGEMM_BACKING_ANON;
      length = (1 + in_.Below(16)) * 4096;
      break;
    case 3:
      o.backing = HUGEMM_BACKING_DEVDAX;
      o.path = in_.Bool() ? nullptr : "/dev/dax9.9";
      break;
    case 4:
      o.backing = static_cast<int>(in_.U32());
      break;
    case 5:
      o.page_size = in_.Bool() ? size_t{1} << 30 : in_.U64();  // 1G: refused by the length
      break;
    case 6:
      length = PickLength();
      break;
  }
  if (in_.Below(8) == 0) o.node = static_cast<int>(in_.U32() % 4) - 2;
  if (length >= kBudget || Mapped() + length > kBudget) return;
  hugemm_buffer b{};
  const int rc = hugemm_map_buffer(in_.Below(32) == 0 ? nullptr : rt_, length, opts,
                                   in_.Below(32) == 0 ? nullptr : &b);
  CheckFailure("map_buffer", rc);
  if (rc != 0) return;
  FUZZ_CHECK(b.data != nullptr && b.size == length && b.size % b.folio_size == 0,
             "map_buffer: the buffer is not what was asked for");
  bufs_.push_back({b, false});
}

void Driver::OpAlloc() {
  size_t bytes = size_t{4096} << in_.Below(10);
  if (in_.Below(8) == 0) bytes = PickLength();
  hugemm_buffer_options o{HUGEMM_BACKING_HUGETLB, 0, -1, nullptr};
  hugemm_buffer_options* opts = nullptr;
  if (in_.Below(4) == 0) {
    opts = &o;
    o.backing = static_cast<int>(in_.Below(5));
    if (in_.Below(4) == 0) o.page_size = size_t{4096} << in_.Below(20);
  }
  const int uninit = in_.Below(4) == 0;
  if (Mapped() + k2M > kBudget) return;
  hugemm_buffer b{};
  const int rc = hugemm_alloc(rt_, bytes, opts, uninit, in_.Below(32) == 0 ? nullptr : &b);
  CheckFailure("alloc", rc);
  if (rc != 0) return;
  FUZZ_CHECK(b.size >= bytes && b.size == b.folio_size, "alloc: a folio smaller than asked");
  if (!uninit) {
    for (size_t off = 0; off < b.size; off += 4096) {
      FUZZ_CHECK(*reinterpret_cast<const uint64_t*>(static_cast<char*>(b.data) + off) == 0,
                 absl::StrFormat("alloc: byte %u of a zeroed folio is not zero", off));
    }
  }
  // Its next owner must never see this, nor a pin's canary (at 64) be overwritten by it.
  for (size_t off = 0; off < b.size; off += 4096) {
    *reinterpret_cast<uint64_t*>(static_cast<char*>(b.data) + off) = ~uint64_t{0};
    *reinterpret_cast<uint64_t*>(static_cast<char*>(b.data) + off + 64) = ~uint64_t{0};
  }
  bufs_.push_back({b, false});
}

void Driver::OpFree() {
  size_t i = SIZE_MAX;
  const void* p = PickAddress(&i);
  if (i != SIZE_MAX && in_.Below(4) != 0) p = bufs_[i].b.data;  // mostly a buffer's start
  hugemm_runtime* rt = in_.Below(16) == 0 ? other_ : rt_;
  const int rc = hugemm_free(rt, const_cast<void*>(p));
  CheckFailure("free", rc);
  // Ours: the start of a live buffer (a freed one's address may have been handed out again).
  size_t live = SIZE_MAX;
  for (size_t j = 0; j < bufs_.size(); ++j) {
    if (!bufs_[j].freed && bufs_[j].b.data == p && rt == rt_) live = j;
  }
  FUZZ_CHECK((rc == 0) == (live != SIZE_MAX), absl::StrFormat("free of %p: %d", p, rc));
  if (rc == 0) bufs_[live].freed = true;
  if (in_.Below(8) == 0) {
    // Gives back only pages that hold no buffer and no pin: every live buffer still
    // translates and reads (a pinned freed one's canary is checked at its unpin).
    const long t = hugemm_trim(rt_);
    CheckFailure("trim", t);
    FUZZ_CHECK(t >= 0 && t % 4096 == 0, absl::StrFormat("trim: %d", t));
    for (const Buf& b : bufs_) {
      if (b.freed) continue;
      hugemm_translation tr;
      FUZZ_CHECK(hugemm_translate(rt_, b.b.data, 0, &tr) == 0, "a live buffer trimmed away");
      // A buffer whose memory went back to the kernel faults here.
      (void)static_cast<const volatile char*>(b.b.data)[0];
      (void)static_cast<const volatile char*>(b.b.data)[b.b.size - 1];
    }
  }
}

void Driver::OpPin() {
  Pin pin;
  pin.out = static_cast<Out>(in_.Below(3));
  size_t i = SIZE_MAX;
  pin.addr = PickAddress(&i);
  pin.length = PickLength();
  pin.flags = PickFlags();
  const size_t cap = in_.Below(8) == 0 ? 0 : 1 + in_.Below(1024);
  const bool null_out = in_.Below(32) == 0;
  long rc = 0;
  size_t pages_pinned = 0;
  switch (pin.out) {
    case Out::kPages: {
      const size_t npages = in_.Below(8) == 0 ? pin.length : pin.length / 4096;
      if (npages > 4096) return;
      pin.pages.resize(std::max<size_t>(npages, 1));
      rc =
          hugemm_pin_pages(rt_, pin.addr, npages, pin.flags, null_out ? nullptr : pin.pages.data());
      CheckFailure("pin_pages", rc);
      if (rc <= 0) return;
      FUZZ_CHECK(static_cast<size_t>(rc) <= npages, "pin_pages: more pages than asked");
      pin.pages.resize(static_cast<size_t>(rc));
      const auto start = reinterpret_cast<uintptr_t>(pin.addr) & ~uintptr_t{4095};
      for (size_t k = 0; k < pin.pages.size(); ++k) {
        FUZZ_CHECK(
            reinterpret_cast<uintptr_t>(hugemm_page_address(pin.pages[k])) == start + k * 4096,
            "pin_pages: a page is not the one asked for");
      }
      pages_pinned = pin.pages.size();
      break;
    }
    case Out::kFolios: {
      pin.spans.resize(std::max<size_t>(cap, 1));
      rc = hugemm_pin_folios(rt_, pin.addr, pin.length, pin.flags,
                             null_out ? nullptr : pin.spans.data(), cap);
      CheckFailure("pin_folios", rc);
      if (rc <= 0) return;
      FUZZ_CHECK(static_cast<size_t>(rc) <= cap, "pin_folios: more spans than room");
      pin.spans.resize(static_cast<size_t>(rc));
      for (const hugemm_folio_span& s : pin.spans) pages_pinned += s.pages;
      break;
    }
    case Out::kSegments: {
      std::vector<hugemm_dma_segment> segs(std::max<size_t>(cap, 1));
      static constexpr uint64_t kMax[] = {0, 4096, 1 << 20, 2 << 20, 1000};
      rc = hugemm_pin_segments(rt_, pin.addr, pin.length, pin.flags, kMax[in_.Below(5)],
                               null_out ? nullptr : segs.data(), cap);
      CheckFailure("pin_segments", rc);
      if (rc <= 0) return;
      FUZZ_CHECK(static_cast<size_t>(rc) <= cap, "pin_segments: more segments than room");
      uint64_t bytes = 0;
      for (long k = 0; k < rc; ++k) bytes += segs[k].length;
      FUZZ_CHECK(bytes <= pin.length, "pin_segments: segments longer than the range");
      FUZZ_CHECK((pin.flags & HUGEMM_PARTIAL) || bytes == pin.length,
                 "pin_segments: segments shorter than an all-or-nothing range");
      pages_pinned = 1;
      break;
    }
  }
  // The first pinned page gets a canary when the pin may write and the page is a live
  // buffer's: whoever writes that page before the last unpin got memory still pinned.
  if (pages_pinned > 0 && (pin.flags & HUGEMM_WRITE) && i != SIZE_MAX) {
    const auto page = reinterpret_cast<uintptr_t>(pin.addr) & ~uintptr_t{4095};
    const auto& b = bufs_[i];
    if (!b.freed && page >= reinterpret_cast<uintptr_t>(b.b.data) &&
        page < reinterpret_cast<uintptr_t>(b.b.data) + b.b.size) {
      pin.canary_at = reinterpret_cast<uint64_t*>(page + 64);
      pin.canary = kCanary ^ next_canary_++;
      for (Pin& other : pins_) {
        if (other.canary_at == pin.canary_at) other.canary = pin.canary;
      }
      *pin.canary_at = pin.canary;
    }
  }
  pins_.push_back(std::move(pin));
}

void Driver::OpUnpin() {
  if (pins_.empty()) return;
  const size_t k = in_.Below(pins_.size());
  Pin& pin = pins_[k];
  FUZZ_CHECK(pin.canary_at == nullptr || *pin.canary_at == pin.canary,
             "a page was written by someone else while pinned");
  const int dirty = in_.Bool();
  long rc = 0;
  switch (pin.out) {
    case Out::kPages:
      rc = hugemm_unpin_pages(rt_, pin.pages.data(), pin.pages.size(), dirty);
      FUZZ_CHECK(rc >= 1, "unpin_pages: no reference operation");
      break;
    case Out::kFolios:
      rc = hugemm_unpin_folios(rt_, pin.spans.data(), pin.spans.size(),
                               pin.flags & (HUGEMM_PIN | HUGEMM_GET), dirty);
      FUZZ_CHECK(rc == static_cast<long>(pin.spans.size()), "unpin_folios: one per span");
      break;
    case Out::kSegments:
      rc = hugemm_unpin_range(rt_, pin.addr, pin.length, pin.flags, dirty);
      CheckFailure("unpin_range", rc);
      FUZZ_CHECK(rc == 0, std::string("unpin_range of a segment pin: ") + hugemm_last_error());
      break;
  }
  pins_.erase(pins_.begin() + static_cast<ptrdiff_t>(k));
}

void Driver::OpQuery() {
  size_t i = SIZE_MAX;
  const void* p = PickAddress(&i);
  hugemm_translation t{};
  const int rc = hugemm_translate(rt_, p, in_.Bool() ? 0 : in_.U32(), &t);
  CheckFailure("translate", rc);
  const bool inside =
      i != SIZE_MAX && !bufs_[i].freed &&
      static_cast<const char*>(p) < static_cast<const char*>(bufs_[i].b.data) + bufs_[i].b.size;
  FUZZ_CHECK(!inside || rc == 0, "translate of a live buffer");
  hugemm_folio_info info{};
  const int rc2 = hugemm_folio_info_at(rt_, p, &info);
  CheckFailure("folio_info_at", rc2);
  FUZZ_CHECK((rc2 == 0) == (rc == 0), "translate and folio info disagree");
  if (rc2 == 0) {
    FUZZ_CHECK(info.refcount > 0 && info.pincount >= 0 && t.folio != nullptr,
               "folio info of a live folio");
    const bool dma = info.order > 0 ? info.pincount > 0 : info.refcount >= 1024;
    FUZZ_CHECK(hugemm_maybe_dma_pinned(rt_, p) == dma, "maybe_dma_pinned");
  }
  if (inside) CheckCounts(i);
  if (in_.Below(8) == 0) {
    // Reads /proc, so now and then: nothing here changes memory behind the runtime's
    // back, so the table agrees with the kernel wherever it maps anything, and a range
    // over a live buffer holds at least its leaves.
    const size_t len = PickLength();
    hugemm_verify_report r{};
    const long v = hugemm_verify(rt_, p, len, &r);
    CheckFailure("verify", v);
    FUZZ_CHECK(v <= 0,
               absl::StrFormat("the table disagrees with the kernel: %s", hugemm_last_error()));
    const bool wraps = len > UINTPTR_MAX - reinterpret_cast<uintptr_t>(p);
    FUZZ_CHECK(!inside || len == 0 || wraps || v == 0, "verify of a live buffer");
    FUZZ_CHECK(v != 0 || (r.leaves_checked > 0 && r.mismatches == 0 && r.first_mismatch == nullptr),
               "a verification that found nothing");
  }
}

// A live buffer with no pin on it: each folio has its owner's reference and one per entry
// mapping it (x86-64: a PTE per 4K below 2M, a PMD per 2M below 1G, else a PUD per 1G).
void Driver::CheckCounts(size_t buf) {
  if (!pins_.empty()) return;  // a pin may hold any folio
  const hugemm_buffer& b = bufs_[buf].b;
  for (size_t off = 0; off < b.size; off += b.folio_size) {
    hugemm_folio_info info{};
    FUZZ_CHECK(hugemm_folio_info_at(rt_, static_cast<char*>(b.data) + off, &info) == 0,
               "folio info of a live buffer");
    const uint64_t unit = info.size < k2M ? 4096 : info.size < (size_t{1} << 30) ? k2M : info.size;
    const int32_t want = 1 + static_cast<int32_t>(info.size / unit);
    FUZZ_CHECK(info.refcount == want && info.pincount == 0,
               absl::StrFormat("a %u-byte folio of an unpinned buffer has refcount %d (not %d), "
                               "pincount %d",
                               info.size, info.refcount, want, info.pincount));
  }
}

void Driver::OpExternal() {
  if (external_ == nullptr) {
    void* p = mmap(nullptr, k2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) return;
    external_ = p;
  }
  if (!registered_ || in_.Below(4) == 0) {
    const size_t len = in_.Below(4) == 0 ? PickLength() : k2M;
    const char* at = static_cast<const char*>(external_) + (in_.Below(4) == 0 ? 4096 : 0);
    uint64_t id = 0;
    const int rc = hugemm_register_external(rt_, const_cast<char*>(at), len,
                                            in_.Below(32) == 0 ? nullptr : &id);
    CheckFailure("register_external", rc);
    FUZZ_CHECK(rc != 0 || !registered_, "registered the same memory twice");
    if (rc == 0) {
      external_id_ = id;
      registered_ = true;
    }
    return;
  }
  const uint64_t id = in_.Below(4) == 0 ? in_.U64() : external_id_;
  const int rc = hugemm_unregister_external(rt_, id);
  CheckFailure("unregister_external", rc);
  if (rc == 0) {
    FUZZ_CHECK(id == external_id_, "unregistered an id never handed out");
    registered_ = false;
  }
}

void Driver::OpSubscribe() {
  if (!subs_.empty() && in_.Bool()) {
    const size_t k = in_.Below(subs_.size());
    hugemm_unsubscribe(subs_[k]->sub);
    subs_.erase(subs_.begin() + static_cast<ptrdiff_t>(k));
    return;
  }
  size_t i = SIZE_MAX;
  const void* p = PickAddress(&i);
  auto sub = std::make_unique<Sub>();
  sub->hears_ends = in_.Bool();
  const int rc =
      hugemm_subscribe(rt_, p, PickLength(), OnStart, sub->hears_ends ? OnEnd : nullptr, sub.get(),
                       in_.Below(32) == 0 ? nullptr : &sub->sub, in_.Bool() ? &sub->seq : nullptr);
  CheckFailure("subscribe", rc);
  if (rc == 0) subs_.push_back(std::move(sub));
}

// Between calls no change is in progress: every start heard its end.
void Driver::CheckSubscriptions() {
  for (const auto& s : subs_) {
    FUZZ_CHECK(!s->hears_ends || s->starts == s->ends, "an invalidation start without its end");
    FUZZ_CHECK(s->seq == nullptr || (*s->seq & 0xffff) == 0, "the sequence word says in progress");
    FUZZ_CHECK(s->seq == nullptr || (*s->seq >> 16) >= static_cast<uint64_t>(s->starts),
               "the sequence word missed a change");
  }
}

void Driver::Run() {
  Shared& shared = Runtimes();
  other_ = shared.other;
  own_ = in_.Below(8) == 0;
  const soak::ProcessFootprint before = soak::ProcessFootprint::Now(/*mappings=*/own_);
  if (own_) {
    hugemm_options o{in_.Below(4) == 0 ? HUGEMM_REFCOUNT_PAGE : HUGEMM_REFCOUNT_FOLIO,
                     in_.Below(4) == 0};
    if (in_.Below(16) == 0) o.refcount = static_cast<int>(in_.Byte());
    const int rc = hugemm_open(in_.Below(16) == 0 ? nullptr : &o, &rt_);
    CheckFailure("open", rc);
    if (rc != 0) {
      FUZZ_CHECK(rt_ == nullptr, "a failed open handed out a runtime");
      return;
    }
  } else {
    rt_ = shared.runtimes[in_.Below(3)];
  }
  for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
    switch (in_.Weighted({3, 10, 6, 16, 10, 10, 2, 4})) {
      case 0:
        OpMap();
        break;
      case 1:
        OpAlloc();
        break;
      case 2:
        OpFree();
        break;
      case 3:
        OpPin();
        break;
      case 4:
        OpUnpin();
        break;
      case 5:
        OpQuery();
        break;
      case 6:
        OpExternal();
        break;
      default:
        OpSubscribe();
        break;
    }
    CheckSubscriptions();
  }
  Finish();
  if (!own_) {
    // A shared runtime's pools keep what they grew, so its mappings say little; its
    // buffers must be gone from its table.
    for (const Buf& b : bufs_) {
      hugemm_translation t;
      FUZZ_CHECK(hugemm_translate(rt_, b.b.data, 0, &t) == -ENOENT, "a buffer outlived its free");
    }
  }
  soak::ProcessFootprint after = soak::ProcessFootprint::Now(/*mappings=*/own_);
  // A shared runtime's pools also keep the kernel's long-term pins of what they grew (its
  // kernel pin table holds every pool extent), so VmPin is checked after a close only.
  if (!own_) after.vm_pin_kb = before.vm_pin_kb;
  const std::string leak = before.Diff(after);
  FUZZ_CHECK(leak.empty(), (own_ ? "after close: " : "after the input: ") + leak);
}

void Driver::Finish() {
  while (!pins_.empty()) {
    Pin& pin = pins_.back();
    FUZZ_CHECK(pin.canary_at == nullptr || *pin.canary_at == pin.canary,
               "a page was written by someone else while pinned");
    switch (pin.out) {
      case Out::kPages:
        hugemm_unpin_pages(rt_, pin.pages.data(), pin.pages.size(), 0);
        break;
      case Out::kFolios:
        hugemm_unpin_folios(rt_, pin.spans.data(), pin.spans.size(),
                            pin.flags & (HUGEMM_PIN | HUGEMM_GET), 0);
        break;
      case Out::kSegments:
        FUZZ_CHECK(hugemm_unpin_range(rt_, pin.addr, pin.length, pin.flags, 0) == 0,
                   std::string("unpin_range at the end: ") + hugemm_last_error());
        break;
    }
    pins_.pop_back();
  }
  for (const auto& s : subs_) hugemm_unsubscribe(s->sub);
  subs_.clear();
  if (registered_ && (!own_ || in_.Bool())) {  // or left to close
    FUZZ_CHECK(hugemm_unregister_external(rt_, external_id_) == 0,
               std::string("unregister at the end: ") + hugemm_last_error());
  }
  // Some buffers freed here, and with its own runtime the rest by close.
  for (Buf& b : bufs_) {
    if (!b.freed && (!own_ || in_.Bool())) {
      FUZZ_CHECK(hugemm_free(rt_, b.b.data) == 0, "free at the end");
    }
  }
  if (own_) hugemm_close(rt_);
  if (external_ != nullptr) munmap(external_, k2M);
}

}  // namespace
}  // namespace hugemm::fuzz

HUGEMM_FUZZ_ENTRY_POINT(hugemm::fuzz::Driver)
