// The C API over hugemm::IovaMapper: statuses become negative errnos (the kernel's own
// where an ioctl failed) plus hugemm_last_error's message.
#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "hugemm/hugemm_vfio.h"
#include "hugemm/vfio.h"
#include "runtime/api/c_bridge.h"
#include "runtime/util/format.h"

struct hugemm_vfio {
  hugemm_runtime* rt = nullptr;                // the runtime, until it is closed
  std::unique_ptr<hugemm::IovaMapper> mapper;  // null once the runtime is closed
};

namespace {

int Fail(const char* fn, const absl::Status& st) { return hugemm::bridge::CApiFailKernel(fn, st); }

int Invalid(const char* what) { return hugemm::bridge::CApiFail(EINVAL, what); }

int Closed(const char* fn) {
  return hugemm::bridge::CApiClosed(fn, "mapper", "hugemm_vfio_detach");
}

}  // namespace

extern "C" {

int hugemm_vfio_attach(hugemm_runtime* rt, int container_fd, const hugemm_vfio_options* options,
                       hugemm_vfio** out) try {
  if (out == nullptr) return Invalid("hugemm_vfio_attach: out is NULL");
  *out = nullptr;
  if (rt == nullptr) return Invalid("hugemm_vfio_attach: NULL runtime");
  hugemm::IovaMapperOptions o;
  if (options != nullptr) {
    if (options->iova_base != 0) o.iova_base = options->iova_base;
    if (options->iova_limit != 0) o.iova_limit = options->iova_limit;
  }
  absl::StatusOr<std::unique_ptr<hugemm::IovaMapper>> mapper =
      hugemm::IovaMapper::Attach(*rt->rt, container_fd, o);
  if (!mapper.ok()) return Fail(__func__, mapper.status());
  auto* handle = new hugemm_vfio{rt, std::move(*mapper)};
  hugemm::bridge::CApiAdopt<&hugemm_vfio::mapper>(rt, handle);
  *out = handle;
  return hugemm::bridge::CApiOk();
}
HUGEMM_C_CATCH

void hugemm_vfio_detach(hugemm_vfio* vfio) try {
  hugemm::bridge::CApiRelease<&hugemm_vfio::mapper>(vfio);
}
HUGEMM_C_CATCH_VOID

int hugemm_vfio_iova(const hugemm_vfio* vfio, const void* addr, uint64_t* iova) try {
  if (vfio == nullptr || iova == nullptr) return Invalid("hugemm_vfio_iova: NULL argument");
  if (vfio->mapper == nullptr) return Closed("hugemm_vfio_iova");
  std::optional<uint64_t> found = vfio->mapper->Iova(addr);
  if (!found) {
    return hugemm::bridge::CApiFail(
        ENOENT, hugemm::Format("hugemm_vfio_iova: %p is not mapped in VFIO container %d", addr,
                               vfio->mapper->container_fd()));
  }
  *iova = *found;
  return hugemm::bridge::CApiOk();
}
HUGEMM_C_CATCH

long hugemm_vfio_pin_segments(hugemm_vfio* vfio, const void* addr, size_t length, unsigned flags,
                              uint64_t max_segment, hugemm_dma_segment* segments, size_t cap) try {
  if (vfio == nullptr || segments == nullptr) {
    return Invalid("hugemm_vfio_pin_segments: NULL mapper or segments");
  }
  if (vfio->mapper == nullptr) return Closed("hugemm_vfio_pin_segments");
  std::vector<hugemm::FolioSpan> pinned;
  absl::StatusOr<size_t> n = vfio->mapper->PinSegments(
      addr, length, static_cast<hugemm::GupFlags>(flags), max_segment,
      absl::MakeSpan(reinterpret_cast<hugemm::DmaSegment*>(segments), cap), &pinned);
  if (!n.ok()) return hugemm::bridge::CApiFail(__func__, n.status());
  if (!pinned.empty()) {
    // Recorded as hugemm_pin_segments records its pins, for hugemm_unpin_range.
    const hugemm::RefKind kind =
        (flags & HUGEMM_PIN) != 0 ? hugemm::RefKind::kPin : hugemm::RefKind::kGet;
    try {
      vfio->rt->segment_pins.Add({reinterpret_cast<uintptr_t>(addr), length, kind}, pinned);
    } catch (...) {
      // No record, no pin: the segments are not the caller's to unpin.
      (void)vfio->rt->rt->pinner().UnpinFolios(pinned, kind);
      throw;
    }
  }
  hugemm::bridge::CApiOk();
  return static_cast<long>(*n);
}
HUGEMM_C_CATCH

int hugemm_vfio_stats(const hugemm_vfio* vfio, size_t* mappings, size_t* bytes) try {
  if (vfio == nullptr) return Invalid("hugemm_vfio_stats: NULL mapper");
  if (vfio->mapper == nullptr) return Closed("hugemm_vfio_stats");
  const hugemm::IovaMapperStats s = vfio->mapper->stats();
  if (mappings != nullptr) *mappings = s.mappings;
  if (bytes != nullptr) *bytes = s.bytes;
  return hugemm::bridge::CApiOk();
}
HUGEMM_C_CATCH

}  // extern "C"
