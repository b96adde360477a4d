// nvme_image fill IMG | check IMG | write-cases IMG
//
// The host side of the NVMe VM test (image_layout.h). `fill` sizes IMG and writes the
// read region's pattern, before the VM boots. `check`, after it has stopped, finds
// every write case of every setup at its offset (the shifted case shifted exactly
// as the driver was told to), zeros everywhere else in the write region, and the read
// region untouched. Exit 0 when all holds, 1 with what differs, 2 on bad usage.
// `write-cases` writes what a guest that gets everything right would, so that the
// check itself can be tested on the host (image-check-test.sh).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/nvme/image_layout.h"

namespace {

using nvme_test::kPage;

bool ReadAt(int fd, uint64_t offset, std::vector<std::byte>* out, uint64_t n) {
  out->resize(n);
  for (uint64_t done = 0; done < n;) {
    const ssize_t r = pread(fd, out->data() + done, n - done, static_cast<off_t>(offset + done));
    if (r <= 0) return false;
    done += static_cast<uint64_t>(r);
  }
  return true;
}

// What `expected` (the bytes that belong at image `offset`) and `got` differ in.
std::string Difference(const std::vector<std::byte>& got, const std::vector<std::byte>& expected,
                       uint64_t offset, uint64_t seed) {
  size_t i = 0;
  while (i < got.size() && got[i] == expected[i]) ++i;
  if (i == got.size()) return "";
  const size_t word_at = i & ~size_t{7};
  uint64_t word = 0;
  std::memcpy(&word, got.data() + word_at, std::min<size_t>(8, got.size() - word_at));
  std::string where;
  if (std::optional<int64_t> d = nvme_test::PagesAway(seed, offset + word_at, word, 64)) {
    where = " (the pattern of " + std::to_string(*d) + " pages away)";
  } else if (word == 0) {
    where = " (zeros: never written)";
  }
  return "first difference at image offset " + std::to_string(offset + i) + where;
}

bool Expect(int fd, const char* what, uint64_t offset, const std::vector<std::byte>& expected,
            uint64_t seed) {
  std::vector<std::byte> got;
  if (!ReadAt(fd, offset, &got, expected.size())) {
    std::printf("FAIL: %s: cannot read %zu bytes at %llu\n", what, expected.size(),
                static_cast<unsigned long long>(offset));
    return false;
  }
  const std::string diff = Difference(got, expected, offset, seed);
  if (!diff.empty()) std::printf("FAIL: %s: %s\n", what, diff.c_str());
  return diff.empty();
}

int Fill(int fd) {
  if (ftruncate(fd, static_cast<off_t>(nvme_test::kImageSize)) != 0) return 1;
  std::vector<std::byte> chunk(4 << 20);
  for (uint64_t at = 0; at < nvme_test::kReadRegionSize; at += chunk.size()) {
    nvme_test::FillPattern(nvme_test::kReadSeed, nvme_test::kReadRegion + at, chunk.data(),
                           chunk.size());
    if (pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(nvme_test::kReadRegion + at)) !=
        static_cast<ssize_t>(chunk.size())) {
      std::perror("nvme_image: write");
      return 1;
    }
  }
  std::printf("nvme image: %llu MiB of pattern at offset 0, write region zero\n",
              static_cast<unsigned long long>(nvme_test::kReadRegionSize >> 20));
  return 0;
}

// The write region as a guest that gets everything right leaves it.
std::vector<std::byte> ExpectedWrites(bool iova) {
  std::vector<std::byte> want(nvme_test::kImageSize - nvme_test::kWriteRegion);
  for (nvme_test::Setup m : nvme_test::kSetups) {
    for (const nvme_test::WriteCase& c : nvme_test::kWriteCases) {
      const uint64_t at = nvme_test::WriteOffset(m, c, iova);
      std::byte* p = want.data() + (at - nvme_test::kWriteRegion);
      nvme_test::FillPattern(nvme_test::kWriteSeed, at, p, c.length);
      if (c.shifted_page >= 0) {
        // The controller read the buffer's next page for this one.
        const uint64_t page = static_cast<uint64_t>(c.shifted_page) * kPage;
        nvme_test::FillPattern(nvme_test::kWriteSeed, at + page + kPage, p + page, kPage);
      }
    }
  }
  return want;
}

int WriteCases(int fd, bool iova) {
  const std::vector<std::byte> want = ExpectedWrites(iova);
  for (nvme_test::Setup m : nvme_test::kSetups) {
    for (const nvme_test::WriteCase& c : nvme_test::kWriteCases) {
      const uint64_t at = nvme_test::WriteOffset(m, c, iova);
      if (pwrite(fd, want.data() + (at - nvme_test::kWriteRegion), c.length,
                 static_cast<off_t>(at)) != static_cast<ssize_t>(c.length)) {
        std::perror("nvme_image: write");
        return 1;
      }
    }
  }
  return 0;
}

int Check(int fd, bool iova) {
  bool ok = true;
  std::vector<std::byte> expected(nvme_test::kReadRegionSize);
  nvme_test::FillPattern(nvme_test::kReadSeed, nvme_test::kReadRegion, expected.data(),
                         expected.size());
  ok &= Expect(fd, "read region", nvme_test::kReadRegion, expected, nvme_test::kReadSeed);

  // Each case alone (to say which one differs), then the region in one piece.
  const std::vector<std::byte> want = ExpectedWrites(iova);
  for (nvme_test::Setup m : nvme_test::kSetups) {
    for (const nvme_test::WriteCase& c : nvme_test::kWriteCases) {
      const uint64_t at = nvme_test::WriteOffset(m, c, iova);
      const std::byte* p = want.data() + (at - nvme_test::kWriteRegion);
      std::vector<std::byte> one(p, p + c.length);
      const std::string what = std::string(iova ? "IOVA mode, " : "") + nvme_test::SetupName(m) +
                               ": write \"" + c.name + "\"";
      if (Expect(fd, what.c_str(), at, one, nvme_test::kWriteSeed)) {
        std::printf("ok: %s: %llu bytes at image offset %llu%s\n", what.c_str(),
                    static_cast<unsigned long long>(c.length), static_cast<unsigned long long>(at),
                    c.shifted_page >= 0 ? ", with the shifted page's bytes one page early" : "");
      } else {
        ok = false;
      }
    }
  }
  ok &= Expect(fd, "write region (nothing outside the cases)", nvme_test::kWriteRegion, want,
               nvme_test::kWriteSeed);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[1] : "";
  // The -iova forms are those of the driver's IOVA mode, which writes its own windows.
  const bool iova = mode == "check-iova" || mode == "write-cases-iova";
  if (mode != "fill" && mode != "check" && mode != "write-cases" && !iova) {
    std::fprintf(stderr,
                 "usage: nvme_image fill|check|write-cases|check-iova|write-cases-iova IMG\n");
    return 2;
  }
  const bool check = mode == "check" || mode == "check-iova";
  const int fd = open(argv[2], check ? O_RDONLY : O_RDWR | O_CREAT, 0644);
  if (fd < 0) {
    std::perror(argv[2]);
    return 1;
  }
  const int rc = mode == "fill" ? Fill(fd) : check ? Check(fd, iova) : WriteCases(fd, iova);
  close(fd);
  return rc;
}
