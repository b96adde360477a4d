// hugemm memory for an unmodified RDMA tool: makes named files in a hugetlbfs mount with
// hugemm (one huge page each, which the runtime maps and checks against the kernel),
// fills them with a known byte, prints "ready", and waits for a line on stdin while the
// tool (perftest's ib_write_bw --mmap=FILE) maps the same files and moves data through
// them. Then it checks that the tool's writes landed in the pages hugemm made: each file
// no longer holds only the byte it was given, and its pages are still the frames hugemm
// recorded when it mapped them (the shadow table verified against the kernel).
//
//   share_files MOUNT SIZE NAME...     (SIZE: 2M or 1G; the files are left for the caller)
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "hugemm/runtime.h"

namespace {

constexpr std::byte kFill{0xa5};

int Fail(const std::string& what) {
  std::fprintf(stderr, "share_files: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MOUNT SIZE NAME...\n", argv[0]);
    return 2;
  }
  const std::string mount = argv[1];
  const size_t size = std::strcmp(argv[2], "1G") == 0 ? hugemm::kPageSize1G : hugemm::kPageSize2M;
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
  if (!rt.ok()) return Fail(std::string(rt.status().message()));
  std::vector<hugemm::Buffer> buffers;
  for (int i = 3; i < argc; ++i) {
    absl::StatusOr<hugemm::Buffer> b =
        (*rt)->MapBuffer(size, {.backing = hugemm::BackingKind::kHugetlbfs,
                                .page_size = size,
                                .hugetlbfs_mount = mount,
                                .file_name = argv[i]});
    if (!b.ok()) return Fail(std::string(b.status().message()));
    std::memset(b->data(), static_cast<int>(kFill), b->size());
    std::optional<hugemm::Translation> t = (*rt)->Translate(b->data());
    std::printf("%s/%s: %zu bytes made by hugemm, first frame 0x%llx\n", mount.c_str(), argv[i],
                b->size(), static_cast<unsigned long long>(t ? t->pfn : 0));
    buffers.push_back(std::move(*b));
  }
  std::printf("ready\n");
  std::fflush(stdout);
  std::string line;
  std::getline(std::cin, line);

  int failed = 0;
  for (size_t i = 0; i < buffers.size(); ++i) {
    const hugemm::Buffer& b = buffers[i];
    size_t changed = 0;
    for (size_t j = 0; j < b.size(); ++j) changed += b.data()[j] != kFill;
    absl::StatusOr<hugemm::VerifyReport> report = (*rt)->Verify(b.data(), b.size());
    const bool verified = report.ok() && report->ok() && report->pfns_checked;
    std::printf("%s: the tool wrote %zu bytes into hugemm's page; frames %s\n", argv[3 + i],
                changed,
                verified ? "as hugemm mapped them (verified against the kernel)" : "NOT as mapped");
    if (changed == 0 || !verified) ++failed;
  }
  return failed == 0 ? 0 : 1;
}
