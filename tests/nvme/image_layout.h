// What the NVMe VM test and the host agree on: which bytes of the namespace image hold
// what. The host fills the read region with a pattern before the VM boots; the guest
// reads it through the controller, and writes the write cases' ranges, which the host
// checks after the VM has stopped. Every 8-byte word of the pattern depends on its
// byte offset in the image, so data that lands one page off is never mistaken for right.
#ifndef HUGEMM_TESTS_NVME_IMAGE_LAYOUT_H_
#define HUGEMM_TESTS_NVME_IMAGE_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

namespace nvme_test {

inline constexpr uint64_t kImageSize = uint64_t{256} << 20;
inline constexpr uint64_t kReadRegion = 0;  // [0, 64 MiB): the host's pattern
inline constexpr uint64_t kReadRegionSize = uint64_t{64} << 20;
inline constexpr uint64_t kWriteRegion = uint64_t{128} << 20;  // [128, 256 MiB): the guest's
inline constexpr uint64_t kWriteWindow = uint64_t{16} << 20;   // per setup
inline constexpr uint64_t kReadSeed = 0x4e564d6552656164;      // "NVMeRead"
inline constexpr uint64_t kWriteSeed = 0x4e564d6557726974;     // "NVMeWrit"
inline constexpr uint64_t kPage = 4096;

// Where the driver's memory comes from in each run of the cases: its queues and PRP
// lists, and the data buffers. Each setup has its own write window. Device-DAX memory
// serves one of the two roles at a time, the other in 2M hugetlb pages, so that each
// role is checked on device-DAX alone.
enum class Setup { kHugetlb2M, kHugetlb1G, kDevDaxData, kDevDaxQueues };
inline constexpr Setup kSetups[] = {Setup::kHugetlb2M, Setup::kHugetlb1G, Setup::kDevDaxData,
                                    Setup::kDevDaxQueues};
inline const char* SetupName(Setup s) {
  switch (s) {
    case Setup::kHugetlb2M:
      return "hugetlb 2M";
    case Setup::kHugetlb1G:
      return "hugetlb 1G";
    case Setup::kDevDaxData:
      return "device-DAX data, 2M queues";
    case Setup::kDevDaxQueues:
      return "device-DAX queues, 2M data";
  }
  return "?";
}

// One WRITE case: `length` bytes at `offset` into the setup's window. With
// `shifted_page` >= 0, the driver moved that page's PRP entry one page on, so the image
// holds, in that page, the bytes meant for the page after it.
struct WriteCase {
  const char* name;
  uint64_t offset;
  uint64_t length;
  int shifted_page;
};
inline constexpr WriteCase kWriteCases[] = {
    {"one block", 0, 512, -1},
    {"two pages (PRP2)", 64 << 10, 4096, -1},
    {"a PRP list from mid-page", 1 << 20, (300 << 10) + 512, -1},
    {"many commands in flight", 4 << 20, 3 << 20, -1},
    {"page 5 shifted", 12 << 20, 64 << 10, 5},
};
// The driver's two modes (physical: uio_pci_generic; IOVA: vfio-pci behind the IOMMU)
// run in separate boots, each writing its own windows: the IOVA mode's follow the
// physical mode's four.
inline constexpr uint64_t kIovaWindows = 4;
inline uint64_t WriteOffset(Setup s, const WriteCase& c, bool iova = false) {
  return kWriteRegion + (static_cast<uint64_t>(s) + (iova ? kIovaWindows : 0)) * kWriteWindow +
         c.offset;
}

// The pattern word at image byte offset `offset` (a multiple of 8).
inline uint64_t PatternWord(uint64_t seed, uint64_t offset) {
  uint64_t z = seed + (offset / 8 + 1) * 0x9e3779b97f4a7c15;  // splitmix64
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

// Writes the pattern that belongs at image offset `offset` (8-aligned) into dst[0, n).
inline void FillPattern(uint64_t seed, uint64_t offset, std::byte* dst, size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t w = PatternWord(seed, offset + i);
    std::memcpy(dst + i, &w, n - i < 8 ? n - i : 8);
  }
}

// The first byte of p[0, n) that is not the pattern of image offset `offset`, if any.
inline std::optional<size_t> FirstMismatch(uint64_t seed, uint64_t offset, const std::byte* p,
                                           size_t n) {
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t w = PatternWord(seed, offset + i);
    const size_t len = n - i < 8 ? n - i : 8;
    if (std::memcmp(p + i, &w, len) != 0) return i;
  }
  return std::nullopt;
}

// Where within +-`pages` pages of `offset` the pattern has word `word`: what a mismatch
// is most likely to be, data of a neighbouring page.
inline std::optional<int64_t> PagesAway(uint64_t seed, uint64_t offset, uint64_t word, int pages) {
  for (int64_t d = -pages; d <= pages; ++d) {
    const int64_t at = static_cast<int64_t>(offset) + d * static_cast<int64_t>(kPage);
    if (d != 0 && at >= 0 && PatternWord(seed, static_cast<uint64_t>(at)) == word) return d;
  }
  return std::nullopt;
}

}  // namespace nvme_test

#endif  // HUGEMM_TESTS_NVME_IMAGE_LAYOUT_H_
