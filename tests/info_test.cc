// `hugemm info --json` is what scripts read: it must parse and agree with sysfs.
#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/sys/files.h"
#include "runtime/util/json.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

// Runs the CLI and returns its stdout; fails the test on a non-zero exit.
std::string RunCli(const std::string& args, int* exit_code) {
  std::string cmd = std::string(HUGEMM_CLI_PATH) + " " + args;
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  if (p == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int status = pclose(p);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

int64_t SysfsInt(const std::string& path) {
  absl::StatusOr<int64_t> v = sys::ReadInt(path);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : -1;
}

TEST(InfoJson, ParsesAndMatchesSysfs) {
  int rc = 0;
  std::string out = RunCli("info --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  absl::StatusOr<Json> json = Json::Parse(out);
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << out;
  const Json* pools = json->Find("pools");
  ASSERT_NE(pools, nullptr);
  ASSERT_TRUE(pools->is_array());
  absl::StatusOr<std::vector<std::string>> dirs = sys::ListDir("/sys/kernel/mm/hugepages");
  ASSERT_TRUE(dirs.ok());
  ASSERT_EQ(pools->as_array().size(), dirs->size());
  for (const Json& pool : pools->as_array()) {
    const int64_t kb = pool.Find("page_size")->as_int() / 1024;
    const std::string dir = "/sys/kernel/mm/hugepages/hugepages-" + std::to_string(kb) + "kB/";
    // Counts move only when someone maps; nobody in this test does.
    EXPECT_EQ(pool.Find("nr")->as_int(), SysfsInt(dir + "nr_hugepages")) << dir;
    EXPECT_EQ(pool.Find("free")->as_int(), SysfsInt(dir + "free_hugepages")) << dir;
    for (const Json& node : pool.Find("nodes")->as_array()) {
      const std::string ndir = "/sys/devices/system/node/node" +
                               std::to_string(node.Find("node")->as_int()) +
                               "/hugepages/hugepages-" + std::to_string(kb) + "kB/";
      EXPECT_EQ(node.Find("nr")->as_int(), SysfsInt(ndir + "nr_hugepages")) << ndir;
    }
  }
  const Json* sizes = json->Find("page_sizes");
  ASSERT_NE(sizes, nullptr);
  EXPECT_EQ(sizes->as_array()[0].as_int(), 4096);
  ASSERT_NE(json->Find("can_read_pfns"), nullptr);
  EXPECT_TRUE(json->Find("can_read_pfns")->is_bool());
  ASSERT_NE(json->Find("hugetlbfs_mounts"), nullptr);
  ASSERT_NE(json->Find("dax_devices"), nullptr);
}

TEST(InfoJson, ListsDaxDevicesOfAGivenSysfsTree) {
  testing::TempDir dir;
  for (const auto& [name, align] : {std::pair{"dax0.0", 2097152}, {"dax1.0", 1073741824}}) {
    dir.WriteFile(std::string("bus/dax/devices/") + name + "/size",
                  std::to_string(4LL * align) + "\n");
    dir.WriteFile(std::string("bus/dax/devices/") + name + "/align", std::to_string(align));
    dir.WriteFile(std::string("bus/dax/devices/") + name + "/numa_node", "0");
  }
  int rc = 0;
  std::string out = RunCli("info --json --sysfs-root " + dir.path(), &rc);
  ASSERT_EQ(rc, 0) << out;
  absl::StatusOr<Json> json = Json::Parse(out);
  ASSERT_TRUE(json.ok()) << json.status();
  const auto& dax = json->Find("dax_devices")->as_array();
  ASSERT_EQ(dax.size(), 2u);
  EXPECT_EQ(dax[0].Find("path")->as_string(), "/dev/dax0.0");
  EXPECT_EQ(dax[0].Find("align")->as_int(), 2097152);
  EXPECT_EQ(dax[1].Find("align")->as_int(), 1073741824);
  EXPECT_EQ(dax[1].Find("size")->as_int(), 4LL * 1073741824);
  std::string table = RunCli("info --sysfs-root " + dir.path(), &rc);
  EXPECT_THAT(table, ::testing::HasSubstr("/dev/dax1.0"));
  EXPECT_THAT(table, ::testing::HasSubstr("align 1G"));
}

TEST(InfoCli, RejectsUnknownArguments) {
  int rc = 0;
  RunCli("info --bogus 2>/dev/null", &rc);
  EXPECT_EQ(rc, 2);
  RunCli("nonsense 2>/dev/null", &rc);
  EXPECT_EQ(rc, 2);
}

// `hugemm bench translate --json` carries every key doc/benchmarks.md names: positive times,
// and ratios that follow from them. (How fast is the benchmark's business, not a test's.)
TEST(BenchCli, TranslateJsonHasEveryKey) {
  int rc = 0;
  std::string out = RunCli("bench translate --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  absl::StatusOr<Json> json = Json::Parse(out);
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << out;
  auto number = [&](const char* key) {
    const Json* v = json->Find(key);
    EXPECT_TRUE(v != nullptr && v->is_number()) << key << " in " << out;
    return v != nullptr && v->is_number() ? v->as_number() : 0.0;
  };
  for (const char* key :
       {"translate_ns", "translate_full_ns", "translate_single_ns", "translate_real_ns",
        "pagemap_ns", "flat_array_ns", "flat_pfn_array_ns"}) {
    EXPECT_GT(number(key), 0) << key;
  }
  auto ratio_of = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  const double vs_flat = ratio_of(number("translate_ns"), number("flat_array_ns"));
  const double vs_pfn = ratio_of(number("translate_ns"), number("flat_pfn_array_ns"));
  const double vs_pagemap = ratio_of(number("pagemap_ns"), number("translate_real_ns"));
  EXPECT_NEAR(number("translate_over_flat_array"), vs_flat, 1e-3 * vs_flat);
  EXPECT_NEAR(number("translate_over_flat_pfn_array"), vs_pfn, 1e-3 * vs_pfn);
  EXPECT_NEAR(number("pagemap_over_translate"), vs_pagemap, 1e-3 * vs_pagemap);
}

TEST(Json, RoundTripsAndRejectsGarbage) {
  Json o = Json::MakeObject();
  o.Set("a", 1);
  o.Set("s", "x\"y\n");
  Json arr = Json::MakeArray();
  arr.Push(true);
  arr.Push(nullptr);
  arr.Push(2.5);
  o.Set("arr", std::move(arr));
  absl::StatusOr<Json> back = Json::Parse(o.Dump());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->Find("a")->as_int(), 1);
  EXPECT_EQ(back->Find("s")->as_string(), "x\"y\n");
  EXPECT_EQ(back->Find("arr")->as_array()[2].as_number(), 2.5);
  EXPECT_EQ(back->Dump(-1), o.Dump(-1));
  EXPECT_FALSE(Json::Parse("{\"a\": }").ok());
  EXPECT_FALSE(Json::Parse("[1, 2").ok());
  EXPECT_FALSE(Json::Parse("{} x").ok());
}

}  // namespace
}  // namespace hugemm
