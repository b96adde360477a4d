#include "tests/test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "runtime/sys/hugepages.h"

namespace hugemm::testing {

int64_t FreeHugePages(size_t page_size) {
  absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(Os::Default(), page_size);
  return pool.ok() ? pool->free - pool->resv : 0;
}

std::string HugetlbfsMountFor(size_t page_size) {
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(Os::Default());
  if (!mounts.ok()) return "";
  for (const HugetlbfsMount& m : *mounts) {
    if (m.page_size == page_size && ::access(m.path.c_str(), W_OK) == 0) return m.path;
  }
  return "";
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "hugemm-test-XXXXXX").string();
  char* made = ::mkdtemp(tmpl.data());
  if (made == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void TempDir::WriteFile(const std::string& relative, const std::string& contents) const {
  std::filesystem::path p = std::filesystem::path(path_) / relative;
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << contents;
}

}  // namespace hugemm::testing
