// `hugemm demo`: the smallest end-to-end proof that this machine gives real huge pages:
// map one page of each size, write and read it, and hold it against the kernel.
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "hugemm/backing.h"
#include "hugemm/kernel_check.h"
#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

// 0 = checked and agrees, 1 = a real failure, -1 = this size is not available here.
int DemoOne(size_t page_size) {
  const std::string name = PageSizeName(page_size);
  absl::StatusOr<std::shared_ptr<Backing>> backing =
      Backing::Create({.kind = BackingKind::kHugetlb, .page_size = page_size});
  if (!backing.ok()) {
    std::printf("%-3s skipped: %s\n", name.c_str(),
                std::string(backing.status().message()).c_str());
    return -1;
  }
  absl::StatusOr<Extent> extent = (*backing)->Map({.length = page_size});
  if (!extent.ok()) {
    std::printf("%-3s skipped: %s\n", name.c_str(), std::string(extent.status().message()).c_str());
    return -1;
  }
  // Write a pattern at both ends and read it back through the mapping.
  std::byte* p = extent->data();
  std::memset(p, 0xa5, 4096);
  std::memset(p + page_size - 4096, 0x5a, 4096);
  const bool data_ok = p[0] == std::byte{0xa5} && p[page_size - 1] == std::byte{0x5a};
  absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*extent);
  if (!check.ok()) {
    std::printf("%-3s FAILED: %s\n", name.c_str(), std::string(check.status().message()).c_str());
    return 1;
  }
  std::printf(
      "%-3s page at %p  node %d  PFN %s  kernel page size %s  PFNs %s  kpageflags %s  "
      "data %s\n",
      name.c_str(), static_cast<void*>(p), extent->node(),
      extent->pfns_known() ? absl::StrCat("0x", absl::Hex(extent->pfn(0))).c_str() : "unknown",
      PageSizeName(check->kernel_page_size).c_str(),
      check->pfns_checked ? "contiguous" : "unreadable",
      check->flags_checked ? "head+tails" : "unreadable", data_ok ? "ok" : "WRONG");
  for (const std::string& m : check->mismatches) std::printf("    mismatch: %s\n", m.c_str());
  if (!check->ok() || !data_ok) return 1;
  // Mapped and right as far as it could be read, but not held against the kernel's frames.
  return check->pfns_checked && check->flags_checked ? 0 : 2;
}

int RunDemo() {
  int failures = 0, ran = 0, unchecked = 0;
  for (size_t size : {kPageSize2M, kPageSize1G}) {
    int rc = DemoOne(size);
    if (rc == 0) ++ran;
    if (rc == 1) ++failures;
    if (rc == 2) ++unchecked;
  }
  std::printf("demo: %d page size(s) mapped and checked, %d failed", ran, failures);
  if (unchecked > 0) std::printf(", %d mapped but not checked", unchecked);
  std::printf("\n");
  if (unchecked > 0) {
    // As verify says it: without the frames, nothing was held against the kernel.
    std::fprintf(stderr,
                 "hugemm demo: the kernel hides PFNs or page flags from this process (pagemap "
                 "and kpageflags need CAP_SYS_ADMIN): %d page size(s) not checked\n",
                 unchecked);
    return kExitFailed;
  }
  if (ran == 0 && failures == 0) {
    // Nothing was checked: a run that could not be done is no success.
    std::fprintf(stderr, "hugemm demo: no huge page could be mapped (see the reasons above)\n");
    return kExitFailed;
  }
  return failures ? kExitFailed : kExitOk;
}

}  // namespace

void AddDemoCommand(CommandTable& table, CLI::App* app) {
  table.Add(app, "demo", "Map a 2M and a 1G page and check them against the kernel", RunDemo);
}

}  // namespace hugemm::cli
