#include "tests/nvme/vm_device.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"

namespace nvme_test {

namespace {

struct Taken {
  std::unique_ptr<nvme::VfioFunction> vfio;  // IOVA mode
  std::unique_ptr<nvme::MappedBar> bar;
  std::string why;
};

Taken* Take() {
  static Taken* taken = [] {
    auto* t = new Taken;
    const char* bdf = std::getenv("HUGEMM_TEST_NVME_BDF");
    if (bdf == nullptr) {
      t->why = "no NVMe controller: run in the VM with --nvme (HUGEMM_TEST_NVME_BDF)";
      return t;
    }
    nvme::PciFunction fn(bdf);
    absl::StatusOr<nvme::MappedBar> bar = absl::UnknownError("");
    if (kIovaMode) {
      absl::Status st = fn.BindDriver("vfio-pci");
      absl::StatusOr<std::unique_ptr<nvme::VfioFunction>> vfio =
          st.ok() ? nvme::VfioFunction::Open(bdf) : st;
      if (vfio.ok()) {
        t->vfio = std::move(*vfio);
        st = t->vfio->EnableBusMaster();
      } else {
        st = vfio.status();
      }
      bar = st.ok() ? t->vfio->MapBar0() : st;
    } else {
      absl::Status st = fn.BindDriver("uio_pci_generic");
      if (st.ok()) st = fn.EnableBusMaster();
      bar = st.ok() ? fn.MapBar0() : st;
    }
    if (!bar.ok()) {
      t->why = std::string(bar.status().message());
      return t;
    }
    t->bar = std::make_unique<nvme::MappedBar>(std::move(*bar));
    return t;
  }();
  return taken;
}

}  // namespace

const nvme::MappedBar* Device(std::string* why) {
  Taken* taken = Take();
  *why = taken->why;
  return taken->bar.get();
}

int VfioContainer() {
  Taken* taken = Take();
  return taken->vfio != nullptr ? taken->vfio->container_fd() : -1;
}

std::unique_ptr<hugemm::IovaMapper> AttachIova(hugemm::Runtime& rt, std::string* error) {
  if (!kIovaMode) return nullptr;
  // IOVAs far above the guest's memory: an IOVA equal to the page's physical address (the
  // default window starts at 4 GiB, where q35 puts the RAM above the PCI hole) would
  // make IOVA mode indistinguishable from physical mode.
  absl::StatusOr<std::unique_ptr<hugemm::IovaMapper>> mapper =
      hugemm::IovaMapper::Attach(rt, VfioContainer(), {.iova_base = uint64_t{1} << 37});
  if (!mapper.ok()) {
    *error = mapper.status().ToString();
    return nullptr;
  }
  return std::move(*mapper);
}

namespace {

nvme::MemorySpec DevDax() {
  const char* dax = std::getenv("HUGEMM_TEST_DAX");
  return {.backing = hugemm::BackingKind::kDevDax,
          .page_size = 0,
          .devdax_path = dax ? dax : "/dev/dax0.0"};
}

}  // namespace

nvme::MemorySpec QueueMemory(Setup s) {
  if (s == Setup::kHugetlb1G) return {.page_size = hugemm::kPageSize1G};
  if (s == Setup::kDevDaxQueues) return DevDax();
  return {.page_size = hugemm::kPageSize2M};
}

nvme::MemorySpec DataMemory(Setup s) {
  if (s == Setup::kHugetlb1G) return {.page_size = hugemm::kPageSize1G};
  if (s == Setup::kDevDaxData) return DevDax();
  return {.page_size = hugemm::kPageSize2M};
}

absl::StatusOr<hugemm::Buffer> DataBuffer(hugemm::Runtime& rt, Setup s) {
  const nvme::MemorySpec spec = DataMemory(s);
  absl::StatusOr<size_t> page = spec.PageSize();
  if (!page.ok()) return page.status();
  return rt.MapBuffer(*page >= hugemm::kPageSize1G ? *page : 4 * *page, spec.ForBuffer());
}

std::byte* BeforeBoundary(const hugemm::Buffer& buf, size_t before) {
  const size_t boundary = buf.size() >= 2 * buf.folio_size() ? buf.folio_size() : buf.size() / 2;
  return buf.data() + boundary - before;
}

std::string PatternProblem(uint64_t seed, uint64_t offset, const std::byte* p, size_t n) {
  std::optional<size_t> bad = FirstMismatch(seed, offset, p, n);
  if (!bad) return "";
  const size_t at = *bad & ~size_t{7};
  uint64_t word = 0;
  std::memcpy(&word, p + at, std::min<size_t>(8, n - at));
  std::string what = absl::StrFormat("byte %u of %u (image offset %u, page %u) holds 0x%016x", *bad,
                                     n, offset + *bad, *bad / kPage, word);
  if (std::optional<int64_t> d = PagesAway(seed, offset + at, word, 64)) {
    return absl::StrFormat("%s: the pattern of %d pages away", what, *d);
  }
  if (Untouched(p + at, std::min<size_t>(8, n - at))) return what + ": never written";
  return what;
}

bool Untouched(const std::byte* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != kMarker) return false;
  }
  return true;
}

}  // namespace nvme_test
