// The shadow table under random operation sequences, each step held against a model.
//
// Geometry (x86-64 4- or 5-level, arm64 4K, 16K or 64K granule) and the pin granularity
// come from the first bytes; then up to kMaxOps operations: make a folio, map, unmap,
// split, protect, make exclusive and restore, translate, walk, pin with each output
// (with and without a populator), unpin each way, drop the owner's reference. Each
// writer's status code is the model's (pgtable_model.h), each pin's result and output
// the oracle's (pin_oracle.h), and after every step:
//   - a walk of the window shows exactly the model's leaves;
//   - translations (single, batched, PFN-only, with runs) and lookups agree with it;
//   - every folio's refcount is its owner's + one per mapping entry + its pins, its
//     pincount its DMA pins, and a folio returned to its owner is one nothing holds;
//   - the notifiers heard as many ends as starts, and a change bumped the sequence of
//     every subscription that hears it.
// At the end every pin is released and the table destroyed: every folio must be back.
//
// Folios are descriptors only: the table never touches their memory, so addresses are
// synthetic and nothing is mapped for real.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "fuzz/fuzz_input.h"
#include "fuzz/pgtable_model.h"
#include "fuzz/pin_oracle.h"
#include "hugemm/geometry.h"
#include "hugemm/gup.h"
#include "hugemm/notify.h"
#include "hugemm/pgtable.h"

namespace hugemm::fuzz {
namespace {

using Code = absl::StatusCode;

constexpr uintptr_t kBase = uintptr_t{1} << 40;
constexpr size_t kWindow = size_t{4} << 30;
constexpr size_t kMaxFolios = 24;
constexpr int kMaxOps = 32;
constexpr uint64_t kPfnBase = uint64_t{1} << 24;
const void* const kDeviceA = reinterpret_cast<const void*>(0xa000);
const void* const kDeviceB = reinterpret_cast<const void*>(0xb000);

std::string Hex(uintptr_t v) { return absl::StrFormat("0x%x", v); }
std::string CodeName(Code c) { return absl::StatusCodeToString(c); }

struct FolioRec {
  Folio* folio = nullptr;
  bool owner_ref = true;
  bool released = false;
};

struct PinRec {
  PinOutput output = PinOutput::kPages;
  RefKind kind = RefKind::kPin;
  uintptr_t start = 0;  // the first page pinned
  std::vector<PageRef> pages;
  std::vector<FolioSpan> spans;  // what the pin holds, for every output but kPages
  PinnedRange handle;
};

class Driver;

// Takes folios back when their last reference drops; they are then gone for good.
class Owner final : public FolioOwner {
 public:
  explicit Owner(std::vector<FolioRec>* folios) : folios_(folios) {}
  void ReleaseFolio(Folio* folio) override {
    for (FolioRec& r : *folios_) {
      if (r.folio == folio && !r.released) {
        r.released = true;
        delete folio;
        return;
      }
    }
    Broken(__FILE__, __LINE__, "a folio the fuzzer never made came back");
  }

 private:
  std::vector<FolioRec>* folios_;
};

// Maps a base page where a pin found nothing, or refuses, as the input says.
class FuzzPopulator final : public Populator {
 public:
  explicit FuzzPopulator(Driver* d) : d_(d) {}
  absl::Status Populate(PageTable& table, uintptr_t va, bool write) override;
  uintptr_t refused_at = 0;
  Code refused_code = Code::kOk;

 private:
  Driver* d_;
};

class Driver {
 public:
  explicit Driver(FuzzInput& in);
  ~Driver();
  void Run();

  // For the populator.
  absl::Status PopulateAt(PageTable& table, uintptr_t va, bool write);

 private:
  static Geometry PickGeometry(uint8_t b);
  std::vector<size_t> FolioSizes() const;
  uintptr_t PickAddress();
  void PickRange(uintptr_t* va, size_t* length);
  Prot PickProt();
  FolioRec* PickFolio(bool live_only);
  FolioRec* NewFolio(size_t size, uintptr_t data);

  void OpNewFolio();
  void OpMap();
  void OpUnmap();
  void OpProtect();
  void OpSplit();
  void OpExclusive();
  void OpRestore();
  // Returns whether a populator was asked to map.
  bool OpPin();
  void OpUnpin();
  void OpDropOwner();
  void OpReaders();

  void ExpectCode(const char* op, const absl::Status& st, Code want);
  void ExpectChange(const char* op, Code code, bool split_first, const void* owner);
  void Verify(bool structure);
  void VerifyStructure();
  void VerifyCounts();
  void VerifyTranslation(uintptr_t va, size_t max_run);
  void Finish();

