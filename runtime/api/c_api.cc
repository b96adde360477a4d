// The C API over hugemm::Runtime: statuses become negative errnos plus a thread-local
// message; C structs mirror the C++ ones field by field.
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "hugemm/hugemm.h"
#include "hugemm/runtime.h"
#include "runtime/api/c_api_internal.h"

struct hugemm_subscription {
  std::unique_ptr<hugemm::RangeSubscription> sub;
};

namespace {

using hugemm::c_api_internal::Fail;
using hugemm::c_api_internal::Ok;

#define HUGEMM_C_CHECK(cond, what)          \
  do {                                      \
    if (!(cond)) return Fail(EINVAL, what); \
  } while (0)

bool ToKind(int backing, hugemm::BackingKind* out) {
  switch (backing) {
    case HUGEMM_BACKING_HUGETLB:
      *out = hugemm::BackingKind::kHugetlb;
      return true;
    case HUGEMM_BACKING_HUGETLBFS:
      *out = hugemm::BackingKind::kHugetlbfs;
      return true;
    case HUGEMM_BACKING_DEVDAX:
      *out = hugemm::BackingKind::kDevDax;
      return true;
    case HUGEMM_BACKING_ANON:
      *out = hugemm::BackingKind::kAnon;
      return true;
  }
  return false;
}

int FromKind(hugemm::BackingKind kind) {
  switch (kind) {
    case hugemm::BackingKind::kHugetlb:
      return HUGEMM_BACKING_HUGETLB;
    case hugemm::BackingKind::kHugetlbfs:
      return HUGEMM_BACKING_HUGETLBFS;
    case hugemm::BackingKind::kDevDax:
      return HUGEMM_BACKING_DEVDAX;
    case hugemm::BackingKind::kAnon:
      return HUGEMM_BACKING_ANON;
  }
  return -1;
}

constexpr unsigned kKnownFlags =
    HUGEMM_PIN | HUGEMM_GET | HUGEMM_WRITE | HUGEMM_LONGTERM | HUGEMM_FAST_ONLY | HUGEMM_PARTIAL;

// The C flags are the C++ ones bit for bit.
constexpr bool Same(unsigned c, hugemm::GupFlags cc) { return c == static_cast<uint32_t>(cc); }
static_assert(Same(HUGEMM_PIN, hugemm::kGupPin) && Same(HUGEMM_GET, hugemm::kGupGet) &&
              Same(HUGEMM_WRITE, hugemm::kGupWrite) &&
              Same(HUGEMM_LONGTERM, hugemm::kGupLongterm) &&
              Same(HUGEMM_FAST_ONLY, hugemm::kGupFastOnly) &&
              Same(HUGEMM_PARTIAL, hugemm::kGupPartial));
static_assert(sizeof(hugemm_page) == sizeof(hugemm::PageRef));
static_assert(sizeof(hugemm_folio_span) == sizeof(hugemm::FolioSpan));
static_assert(sizeof(hugemm_dma_segment) == sizeof(hugemm::DmaSegment));

hugemm::RefKind KindOf(unsigned flags) {
  return (flags & HUGEMM_GET) ? hugemm::RefKind::kGet : hugemm::RefKind::kPin;
}

int CheckFlags(unsigned flags) {
  if (flags & ~kKnownFlags)
    return Fail(EINVAL, absl::StrCat("unknown pin flags 0x", absl::Hex(flags & ~kKnownFlags)));
  if (((flags & HUGEMM_PIN) != 0) == ((flags & HUGEMM_GET) != 0)) {
    return Fail(EINVAL, "pin flags need exactly one of HUGEMM_PIN and HUGEMM_GET");
  }
  return 0;
}

int BufferOptionsFrom(const hugemm_buffer_options* in, hugemm::BufferOptions* out) {
  if (in == nullptr) return 0;
  if (!ToKind(in->backing, &out->backing)) {
    return Fail(EINVAL, absl::StrCat("unknown backing ", in->backing));
  }
  out->page_size = in->page_size;
  out->node = in->node;
  if (in->path != nullptr) {
    if (out->backing == hugemm::BackingKind::kDevDax) out->devdax_path = in->path;
    if (out->backing == hugemm::BackingKind::kHugetlbfs) out->file_name = in->path;
  }
  return 0;
}

hugemm::PageRef PageOf(hugemm_page page) { return hugemm::PageRef::FromBits(page.bits); }

void FillBuffer(const hugemm::Buffer& b, hugemm_buffer* out) {
  out->data = b.data();
  out->size = b.size();
  out->folio_size = b.folio_size();
}

}  // namespace

