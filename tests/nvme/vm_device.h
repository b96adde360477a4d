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
#include "nvme/controller.h"
#include "nvme/pci.h"
#include "tests/nvme/image_layout.h"

namespace nvme_test {

// BAR0 of $HUGEMM_TEST_NVME_BDF, bound to uio_pci_generic with bus mastering on, or
// nullptr (and `why`) outside the VM.
const nvme::MappedBar* Device(std::string* why);

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