  FuzzInput& in_;
  Geometry g_;
  std::vector<size_t> sizes_;
  std::vector<FolioRec> folios_;
  Owner owner_{&folios_};
  std::unique_ptr<PageTable> table_;
  TableModel model_;
  FuzzPopulator populator_{this};
  std::unique_ptr<Pinner> pinner_;
  std::unique_ptr<Pinner> populating_;
  std::vector<std::unique_ptr<PinRec>> pins_;
  int starts_ = 0, ends_ = 0;
  std::unique_ptr<RangeSubscription> all_;    // the whole address space
  std::unique_ptr<RangeSubscription> owned_;  // the same, owned by device A
  uint64_t gen_all_ = 0, gen_owned_ = 0;
  // HUGEMM_FUZZ_TRACE=1: each operation and its status on stderr, to read a failing input.
  const bool trace_ = std::getenv("HUGEMM_FUZZ_TRACE") != nullptr;
};

absl::Status FuzzPopulator::Populate(PageTable& table, uintptr_t va, bool write) {
  return d_->PopulateAt(table, va, write);
}

Geometry Driver::PickGeometry(uint8_t b) {
  switch (b % 5) {
    case 1:
      return X86_64Geometry(/*five_level=*/true);
    case 2:
      return *Arm64Geometry(kPageSize4K);
    case 3:
      return *Arm64Geometry(16 << 10);
    case 4:
      return *Arm64Geometry(64 << 10);
    default:
      return X86_64Geometry(/*five_level=*/false);
  }
}

Driver::Driver(FuzzInput& in)
    : in_(in),
      g_(PickGeometry(in.Byte())),
      sizes_(FolioSizes()),
      table_(std::make_unique<PageTable>(g_)),
      model_(g_) {
  const RefGranularity gran = in_.Bool() ? RefGranularity::kPage : RefGranularity::kFolio;
  pinner_ = std::make_unique<Pinner>(*table_, PinnerOptions{.granularity = gran});
  populating_ = std::make_unique<Pinner>(
      *table_, PinnerOptions{.granularity = gran, .populator = &populator_});
  NotifierCallbacks cb{.invalidate_start = [this](const Invalidation&) { ++starts_; },
                       .invalidate_end = [this](const Invalidation&) { ++ends_; }};
  all_ = std::make_unique<RangeSubscription>(table_->notifiers(), nullptr, model_.va_limit(), cb);
  owned_ = std::make_unique<RangeSubscription>(table_->notifiers(), nullptr, model_.va_limit(),
                                               NotifierCallbacks{}, kDeviceA);
}

Driver::~Driver() = default;

// Every power of two from the base page up to 1G: each maps with its natural unit
// (several entries, a contiguous group, or one leaf).
std::vector<size_t> Driver::FolioSizes() const {
  std::vector<size_t> out;
  for (size_t s = g_.page_size(); s <= kPageSize1G; s <<= 1) out.push_back(s);
  return out;
}

uintptr_t Driver::PickAddress() {
  switch (in_.Weighted({12, 3, 1})) {
    case 0: {  // a page of the window, at the grain of some folio size
      const size_t unit = sizes_[in_.Below(sizes_.size())];
      return kBase + in_.Below(kWindow / unit) * unit;
    }
    case 1:  // any page of the window
      return kBase + in_.Below(kWindow / g_.page_size()) * g_.page_size();
    default:  // anything
      return static_cast<uintptr_t>(in_.U64());
  }
}

void Driver::PickRange(uintptr_t* va, size_t* length) {
  *va = PickAddress();
  switch (in_.Weighted({12, 3, 1})) {
    case 0: {
      const size_t unit = sizes_[in_.Below(sizes_.size())];
      *length = (1 + in_.Below(4)) * unit;
      break;
    }
    case 1:
      *length = (1 + in_.Below(64)) * g_.page_size();
      break;
    default:
      *length = static_cast<size_t>(in_.U64() >> in_.Below(64));
  }
}

Prot Driver::PickProt() {
  switch (in_.Weighted({8, 8, 2, 1})) {
    case 0:
      return kProtRead;
    case 1:
      return kProtRead | kProtWrite;
    case 2:
      return kProtRead | kProtWrite | kProtExec;
    default:
      return Prot{in_.Byte()};
  }
}

FolioRec* Driver::PickFolio(bool live_only) {
  std::vector<FolioRec*> live;
  for (FolioRec& r : folios_) {
    if (!r.released && (!live_only || r.owner_ref)) live.push_back(&r);
  }
  return live.empty() ? nullptr : live[in_.Below(live.size())];
}

FolioRec* Driver::NewFolio(size_t size, uintptr_t data) {
  if (folios_.size() >= kMaxFolios) return nullptr;
  const int order = __builtin_ctzll(size) - kPageShift;
  uint64_t pfn = kPfnBase + ((data - kBase) >> kPageShift);  // contiguous with its neighbours
  switch (in_.Weighted({6, 2, 1})) {
    case 1:
      pfn = (kPfnBase << 2) + (in_.Below(1024) << order);
      break;
    case 2:
      pfn = kUnknownPfn;
      break;
  }
  auto* f = new Folio;
  InitFolio(f, {.order = static_cast<uint8_t>(order),
                .backing = BackingKind::kHugetlb,
                .node = 0,
                .head_pfn = pfn,
                .data = reinterpret_cast<std::byte*>(data),
                .owner = &owner_,
                .flags = in_.Below(8) == 0 ? kFolioBorrowed : FolioFlag::kNone});
  folios_.push_back({f, true, false});
  return &folios_.back();
}

void Driver::ExpectCode(const char* op, const absl::Status& st, Code want) {
  if (trace_) std::fprintf(stderr, "%s: %s\n", op, st.ToString().c_str());
  FUZZ_CHECK(st.code() == want, absl::StrFormat("%s: table says %s (%s), model %s", op,
                                                CodeName(st.code()), st.message(), CodeName(want)));
  FUZZ_CHECK(st.ok() || !st.message().empty(), absl::StrFormat("%s: an error without words", op));
}

// A change bumps the sequence of every subscription that hears it; a refusal bumps none.
// Device A's subscription does not hear the device-exclusive entries A asked for, only
// the splits on the way there.
void Driver::ExpectChange(const char* op, Code code, bool split_first, const void* owner) {
  const uint64_t all = all_->generation(), owned = owned_->generation();
  if (code != Code::kOk) {
    FUZZ_CHECK(all == gen_all_ && owned == gen_owned_,
               absl::StrFormat("%s: refused (%s) but announced a change", op, CodeName(code)));
  } else {
    FUZZ_CHECK(all > gen_all_, absl::StrFormat("%s: a change nobody heard of", op));
    const bool hears = owner != kDeviceA || split_first;
    FUZZ_CHECK((owned > gen_owned_) == hears,
               absl::StrFormat("%s: device A's subscription %s", op,
                               hears ? "missed a change" : "heard its own exclusive entry"));
  }
  gen_all_ = all;
  gen_owned_ = owned;
}

void Driver::OpNewFolio() {
  const size_t size = sizes_[in_.Below(sizes_.size())];
  NewFolio(size, kBase + in_.Below(kWindow / size) * size);
}

void Driver::OpMap() {
  FolioRec* r = PickFolio(/*live_only=*/false);
  if (r == nullptr) return;
  Folio* f = r->folio;
  uintptr_t va = reinterpret_cast<uintptr_t>(f->data);
  if (in_.Below(4) == 0) va = PickAddress();
  const Prot prot = PickProt();
  const Code want = model_.Map(f, va, prot);
  ExpectCode("map", table_->Map(f, reinterpret_cast<const void*>(va), prot), want);
}

void Driver::OpUnmap() {
  uintptr_t va;
  size_t len;
  PickRange(&va, &len);
  const Code want = model_.Unmap(va, len);
  ExpectCode("unmap", table_->Unmap(reinterpret_cast<const void*>(va), len), want);
  ExpectChange("unmap", want, false, nullptr);
}

void Driver::OpProtect() {
  uintptr_t va;
  size_t len;
  PickRange(&va, &len);
  const Prot prot = PickProt();
  const Code want = model_.Protect(va, len, prot);
  ExpectCode("protect", table_->Protect(reinterpret_cast<const void*>(va), len, prot), want);
  ExpectChange("protect", want, false, nullptr);
}

void Driver::OpSplit() {
  const uintptr_t va = PickAddress() + in_.Below(g_.page_size());
  const Code want = model_.Split(va);
  ExpectCode("split", table_->Split(reinterpret_cast<const void*>(va)), want);
  ExpectChange("split", want, false, nullptr);
}

void Driver::OpExclusive() {
  const uintptr_t va = PickAddress();
  const void* owner = in_.Bool() ? kDeviceA : kDeviceB;
  bool split = false;
  const Code want = model_.MakeExclusive(va, owner, &split);
  ExpectCode("make exclusive", table_->MakeExclusive(reinterpret_cast<const void*>(va), owner),
             want);
  if (want != Code::kOk && split) {  // refused after splitting on the way: both heard that
    gen_all_ = all_->generation();
    gen_owned_ = owned_->generation();
    return;
  }
  ExpectChange("make exclusive", want, split, owner);
}

void Driver::OpRestore() {
  // Mostly an exclusive entry the model knows of.
  uintptr_t va = PickAddress();
  std::vector<uintptr_t> exclusive;
  for (const auto& [at, l] : model_.leaves()) {
    if (l.exclusive) exclusive.push_back(at);
  }
  if (!exclusive.empty() && in_.Below(4) != 0) va = exclusive[in_.Below(exclusive.size())];
  // A random address may land on an exclusive entry too: its owner is then the one the
  // restore announces for, whichever way the address was picked.
  const void* owner = nullptr;
  if (const auto* l = model_.Find(va, nullptr); l != nullptr && l->exclusive) owner = l->owner;
  const Code want = model_.Restore(va);
  ExpectCode("restore", table_->RestoreExclusive(reinterpret_cast<const void*>(va)), want);
  ExpectChange("restore", want, false, owner);
}

absl::Status Driver::PopulateAt(PageTable& table, uintptr_t va, bool write) {
  FUZZ_CHECK(&table == table_.get(), "populate for another table");
  const uintptr_t page = va & ~(g_.page_size() - 1);
  auto refuse = [&](absl::Status st) {
    populator_.refused_at = va;
    populator_.refused_code = st.code();
    return st;
  };
  if (page < kBase || page >= kBase + kWindow) {
    return refuse(absl::FailedPreconditionError("populate: outside the fuzzed window"));
  }
  if (in_.Below(4) == 0) return refuse(absl::ResourceExhaustedError("populate: no memory"));
  FolioRec* r = NewFolio(g_.page_size(), page);
  if (r == nullptr) return refuse(absl::ResourceExhaustedError("populate: no descriptors"));
  const Prot prot = write ? kProtRead | kProtWrite : kProtRead;
  const Code want = model_.Map(r->folio, page, prot);
  absl::Status st = table.Map(r->folio, reinterpret_cast<const void*>(page), prot);
  ExpectCode("populate", st, want);
  // Like a faulted-in anonymous page: the mapping holds the only reference.
  r->owner_ref = false;
  FolioPut(r->folio);
  return st.ok() ? st : refuse(st);
}

bool Driver::OpPin() {
  PinAsk ask;
  ask.output = static_cast<PinOutput>(in_.Below(5));
  uintptr_t va;
  size_t len;
  PickRange(&va, &len);
  ask.va = va + (in_.Below(4) == 0 ? in_.Below(kPageSize4K) : 0);
  ask.count = ask.output == PinOutput::kPages ? (len >> kPageShift) % 4096 : len;
  if (ask.output == PinOutput::kPages && in_.Below(16) == 0) ask.count = in_.U64();
  if (in_.Below(16) == 0) {
    ask.flags = GupFlags{in_.Below(16) == 0 ? in_.U32() : in_.Byte()};
  } else {
    ask.flags = in_.Below(3) == 0 ? kGupGet : kGupPin;
    if (in_.Bool()) ask.flags |= kGupWrite;
    if (in_.Below(4) == 0) ask.flags |= kGupLongterm;
    if (in_.Below(4) == 0) ask.flags |= kGupFastOnly;
    if (in_.Below(3) == 0) ask.flags |= kGupPartial;
  }
  const bool populate = in_.Below(4) == 0;
  Pinner& pinner = populate ? *populating_ : *pinner_;
  populator_.refused_at = 0;
  populator_.refused_code = Code::kOk;

  auto rec = std::make_unique<PinRec>();
  rec->output = ask.output;
  rec->kind = HasAny(ask.flags, kGupPin) ? RefKind::kPin : RefKind::kGet;
  rec->start = ask.va & ~uintptr_t{kPageSize4K - 1};
  const void* p = reinterpret_cast<const void*>(ask.va);
  absl::Status st;
  size_t got = 0;
  std::vector<DmaSegment> segments;
  switch (ask.output) {
    case PinOutput::kPages: {
      const size_t n = ask.count > 8192 ? 8192 : ask.count;
      ask.cap = in_.Below(8) == 0 && n > 0 ? n - 1 : n;
      rec->pages.resize(ask.cap);
      absl::StatusOr<size_t> r =
          pinner.PinPages(p, ask.count, ask.flags, absl::MakeSpan(rec->pages));
      st = r.status();
      got = r.ok() ? *r : 0;
      rec->pages.resize(got);
      break;
    }
    case PinOutput::kSpans: {
      ask.cap = in_.Below(6);
      rec->spans.resize(ask.cap);
      absl::StatusOr<size_t> r =
          pinner.PinFolios(p, ask.count, ask.flags, absl::MakeSpan(rec->spans));
      st = r.status();
      got = r.ok() ? *r : 0;
      rec->spans.resize(got);
      break;
    }
    case PinOutput::kSegments: {
      ask.cap = in_.Below(12);
      static constexpr uint64_t kMax[] = {0, kPageSize4K, 64 << 10, kPageSize2M, 1, 5000};
      ask.max_segment = in_.Below(8) == 0 ? in_.U32() : kMax[in_.Below(6)];
      segments.resize(ask.cap);
      absl::StatusOr<size_t> r = pinner.PinSegments(p, ask.count, ask.flags, ask.max_segment,
                                                    absl::MakeSpan(segments), &rec->spans);
      st = r.status();
      got = r.ok() ? *r : 0;
      segments.resize(got);
      break;
    }
    case PinOutput::kVector: {
      // Appended after what the vector held, which a refusal leaves as it was.
      ask.cap = in_.Below(4);
      std::vector<FolioSpan> held(ask.cap == 0 ? 0 : ask.cap - 1, FolioSpan{nullptr, 7, 9});
      std::vector<FolioSpan> v = held;
      absl::StatusOr<size_t> r =
          pinner.PinFolios(p, ask.count, ask.flags, ask.cap == 0 ? nullptr : &v);
      st = r.status();
      got = r.ok() ? *r : 0;
      FUZZ_CHECK(v.size() == held.size() + got, "pin into a vector: appended count");
      for (size_t i = 0; i < held.size(); ++i) {
        FUZZ_CHECK(v[i].folio == nullptr && v[i].first_page == 7 && v[i].pages == 9,
                   "pin into a vector: what it held changed");
      }
      rec->spans.assign(v.begin() + static_cast<ptrdiff_t>(held.size()), v.end());
      break;
    }
    case PinOutput::kHandle: {
      absl::StatusOr<PinnedRange> r = pinner.Pin(p, ask.count, ask.flags);
      st = r.status();
      if (r.ok()) {
        rec->handle = std::move(*r);
        rec->spans = rec->handle.spans();
      }
      break;
    }
  }
  if (populate) {
    ask.refused_at = populator_.refused_at;
    ask.refused_code = populator_.refused_code;
  }
  const PinPlan plan = PredictPin(model_, ask);
  const std::string what = absl::StrFormat("pin %d [%s, %u) flags %s", static_cast<int>(ask.output),
                                           Hex(ask.va), ask.count, GupFlagsName(ask.flags));
  if (trace_) std::fprintf(stderr, "%s: %s\n", what.c_str(), st.ToString().c_str());
  FUZZ_CHECK(st.code() == plan.code,
             absl::StrFormat("%s: pinner says %s (%s), oracle %s", what, CodeName(st.code()),
                             st.message(), CodeName(plan.code)));
  if (!st.ok()) return populate;
  switch (ask.output) {
    case PinOutput::kPages:
      FUZZ_CHECK(rec->pages == plan.pages, what + ": page array differs");
      break;
    case PinOutput::kSpans:
    case PinOutput::kHandle:
    case PinOutput::kVector:
      FUZZ_CHECK(rec->spans.size() == plan.spans.size(), what + ": span count differs");
      for (size_t i = 0; i < plan.spans.size(); ++i) {
        const FolioSpan& a = rec->spans[i];
        const FolioSpan& b = plan.spans[i];
        FUZZ_CHECK(a.folio == b.folio && a.first_page == b.first_page && a.pages == b.pages,
                   absl::StrFormat("%s: span %u differs", what, i));
      }
      break;
    case PinOutput::kSegments:
      FUZZ_CHECK(segments.size() == plan.segments.size(),
                 absl::StrFormat("%s: %u segments, oracle %u", what, segments.size(),
                                 plan.segments.size()));
      for (size_t i = 0; i < segments.size(); ++i) {
        FUZZ_CHECK(segments[i].phys_addr == plan.segments[i].phys_addr &&
                       segments[i].length == plan.segments[i].length,
                   absl::StrFormat("%s: segment %u differs", what, i));
      }
      FUZZ_CHECK(rec->spans.size() == plan.spans.size(), what + ": the segment pin's log differs");
      break;
  }
  if (ask.output == PinOutput::kHandle && rec->handle.pinned()) {
    std::vector<PageRef> pages(rec->handle.page_count());
    FUZZ_CHECK(rec->handle.Pages(absl::MakeSpan(pages)) == plan.pages.size() && pages == plan.pages,
               what + ": the handle's page array differs");
    const uint64_t max = in_.Below(2) ? 0 : kPageSize2M;
    absl::StatusOr<std::vector<DmaSegment>> segs = rec->handle.Segments(max);
    bool known = true;
    for (const FolioSpan& s : rec->spans) known &= s.folio->head_pfn != kUnknownPfn;
    FUZZ_CHECK(segs.ok() == known, what + ": the handle's segments");
    if (segs.ok()) {
      const std::vector<DmaSegment> want = SegmentsOf(
          rec->spans, rec->start, ask.va, ask.va + ask.count, max == 0 ? ~uint64_t{0} : max);
      FUZZ_CHECK(segs->size() == want.size(), what + ": the handle's segment count");
      for (size_t i = 0; i < want.size(); ++i) {
        FUZZ_CHECK((*segs)[i].phys_addr == want[i].phys_addr && (*segs)[i].length == want[i].length,
                   what + ": a segment of the handle");
      }
    }
  }
  if (!rec->pages.empty() || !rec->spans.empty()) pins_.push_back(std::move(rec));
  return populate;
}

void Driver::OpUnpin() {
  if (pins_.empty()) return;
  const size_t i = in_.Below(pins_.size());
  PinRec& r = *pins_[i];
  const bool dirty = in_.Bool();
  switch (r.output) {
    case PinOutput::kPages: {
      // In two calls, split anywhere: runs of one folio may straddle the cut.
      const size_t cut = in_.Below(r.pages.size() + 1);
      pinner_->UnpinPages(absl::MakeConstSpan(r.pages.data(), cut), dirty);
      pinner_->UnpinPages(absl::MakeConstSpan(r.pages.data() + cut, r.pages.size() - cut), dirty);
      break;
    }
    case PinOutput::kSpans:
    case PinOutput::kVector:
      FUZZ_CHECK(pinner_->UnpinFolios(r.spans, r.kind, dirty) == r.spans.size(),
                 "unpin folios: one operation per span");
      break;
    case PinOutput::kSegments: {
      // By range where the table still maps what was pinned (a walk finds it), else by the
      // log; a range with a hole is refused and changes nothing.
      size_t pages = 0;
      for (const FolioSpan& s : r.spans) pages += s.pages;
      const uintptr_t end = r.start + (pages << kPageShift);
      std::vector<FolioSpan> now;
      bool same = model_.Covered(r.start, end);
      for (uintptr_t va = r.start; same && va < end;) {
        uintptr_t leaf = 0;
        const ModelLeaf* l = model_.Find(va, &leaf);
        const uintptr_t folio_va = leaf & ~(l->folio->size() - 1);
        const uintptr_t stop = std::min(leaf + l->bytes, end);
        const auto first = static_cast<uint32_t>((va - folio_va) >> kPageShift);
        const auto n = static_cast<uint32_t>((stop - va) >> kPageShift);
        if (!now.empty() && now.back().folio == l->folio &&
            now.back().first_page + now.back().pages == first) {
          now.back().pages += n;
        } else {
          now.push_back({l->folio, first, n});
        }
        va = stop;
      }
      same = same && now.size() == r.spans.size();
      for (size_t k = 0; same && k < now.size(); ++k) {
        same = now[k].folio == r.spans[k].folio && now[k].first_page == r.spans[k].first_page &&
               now[k].pages == r.spans[k].pages;
      }
      const void* p = reinterpret_cast<const void*>(r.start);
      if (same) {
        ExpectCode("unpin range", pinner_->UnpinRange(p, end - r.start, r.kind, dirty), Code::kOk);
      } else {
        if (!model_.Covered(r.start, end)) {
          ExpectCode("unpin range over a hole",
                     pinner_->UnpinRange(p, end - r.start, r.kind, dirty),
                     Code::kFailedPrecondition);
        }
        pinner_->UnpinFolios(r.spans, r.kind, dirty);
      }
      break;
    }
    case PinOutput::kHandle:
      if (in_.Bool()) r.handle.Release();
      break;  // or dropped with the record
  }
  pins_.erase(pins_.begin() + static_cast<ptrdiff_t>(i));
}

void Driver::OpDropOwner() {
  FolioRec* r = PickFolio(/*live_only=*/true);
  if (r == nullptr) return;
  r->owner_ref = false;
  FolioPut(r->folio);
}

void Driver::OpReaders() {
  const uintptr_t va = PickAddress() + in_.Below(g_.page_size());
  uintptr_t start = 0;
  const ModelLeaf* l = va < model_.va_limit() ? model_.Find(va, &start) : nullptr;
  {
    ReadSection rs;
    std::optional<LeafSnapshot> snap = table_->Lookup(reinterpret_cast<const void*>(va));
    FUZZ_CHECK(snap.has_value() == (l != nullptr), "lookup of " + Hex(va));
    if (snap) {
      FUZZ_CHECK(snap->leaf.va == start && snap->leaf.folio == l->folio, "lookup of " + Hex(va));
      FUZZ_CHECK(table_->StillMapped(*snap), "a snapshot changed with nothing changing");
    }
  }
  bool called = false;
  const bool mapped =
      table_->WithLeafLocked(reinterpret_cast<const void*>(va), [&](const LogicalLeaf& leaf) {
        called = true;
        FUZZ_CHECK(l != nullptr && leaf.va == start && leaf.exclusive == l->exclusive,
                   "locked leaf at " + Hex(va));
      });
  FUZZ_CHECK(mapped == called && mapped == (l != nullptr), "WithLeafLocked at " + Hex(va));
  FUZZ_CHECK(pinner_->MaybeDmaPinned(reinterpret_cast<const void*>(va)) ==
                 (l != nullptr && FolioMaybeDmaPinned(l->folio)),
             "maybe_dma_pinned at " + Hex(va));
  // Batches: in one read section, hit or miss per address.
  std::vector<const void*> vas;
  const size_t n = 1 + in_.Below(16);
  for (size_t k = 0; k < n; ++k) {
    vas.push_back(reinterpret_cast<const void*>(PickAddress() + in_.Below(g_.page_size())));
  }
  std::vector<Translation> out(n);
  bool hits[16] = {};
  std::vector<uint64_t> pfns(n);
  const size_t mapped_many =
      table_->TranslateMany(vas, absl::MakeSpan(out), absl::MakeSpan(hits, n));
  const size_t mapped_pfns = table_->TranslatePfns(vas, absl::MakeSpan(pfns));
  size_t want = 0;
  for (size_t k = 0; k < n; ++k) {
    const auto a = reinterpret_cast<uintptr_t>(vas[k]);
    uintptr_t s = 0;
    const ModelLeaf* m = a < model_.va_limit() ? model_.Find(a, &s) : nullptr;
    want += m != nullptr;
    FUZZ_CHECK(hits[k] == (m != nullptr), "translate many: hit at " + Hex(a));
    uint64_t pfn = kUnknownPfn;
    if (m != nullptr && m->folio->head_pfn != kUnknownPfn) {
      pfn = m->folio->head_pfn + ((a & (m->folio->size() - 1)) >> kPageShift);
    }
    if (m != nullptr) {
      FUZZ_CHECK(out[k].folio == m->folio && out[k].pfn == pfn, "translate many at " + Hex(a));
    }
    FUZZ_CHECK(pfns[k] == pfn, "translate pfns at " + Hex(a));
  }
  FUZZ_CHECK(mapped_many == want && mapped_pfns == want, "batch hit counts");
  VerifyTranslation(va, in_.Below(3) == 0 ? in_.U32() : 0);
}

void Driver::VerifyTranslation(uintptr_t va, size_t max_run) {
  std::optional<Translation> t = table_->Translate(reinterpret_cast<const void*>(va), max_run);
  uintptr_t start = 0;
  const ModelLeaf* l = va < model_.va_limit() ? model_.Find(va, &start) : nullptr;
  FUZZ_CHECK(t.has_value() == (l != nullptr), "translate of " + Hex(va));
  if (!t) return;
  const Folio* f = l->folio;
  auto pfn_at = [](const Folio* folio, uintptr_t a) {
    return folio->head_pfn == kUnknownPfn
               ? kUnknownPfn
               : folio->head_pfn + ((a & (folio->size() - 1)) >> kPageShift);
  };
  const uint64_t pfn = pfn_at(f, va);
  size_t run = start + l->bytes - va;
  if (max_run > run && pfn != kUnknownPfn) {
    uint64_t next_pfn = pfn + (run >> kPageShift);
    for (uintptr_t next = start + l->bytes; run < max_run && next < model_.va_limit();) {
      uintptr_t ns = 0;
      const ModelLeaf* nl = model_.Find(next, &ns);
      if (nl == nullptr || nl->exclusive || pfn_at(nl->folio, next) != next_pfn) break;
      run += nl->bytes;
      next_pfn += nl->bytes >> kPageShift;
      next += nl->bytes;
    }
  }
  if (max_run != 0 && run > max_run) run = max_run;
  const std::string what = "translate of " + Hex(va);
  FUZZ_CHECK(t->folio == f, what + ": folio");
  FUZZ_CHECK(t->page == ((va & (f->size() - 1)) >> g_.page_shift), what + ": page");
  FUZZ_CHECK(t->pfn == pfn, what + ": pfn");
  FUZZ_CHECK(t->level == l->level && t->leaf_va == start && t->leaf_bytes == l->bytes,
             what + ": leaf");
  FUZZ_CHECK(t->exclusive == l->exclusive && t->exclusive_owner == l->owner, what + ": exclusive");
  FUZZ_CHECK(t->run_bytes == run, absl::StrFormat("%s: run of %u bytes, model %u (max %u)", what,
                                                  t->run_bytes, run, max_run));
}

void Driver::Verify(bool structure) {
  if (structure) VerifyStructure();
  VerifyCounts();
}

// A walk of the address space shows exactly the model's leaves.
void Driver::VerifyStructure() {
  auto it = model_.leaves().begin();
  table_->Walk(nullptr, model_.va_limit(), [&](const LogicalLeaf& l) {
    FUZZ_CHECK(it != model_.leaves().end(), "the table maps more than the model: " + Hex(l.va));
    const ModelLeaf& m = it->second;
    const uintptr_t folio_va = it->first & ~(m.folio->size() - 1);
    const std::string what = "leaf at " + Hex(l.va);
    FUZZ_CHECK(l.va == it->first,
               absl::StrFormat("%s: the model's is at %s", what, Hex(it->first)));
    FUZZ_CHECK(l.bytes == m.bytes && l.level == m.level && l.cont == m.cont,
               absl::StrFormat("%s: %u bytes at level %d (cont %d), model %u at %d (%d)", what,
                               l.bytes, l.level, l.cont, m.bytes, m.level, m.cont));
    FUZZ_CHECK(l.folio == m.folio && l.first_page == (it->first - folio_va) >> g_.page_shift &&
                   l.pages == l.bytes >> g_.page_shift,
               what + ": folio or pages");
    FUZZ_CHECK(l.prot == m.prot, what + ": protection");
    FUZZ_CHECK(l.exclusive == m.exclusive && l.exclusive_owner == m.owner, what + ": exclusive");
    ++it;
  });
  FUZZ_CHECK(it == model_.leaves().end(), "the model maps more than the table: " + Hex(it->first));
  // A few translations: some leaves' first bytes and some addresses anywhere.
  if (!model_.leaves().empty()) {
    for (int k = 0; k < 2; ++k) {
      auto at = model_.leaves().begin();
      std::advance(at, in_.Below(model_.leaves().size()));
      VerifyTranslation(at->first, 0);
    }
  }
  VerifyTranslation(PickAddress(), 0);
}

// Every folio's counts are its owner's + one per mapping entry + its pins.
void Driver::VerifyCounts() {
  std::map<const Folio*, int64_t> refs, pins;
  for (const auto& [va, l] : model_.leaves()) refs[l.folio] += l.entries;
  auto add = [&](Folio* f, int64_t n, RefKind kind) {
    if (kind == RefKind::kGet) {
      refs[f] += n;
    } else if (f->large()) {
      refs[f] += n;
      pins[f] += n;
    } else {
      refs[f] += n * kPinBias;
    }
  };
  for (const auto& p : pins_) {
    for (const PageRef& r : p->pages) add(r.folio(), 1, r.kind());
    for (const FolioSpan& s : p->spans) add(s.folio, s.pages, p->kind);
  }
  for (const FolioRec& r : folios_) {
    if (r.released) {
      // A released descriptor is deleted, and a later one may be made at its address:
      // then the counts under that address are the live one's.
      const bool reused = std::any_of(folios_.begin(), folios_.end(), [&](const FolioRec& o) {
        return !o.released && o.folio == r.folio;
      });
      FUZZ_CHECK(reused || !refs.contains(r.folio) || refs[r.folio] == 0,
                 "a folio came back to its owner while still mapped or pinned");
      continue;
    }
    const int64_t want = (r.owner_ref ? 1 : 0) + refs[r.folio];
    FUZZ_CHECK(want > 0, "a folio nothing holds was not given back");
    FUZZ_CHECK(r.folio->refcount() == want,
               absl::StrFormat("folio at %p: refcount %d, model %d", r.folio->data,
                               r.folio->refcount(), want));
    FUZZ_CHECK(r.folio->pincount() == pins[r.folio],
               absl::StrFormat("folio at %p: pincount %d, model %d", r.folio->data,
                               r.folio->pincount(), pins[r.folio]));
  }
  FUZZ_CHECK(starts_ == ends_, "invalidate starts and ends do not pair");
  FUZZ_CHECK(!all_->invalidating() && !owned_->invalidating(), "an invalidation left open");
}

void Driver::Run() {
  for (int op = 0; op < kMaxOps && !in_.empty(); ++op) {
    // Writers change the structure; the rest only counts (a populating pin maps).
    bool structure = true;
    switch (in_.Weighted({14, 24, 10, 6, 8, 5, 4, 20, 12, 3, 6})) {
      case 0:
        OpNewFolio();
        structure = false;
        break;
      case 1:
        OpMap();
        break;
      case 2:
        OpUnmap();
        break;
      case 3:
        OpProtect();
        break;
      case 4:
        OpSplit();
        break;
      case 5:
        OpExclusive();
        break;
      case 6:
        OpRestore();
        break;
      case 7:
        structure = OpPin();
        break;
      case 8:
        OpUnpin();
        structure = false;
        break;
      case 9:
        OpDropOwner();
        structure = false;
        break;
      default:
        OpReaders();
        structure = false;
        break;
    }
    Verify(structure);
  }
  Finish();
}

void Driver::Finish() {
  while (!pins_.empty()) OpUnpin();
  for (FolioRec& r : folios_) {
    if (!r.released && r.owner_ref) {
      r.owner_ref = false;
      FolioPut(r.folio);
    }
  }
  all_.reset();
  owned_.reset();
  populating_.reset();
  pinner_.reset();
  table_.reset();  // drops the mappings' references
  for (const FolioRec& r : folios_) {
    FUZZ_CHECK(r.released, "a folio was never given back");
  }
}

}  // namespace
}  // namespace hugemm::fuzz

HUGEMM_FUZZ_ENTRY_POINT(hugemm::fuzz::Driver)
