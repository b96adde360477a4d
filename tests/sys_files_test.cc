// The sys layer's readers of /proc-style files, on real files and on this machine's /proc.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/sys/files.h"
#include "runtime/sys/hugepages.h"

namespace hugemm::sys {
namespace {

using ::testing::HasSubstr;

// A file holding `text`, removed with the object.
class TextFile {
 public:
  explicit TextFile(const std::string& text)
      : path_(std::filesystem::temp_directory_path() /
              absl::StrCat("hugemm-sys-files-", ::getpid(), "-", next_++)) {
    std::ofstream(path_) << text;
  }
  ~TextFile() { std::filesystem::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  static inline int next_ = 0;
  std::filesystem::path path_;
};

TEST(ReadKibField, ReadsTheKeysLineInBytes) {
  TextFile f(
      "MemTotal:       24554180 kB\n"
      "MemAvailable:   20000000 kB\n"
      "HugePages_Total:    3072\n"
      "Hugepagesize:       2048 kB\n"
      "VmPin:\t       0 kB\n");
  Os& os = Os::Default();
  absl::StatusOr<uint64_t> v = ReadKibField(os, f.path(), "MemAvailable");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, uint64_t{20000000} << 10);
  v = ReadKibField(os, f.path(), "Hugepagesize");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, uint64_t{2} << 20);
  v = ReadKibField(os, f.path(), "VmPin");  // a tab before the value, as /proc/self/status has
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(*v, 0u);
}

TEST(ReadKibField, MatchesTheWholeKeyOnly) {
  // "MemTotal" is not "Mem", nor "HugePages_Total" "HugePages".
  TextFile f("MemTotal: 4 kB\nHugePages_Total: 8\n");
  EXPECT_EQ(ReadKibField(Os::Default(), f.path(), "Mem").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadKibField(Os::Default(), f.path(), "HugePages").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ReadKibField, AMissingKeyIsNotFoundAndAGarbledOneDataLoss) {
  TextFile f("HugePages_Total: 8\nVmPin: many kB\nMemFree: 12\nBig: 99999999999999999999 kB\n");
  absl::StatusOr<uint64_t> v = ReadKibField(Os::Default(), f.path(), "MemAvailable");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(v.status().message(), HasSubstr("MemAvailable"));
  for (const char* key : {"VmPin", "HugePages_Total", "MemFree", "Big"}) {
    v = ReadKibField(Os::Default(), f.path(), key);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss) << key;
    EXPECT_THAT(v.status().message(), HasSubstr(f.path())) << key;
  }
  // A value whose bytes would not fit in 64 bits.
  TextFile huge(absl::StrCat("Huge: ", (~uint64_t{0} >> 10) + 1, " kB\n"));
  EXPECT_EQ(ReadKibField(Os::Default(), huge.path(), "Huge").status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(ReadKibField, AMissingFileKeepsItsErrno) {
  absl::StatusOr<uint64_t> v = ReadKibField(Os::Default(), "/nonexistent/meminfo", "MemFree");
  EXPECT_FALSE(v.ok());
  EXPECT_NE(v.status().code(), absl::StatusCode::kDataLoss);
}

TEST(ReadKibField, ThisMachinesProcFiles) {
  absl::StatusOr<uint64_t> total = ReadKibField(Os::Default(), "/proc/meminfo", "MemTotal");
  ASSERT_TRUE(total.ok()) << total.status();
  EXPECT_EQ(*total, static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGESIZE));
  absl::StatusOr<uint64_t> rss = ReadKibField(Os::Default(), "/proc/self/status", "VmRSS");
  ASSERT_TRUE(rss.ok()) << rss.status();
  EXPECT_GT(*rss, 0u);
}

// A mount point with a space, a tab or a backslash in its name: /proc/mounts writes them
// as octal escapes, and the path given back is the real one (it was "/tmp/L\040dir", which
// no file is in: `hugemm bench pin -f` refused a file in such a mount).
TEST(HugetlbfsMounts, PathsAreUnescaped) {
  TextFile f(
      "none /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
      "none /tmp/L\\040dir hugetlbfs rw,relatime,pagesize=2M,size=4194304 0 0\n"
      "none /tmp/a\\011b\\134c hugetlbfs rw,pagesize=1024M 0 0\n"
      "none /tmp/not\\04 hugetlbfs rw,pagesize=2M 0 0\n"
      "proc /proc proc rw 0 0\n");
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = HugetlbfsMounts(Os::Default(), f.path());
  ASSERT_TRUE(mounts.ok()) << mounts.status();
  ASSERT_EQ(mounts->size(), 4u);
  EXPECT_EQ((*mounts)[0].path, "/dev/hugepages");
  EXPECT_EQ((*mounts)[1].path, "/tmp/L dir");
  EXPECT_EQ((*mounts)[1].size_limit, 4194304u);
  EXPECT_EQ((*mounts)[2].path, "/tmp/a\tb\\c");
  EXPECT_EQ((*mounts)[2].page_size, size_t{1} << 30);
  EXPECT_EQ((*mounts)[3].path, "/tmp/not\\04");  // not an escape: kept as written
}

}  // namespace
}  // namespace hugemm::sys