extern "C" {

const char* hugemm_last_error(void) { return hugemm::c_api_internal::LastError(); }

int hugemm_open(const hugemm_options* options, hugemm_runtime** out) {
  HUGEMM_C_CHECK(out != nullptr, "hugemm_open: out is NULL");
  *out = nullptr;
  hugemm::RuntimeOptions ro;
  if (options != nullptr) {
    if (options->refcount != HUGEMM_REFCOUNT_FOLIO && options->refcount != HUGEMM_REFCOUNT_PAGE) {
      return Fail(EINVAL, absl::StrCat("hugemm_open: unknown refcount mode ", options->refcount));
    }
    ro.refcount = options->refcount == HUGEMM_REFCOUNT_PAGE ? hugemm::RefGranularity::kPage
                                                            : hugemm::RefGranularity::kFolio;
    ro.kernel_pins = options->kernel_pins != 0;
  }
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open(ro);
  if (!rt.ok()) return Fail(rt.status());
  *out = new hugemm_runtime{std::move(*rt)};
  return Ok();
}

void hugemm_close(hugemm_runtime* rt) { delete rt; }

int hugemm_map_buffer(hugemm_runtime* rt, size_t length, const hugemm_buffer_options* options,
                      hugemm_buffer* out) {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_map_buffer: NULL runtime or out");
  hugemm::BufferOptions bo;
  if (int rc = BufferOptionsFrom(options, &bo)) return rc;
  absl::StatusOr<hugemm::Buffer> b = rt->rt->MapBuffer(length, bo);
  if (!b.ok()) return Fail(b.status());
  FillBuffer(*b, out);
  b->Detach();
  return Ok();
}

int hugemm_alloc(hugemm_runtime* rt, size_t bytes, const hugemm_buffer_options* options,
                 int uninitialized, hugemm_buffer* out) {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_alloc: NULL runtime or out");
  hugemm::BufferOptions bo;
  if (int rc = BufferOptionsFrom(options, &bo)) return rc;
  hugemm::AllocOptions ao;
  ao.backing = bo.backing;
  ao.page_size =
      bo.page_size ? bo.page_size
                   : (bo.backing == hugemm::BackingKind::kAnon
                          ? hugemm::kPageSize4K
                          : (bo.backing == hugemm::BackingKind::kDevDax ? 0 : hugemm::kPageSize2M));
  ao.node = bo.node;
  ao.zero = uninitialized == 0;
  ao.devdax_path = bo.devdax_path;
  absl::StatusOr<hugemm::Buffer> b = rt->rt->Allocate(bytes, ao);
  if (!b.ok()) return Fail(b.status());
  FillBuffer(*b, out);
  b->Detach();
  return Ok();
}

int hugemm_free(hugemm_runtime* rt, void* data) {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_free: NULL runtime");
  if (absl::Status st = rt->rt->Free(data); !st.ok()) return Fail(st);
  return Ok();
}

int hugemm_register_external(hugemm_runtime* rt, void* addr, size_t length, uint64_t* id) {
  HUGEMM_C_CHECK(rt != nullptr && id != nullptr, "hugemm_register_external: NULL argument");
  absl::StatusOr<uint64_t> r = rt->rt->RegisterExternal(addr, length);
  if (!r.ok()) return Fail(r.status());
  *id = *r;
  return Ok();
}

int hugemm_unregister_external(hugemm_runtime* rt, uint64_t id) {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_unregister_external: NULL runtime");
  if (absl::Status st = rt->rt->UnregisterExternal(id); !st.ok()) return Fail(st);
  return Ok();
}

long hugemm_pin_pages(hugemm_runtime* rt, const void* addr, size_t npages, unsigned flags,
                      hugemm_page* pages) {
  HUGEMM_C_CHECK(rt != nullptr && pages != nullptr, "hugemm_pin_pages: NULL runtime or pages");
  if (int rc = CheckFlags(flags)) return rc;
  absl::StatusOr<size_t> n =
      rt->rt->pinner().PinPages(addr, npages, static_cast<hugemm::GupFlags>(flags),
                                absl::MakeSpan(reinterpret_cast<hugemm::PageRef*>(pages), npages));
  if (!n.ok()) return Fail(n.status());
  Ok();
  return static_cast<long>(*n);
}

long hugemm_pin_folios(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       hugemm_folio_span* spans, size_t cap) {
  HUGEMM_C_CHECK(rt != nullptr && spans != nullptr, "hugemm_pin_folios: NULL runtime or spans");
  if (int rc = CheckFlags(flags)) return rc;
  absl::StatusOr<size_t> n =
      rt->rt->pinner().PinFolios(addr, length, static_cast<hugemm::GupFlags>(flags),
                                 absl::MakeSpan(reinterpret_cast<hugemm::FolioSpan*>(spans), cap));
  if (!n.ok()) return Fail(n.status());
  Ok();
  return static_cast<long>(*n);
}

long hugemm_pin_segments(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                         uint64_t max_segment, hugemm_dma_segment* segments, size_t cap) {
  HUGEMM_C_CHECK(rt != nullptr && segments != nullptr,
                 "hugemm_pin_segments: NULL runtime or segments");
  if (int rc = CheckFlags(flags)) return rc;
  absl::StatusOr<size_t> n = rt->rt->pinner().PinSegments(
      addr, length, static_cast<hugemm::GupFlags>(flags), max_segment,
      absl::MakeSpan(reinterpret_cast<hugemm::DmaSegment*>(segments), cap));
  if (!n.ok()) return Fail(n.status());
  Ok();
  return static_cast<long>(*n);
}

long hugemm_unpin_pages(hugemm_runtime* rt, const hugemm_page* pages, size_t n, int dirty) {
  HUGEMM_C_CHECK(rt != nullptr && (pages != nullptr || n == 0),
                 "hugemm_unpin_pages: NULL runtime or pages");
  Ok();
  return static_cast<long>(rt->rt->pinner().UnpinPages(
      absl::MakeConstSpan(reinterpret_cast<const hugemm::PageRef*>(pages), n), dirty != 0));
}

long hugemm_unpin_folios(hugemm_runtime* rt, const hugemm_folio_span* spans, size_t n,
                         unsigned flags, int dirty) {
  HUGEMM_C_CHECK(rt != nullptr && (spans != nullptr || n == 0),
                 "hugemm_unpin_folios: NULL runtime or spans");
  if (int rc = CheckFlags(flags & (HUGEMM_PIN | HUGEMM_GET))) return rc;
  Ok();
  return static_cast<long>(rt->rt->pinner().UnpinFolios(
      absl::MakeConstSpan(reinterpret_cast<const hugemm::FolioSpan*>(spans), n), KindOf(flags),
      dirty != 0));
}

int hugemm_unpin_range(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       int dirty) {
  HUGEMM_C_CHECK(rt != nullptr, "hugemm_unpin_range: NULL runtime");
  if (int rc = CheckFlags(flags & (HUGEMM_PIN | HUGEMM_GET))) return rc;
  if (absl::Status st = rt->rt->pinner().UnpinRange(addr, length, KindOf(flags), dirty != 0);
      !st.ok()) {
    return Fail(st);
  }
  return Ok();
}

void* hugemm_page_folio(hugemm_page page) { return PageOf(page).folio(); }
uint32_t hugemm_page_index(hugemm_page page) { return PageOf(page).index(); }
void* hugemm_page_address(hugemm_page page) { return PageOf(page).address(); }
uint64_t hugemm_page_pfn(hugemm_page page) { return PageOf(page).pfn(); }

int hugemm_maybe_dma_pinned(hugemm_runtime* rt, const void* addr) {
  if (rt == nullptr) return 0;
  return rt->rt->pinner().MaybeDmaPinned(addr) ? 1 : 0;
}

int hugemm_translate(hugemm_runtime* rt, const void* addr, uint64_t max_run,
                     hugemm_translation* out) {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_translate: NULL runtime or out");
  std::optional<hugemm::Translation> t = rt->rt->Translate(addr, max_run);
  if (!t) {
    return Fail(ENOENT,
                absl::StrCat("hugemm_translate: 0x", absl::Hex(reinterpret_cast<uintptr_t>(addr)),
                             " is not mapped by hugemm"));
  }
  out->pfn = t->pfn;
  out->run_bytes = t->run_bytes;
  out->leaf_bytes = t->leaf_bytes;
  out->level = t->level;
  out->exclusive = t->exclusive ? 1 : 0;
  out->folio = t->folio;
  out->page = static_cast<uint32_t>(t->page);
  return Ok();
}

int hugemm_folio_info_at(hugemm_runtime* rt, const void* addr, hugemm_folio_info* out) {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_folio_info_at: NULL runtime or out");
  absl::StatusOr<hugemm::FolioInfo> info = rt->rt->FolioInfoAt(addr);
  if (!info.ok()) return Fail(info.status());
  out->data = info->data;
  out->size = info->size;
  out->head_pfn = info->head_pfn;
  out->refcount = info->refcount;
  out->pincount = info->pincount;
  out->flags = info->flags;
  out->order = info->order;
  out->node = info->node;
  out->backing = FromKind(info->backing);
  out->meta_in_reserve = info->meta_in_reserve ? 1 : 0;
  return Ok();
}

int hugemm_subscribe(hugemm_runtime* rt, const void* addr, size_t length,
                     hugemm_invalidate_fn start, hugemm_invalidate_fn end, void* user,
                     hugemm_subscription** out, const volatile uint64_t** sequence) {
  HUGEMM_C_CHECK(rt != nullptr && out != nullptr, "hugemm_subscribe: NULL runtime or out");
  HUGEMM_C_CHECK(length > 0, "hugemm_subscribe: empty range");
  hugemm::NotifierCallbacks cb;
  auto wrap = [user](hugemm_invalidate_fn fn) -> std::function<void(const hugemm::Invalidation&)> {
    if (fn == nullptr) return nullptr;
    return [fn, user](const hugemm::Invalidation& inv) {
      fn(user, reinterpret_cast<const void*>(inv.va), inv.length, static_cast<int>(inv.reason));
    };
  };
  cb.invalidate_start = wrap(start);
  cb.invalidate_end = wrap(end);
  auto* s = new hugemm_subscription{rt->rt->Subscribe(addr, length, std::move(cb))};
  if (sequence != nullptr) {
    // std::atomic<uint64_t> is lock-free and has uint64_t's representation here.
    static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t));
    *sequence = reinterpret_cast<const volatile uint64_t*>(&s->sub->sequence());
  }
  *out = s;
  return Ok();
}

void hugemm_unsubscribe(hugemm_subscription* sub) { delete sub; }

}  // extern "C"
