// A DMA buffer the way an RDMA or storage program gets one: map 64 MiB of 2M pages,
// pin it for a device that writes, hand out one entry per folio, and let go.
#include <cstdio>

#include "hugemm/runtime.h"

int main() {
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
  if (!rt.ok()) {
    std::fprintf(stderr, "open: %s\n", std::string(rt.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<hugemm::Buffer> buf = (*rt)->MapBuffer(64 << 20);
  if (!buf.ok()) {
    std::fprintf(stderr, "map: %s\n", std::string(buf.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<hugemm::PinnedRange> pin =
      (*rt)->pinner().Pin(buf->data(), buf->size(), hugemm::kGupPin | hugemm::kGupWrite);
  if (!pin.ok()) {
    std::fprintf(stderr, "pin: %s\n", std::string(pin.status().message()).c_str());
    return 1;
  }
  std::printf("pinned %zu MiB as %zu folio spans\n", buf->size() >> 20, pin->spans().size());
  absl::StatusOr<std::vector<hugemm::DmaSegment>> segs = pin->Segments(1 << 20);
  if (segs.ok() && !segs->empty()) {
    std::printf("%zu DMA segments of at most 1 MiB; first at physical 0x%llx\n", segs->size(),
                static_cast<unsigned long long>((*segs)[0].phys_addr));
  } else if (!segs.ok()) {
    // Without CAP_SYS_ADMIN the kernel hides physical addresses: spans still work.
    std::printf("no DMA segments: %s\n", std::string(segs.status().message()).c_str());
  }
  return 0;  // the pin, then the buffer, then the runtime let go in that order
}
