// The NVMe controller of the VM (tests/vm, --nvme), taken once per test binary, and
// what the tests share: memory setups, buffers, pattern checks.
#ifndef HUGEMM_TESTS_NVME_VM_DEVICE_H_
#define HUGEMM_TESTS_NVME_VM_DEVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hugemm/runtime.h"
#include "hugemm/vfio.h"
#include "nvme/controller.h"
#include "nvme/pci.h"
#include "nvme/vfio.h"
#include "tests/nvme/image_layout.h"

namespace nvme_test {

// The driver's mode in this test binary: physical (uio_pci_generic), or IOVA (vfio-pci
// behind the IOMMU) when built with NVME_TEST_IOVA.
#ifdef NVME_TEST_IOVA
inline constexpr bool kIovaMode = true;
#else
inline constexpr bool kIovaMode = false;
#endif

// BAR0 of $HUGEMM_TEST_NVME_BDF with bus mastering on, bound to uio_pci_generic, or in
// IOVA mode to vfio-pci and opened through VFIO; nullptr (and `why`) outside the VM.
const nvme::MappedBar* Device(std::string* why);
// IOVA mode: the VFIO container of Device()'s function (-1 in physical mode).
int VfioContainer();
// IOVA mode: `rt`'s memory mapped into VfioContainer() at IOVAs from 128 GiB on, where
// no guest memory is, so that no IOVA equals a physical address (null in physical mode,
// or with `error` set when the mapper could not attach).
std::unique_ptr<hugemm::IovaMapper> AttachIova(hugemm::Runtime& rt, std::string* error);

// The memory of each role in setup `s`.
nvme::MemorySpec QueueMemory(Setup s);
nvme::MemorySpec DataMemory(Setup s);
// A data buffer of setup `s`: four 2M folios, or one 1G folio.
absl::StatusOr<hugemm::Buffer> DataBuffer(hugemm::Runtime& rt, Setup s);
// A place in `buf` `before` bytes ahead of a folio boundary, or of the middle of a buffer
// that is one folio.
std::byte* BeforeBoundary(const hugemm::Buffer& buf, size_t before);

inline constexpr std::byte kMarker{0xee};
// "" when p[0, n) holds the pattern of image `offset`; otherwise where it does not and
// what it holds instead.
std::string PatternProblem(uint64_t seed, uint64_t offset, const std::byte* p, size_t n);
// Whether p[0, n) is all kMarker: memory the device must not have touched.
bool Untouched(const std::byte* p, size_t n);

}  // namespace nvme_test

#endif  // HUGEMM_TESTS_NVME_VM_DEVICE_H_
