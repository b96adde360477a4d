// The `hugemm` command line: `hugemm info --json` is what scripts read, so it must parse
// and agree with sysfs; every command parses its flags the same way, with usage errors
// that name the flag and the value (exit 2); `hugemm bench` leaves nothing behind.
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/page_size.h"
#include "hugemm/system_info.h"
#include "nlohmann/json.hpp"
#include "runtime/sys/files.h"
#include "runtime/sys/hugepages.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using Json = nlohmann::ordered_json;
using ::testing::HasSubstr;
using ::testing::Not;

// Parses the CLI's output; a discarded value when it is not JSON.
Json Parse(const std::string& text) {
  return Json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// Whether a run under a small RLIMIT_AS ended before main(), with nothing of hugemm's to
// report: the dynamic loader could not map a library (exit 127, "error while loading
// shared libraries"), or libnuma's constructor could not allocate its node masks (it
// prints "Out of memory allocating bitmask" and exits). `output` holds its stderr.
bool EndedBeforeMain(int exit_code, const std::string& output) {
  return exit_code == 127 || output.find("error while loading") != std::string::npos ||
         output.find("Out of memory allocating bitmask") != std::string::npos;
}

// Runs the CLI and returns its stdout (add "2>&1" to `args` for stderr too).
std::string RunCli(const std::string& args, int* exit_code) {
  return testing::RunCommand(std::string(HUGEMM_CLI_PATH) + " " + args, exit_code);
}

int64_t SysfsInt(const std::string& path) {
  absl::StatusOr<int64_t> v = sys::ReadInt(Os::Default(), path);
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? *v : -1;
}

TEST(InfoJson, ParsesAndMatchesSysfs) {
  int rc = 0;
  std::string out = RunCli("info --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  ASSERT_TRUE(json.contains("pools") && json["pools"].is_array()) << out;
  absl::StatusOr<std::vector<std::string>> dirs = Os::Default().ListDir("/sys/kernel/mm/hugepages");
  ASSERT_TRUE(dirs.ok());
  ASSERT_EQ(json["pools"].size(), dirs->size());
  for (const Json& pool : json["pools"]) {
    for (const char* key : {"page_size", "nr", "free", "resv", "surplus", "overcommit"}) {
      EXPECT_TRUE(pool[key].is_number_integer()) << key << " in " << pool;
    }
    EXPECT_TRUE(pool["name"].is_string());
    const int64_t kb = pool["page_size"].get<int64_t>() / 1024;
    const std::string dir = "/sys/kernel/mm/hugepages/hugepages-" + std::to_string(kb) + "kB/";
    // Counts move only when someone maps; nobody in this test does.
    EXPECT_EQ(pool["nr"].get<int64_t>(), SysfsInt(dir + "nr_hugepages")) << dir;
    EXPECT_EQ(pool["free"].get<int64_t>(), SysfsInt(dir + "free_hugepages")) << dir;
    for (const Json& node : pool["nodes"]) {
      const std::string ndir = "/sys/devices/system/node/node" +
                               std::to_string(node["node"].get<int>()) + "/hugepages/hugepages-" +
                               std::to_string(kb) + "kB/";
      EXPECT_EQ(node["nr"].get<int64_t>(), SysfsInt(ndir + "nr_hugepages")) << ndir;
    }
  }
  ASSERT_TRUE(json["page_sizes"].is_array());
  EXPECT_EQ(json["page_sizes"][0].get<int64_t>(), 4096);

  // The text's pool rows say the same as the JSON, column by column under its heading
  // (once "reserved" headed the pool size, which is not the kernel's HugePages_Rsvd).
  const std::string text = RunCli("info", &rc);
  ASSERT_EQ(rc, 0) << text;
  EXPECT_THAT(text, HasSubstr("size   node        pages       free   promised    surplus     "
                              "in use"));
  for (const Json& pool : json["pools"]) {
    const std::string row = absl::StrFormat(
        "  %-6s %-6s %10d %10d %10d %10d %10d\n", pool["name"].get<std::string>(), "all",
        pool["nr"].get<int64_t>(), pool["free"].get<int64_t>(), pool["resv"].get<int64_t>(),
        pool["surplus"].get<int64_t>(), pool["nr"].get<int64_t>() - pool["free"].get<int64_t>());
    EXPECT_THAT(text, HasSubstr(row)) << text;
  }
  EXPECT_TRUE(json["default_huge_page_size"].is_number_integer());
  EXPECT_TRUE(json["numa_nodes"].is_array());
  EXPECT_TRUE(json["can_read_pfns"].is_boolean());
  EXPECT_TRUE(json["can_read_kpageflags"].is_boolean());
  EXPECT_TRUE(json["anon_fallback"].is_boolean());
  EXPECT_TRUE(json["hugetlbfs_mounts"].is_array());
  EXPECT_TRUE(json["dax_devices"].is_array());
  const Json& meta = json["folio_metadata"];
  EXPECT_EQ(meta["descriptor_bytes"].get<int64_t>(), 56);
  EXPECT_EQ(meta["default_placement"], "system");
  EXPECT_TRUE(meta["reserve_capable"].is_array());
  EXPECT_TRUE(meta["bytes_per_gib"]["2M"]["hugemm"].is_number());
  // Keys come in the order the README lists them.
  std::vector<std::string> keys;
  for (const auto& [key, value] : json.items()) keys.push_back(key);
  EXPECT_EQ(keys.front(), "page_sizes");
  EXPECT_EQ(keys.back(), "folio_metadata");
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
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  const Json& dax = json["dax_devices"];
  ASSERT_EQ(dax.size(), 2u);
  EXPECT_EQ(dax[0]["path"], "/dev/dax0.0");
  EXPECT_EQ(dax[0]["align"].get<int64_t>(), 2097152);
  EXPECT_EQ(dax[1]["align"].get<int64_t>(), 1073741824);
  EXPECT_EQ(dax[1]["size"].get<int64_t>(), 4LL * 1073741824);
  // --flag=value reads as --flag value does.
  EXPECT_EQ(Parse(RunCli("info --json --sysfs-root=" + dir.path(), &rc))["dax_devices"], dax);
  std::string table = RunCli("info --sysfs-root " + dir.path(), &rc);
  EXPECT_THAT(table, ::testing::HasSubstr("/dev/dax1.0"));
  EXPECT_THAT(table, ::testing::HasSubstr("align 1G"));
}

// A device sysfs lists is not always one hugemm can use: `info` says which are and why
// not, by the open the devdax backing makes. /dev/null stands in for a served device (its
// sysfs "dev" names it, 1:3); a name without a /dev node, and one whose node is another
// character device, are not usable.
TEST(InfoJson, SaysWhichDaxDevicesAreUsableAndWhy) {
  ASSERT_NE(::access("/dev/dax97.0", F_OK), 0) << "this test needs /dev/dax97.0 not to exist";
  testing::TempDir dir;
  for (const auto& [name, dev] :
       {std::pair{"null", "1:3"}, {"zero", "1:3"}, {"dax97.0", "252:9"}}) {
    const std::string d = std::string("bus/dax/devices/") + name + "/";
    dir.WriteFile(d + "size", "4194304\n");
    dir.WriteFile(d + "align", "2097152\n");
    dir.WriteFile(d + "numa_node", "0\n");
    dir.WriteFile(d + "dev", std::string(dev) + "\n");
  }
  // sysfs links a bound device into its driver's directory.
  dir.WriteFile("bus/dax/drivers/device_dax/null/uevent", "");
  dir.WriteFile("bus/dax/drivers/kmem/zero/uevent", "");
  int rc = 0;
  const std::string out = RunCli("info --json --sysfs-root " + dir.path(), &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  const Json& dax = json["dax_devices"];
  ASSERT_EQ(dax.size(), 3u) << out;
  ASSERT_EQ(dax[0]["name"], "dax97.0");
  EXPECT_TRUE(dax[0]["driver"].is_null());
  EXPECT_EQ(dax[0]["usable"], false);
  EXPECT_THAT(dax[0]["unusable_reason"].get<std::string>(),
              HasSubstr("open /dev/dax97.0: No such file or directory"));
  ASSERT_EQ(dax[1]["name"], "null");
  EXPECT_EQ(dax[1]["driver"], "device_dax");
  EXPECT_EQ(dax[1]["usable"], true);
  EXPECT_FALSE(dax[1].contains("unusable_reason")) << dax[1];
  ASSERT_EQ(dax[2]["name"], "zero");
  EXPECT_EQ(dax[2]["driver"], "kmem");
  EXPECT_EQ(dax[2]["usable"], false);
  EXPECT_THAT(dax[2]["unusable_reason"].get<std::string>(),
              HasSubstr("/dev/zero is character device 1:5, not the device-DAX device zero (1:3)"));
  // The table says the same, a device to a line.
  const std::string table = RunCli("info --sysfs-root " + dir.path(), &rc);
  ASSERT_EQ(rc, 0) << table;
  EXPECT_THAT(table, ::testing::ContainsRegex("/dev/null +size 4 MiB +align 2M +node 0 +driver "
                                              "device_dax +usable\n"));
  EXPECT_THAT(table, ::testing::ContainsRegex("/dev/dax97.0 .* driver none +not usable: open "
                                              "/dev/dax97.0: No such file or directory"));
  EXPECT_THAT(table, ::testing::ContainsRegex("/dev/zero .* driver kmem +not usable: /dev/zero is "
                                              "character device 1:5"));
}

// The kernel prints resv_hugepages from an unsigned long, and lets it wrap below zero for
// a moment while a private mapping's reservation is handed back (seen on 6.18 right after
// a process with a MAP_PRIVATE|MAP_HUGETLB mapping exits). The pool still reads, as 0.
TEST(HugePagePool, AReservationCountWrappedBelowZeroReadsZero) {
  testing::TempDir dir;
  const std::string pool = "kernel/mm/hugepages/hugepages-2048kB/";
  dir.WriteFile(pool + "nr_hugepages", "3072\n");
  dir.WriteFile(pool + "free_hugepages", "3071\n");
  dir.WriteFile(pool + "resv_hugepages", "18446744073709551615\n");
  dir.WriteFile(pool + "surplus_hugepages", "0\n");
  dir.WriteFile(pool + "nr_overcommit_hugepages", "0\n");
  absl::StatusOr<HugePagePool> p = sys::ReadHugePagePool(Os::Default(), kPageSize2M, dir.path());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->nr, 3072);
  EXPECT_EQ(p->free, 3071);
  EXPECT_EQ(p->resv, 0);
  dir.WriteFile(pool + "resv_hugepages", "many\n");
  EXPECT_EQ(sys::ReadHugePagePool(Os::Default(), kPageSize2M, dir.path()).status().code(),
            absl::StatusCode::kDataLoss);
}

// A sysfs root that does not exist is the wrong path, not a machine with nothing.
TEST(SystemInfo, ARootThatDoesNotExistIsNotFound) {
  testing::TempDir dir;
  const std::string gone = dir.path() + "/no-such-sysfs";
  absl::StatusOr<SystemInfo> info = CollectSystemInfo(gone);
  EXPECT_EQ(info.status().code(), absl::StatusCode::kNotFound) << info.status();
  EXPECT_THAT(info.status().message(), HasSubstr(gone));
  // An empty tree that exists is a machine without NUMA, huge pages or devices.
  info = CollectSystemInfo(dir.path());
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->pools.empty());
}

TEST(InfoCli, RejectsUnknownArguments) {
  int rc = 0;
  RunCli("info --bogus 2>/dev/null", &rc);
  EXPECT_EQ(rc, 2);
  // The message names the word, not only that a command is missing.
  EXPECT_THAT(RunCli("nonsense 2>&1 >/dev/null", &rc), HasSubstr("unknown command \"nonsense\""));
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(RunCli("bench nonsense 2>&1 >/dev/null", &rc),
              HasSubstr("hugemm bench: unknown command \"nonsense\""));
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(RunCli("--bogus 2>&1 >/dev/null", &rc), HasSubstr("unknown flag \"--bogus\""));
  EXPECT_EQ(rc, 2);
  RunCli("2>/dev/null", &rc);  // a command is required
  EXPECT_EQ(rc, 2);
  RunCli("bench 2>/dev/null", &rc);  // and a benchmark
  EXPECT_EQ(rc, 2);
}

// A bad value is a usage error (exit 2) whose message names the flag and the value; an
// empty item in a list flag is one, not skipped.
TEST(Cli, BadValuesAreUsageErrorsNamingFlagAndValue) {
  struct Case {
    const char* args;
    const char* flag;
    const char* value;
  };
  for (const Case& c : {
           Case{"verify --range zz 1", "--range", "zz"},
           Case{"verify --range 0x1000 12q", "--range", "12q"},
           Case{"bench pin -m zz", "-m", "zz"},
           Case{"bench pin -m 0", "-m", "0"},
           Case{"bench pin -r -3", "-r", "-3"},
           Case{"bench pin -j 65", "-j", "65"},
           Case{"bench pin --page-size zz", "--page-size", "zz"},
           Case{"bench pin --page-size=3M", "--page-size", "3M"},
           Case{"bench pin --output=rows", "--output", "rows"},
           Case{"bench pin --compare kernel,disk", "--compare", "disk"},
           Case{"bench alloc --iterations 5", "--iterations", "5"},
           Case{"bench mr --registrations 0", "--registrations", "0"},
           Case{"info --sysfs-root /nonexistent", "--sysfs-root", "/nonexistent"},
           Case{"bench pin --backing anon --page-size 2M", "--page-size", "2M"},
           Case{"stress --seed -5", "--seed", "-5"},
           Case{"stress --seconds nan", "--seconds", "nan"},
           Case{"stress --seconds 1e400", "--seconds", "1e400"},
           Case{"bench io --seconds nan", "--seconds", "nan"},
           Case{"bench io --qd 1,,2", "--qd", "1,,2"},
           Case{"bench io --rw randread,", "--rw", "randread,"},
           Case{"bench io --bs 4K --bs ,128K", "--bs", ",128K"},
           Case{"bench io --candidates plain,,fixed", "--candidates", "plain,,fixed"},
           Case{"bench io --qd 0,8", "--qd", "0"},
           Case{"bench pin --compare kernel,,page", "--compare", "kernel,,page"},
           Case{"stress --seed 18446744073709551616", "--seed", "18446744073709551616"},
           Case{"verify --range 0x1000 0", "--range", "0x1000 0"},
           Case{"verify --range 0x1001 4096", "--range", "0x1001"},
           Case{"verify --range 0xfffffffffffff000 8192", "--range", "0xfffffffffffff000"},
           // An empty path or name is not the flag's default.
           Case{"bench pin -m 2 -r 1 -f ''", "-f", "empty"},
           Case{"bench io --file '' --size 5K", "--file", "empty"},
           Case{"bench io --dir '' --size 5K", "--dir", "empty"},
           Case{"bench io --fio '' --candidates fio --rw randread --bs 4K --qd 1 --size 8M "
                "--seconds 0.01",
                "--fio", "empty"},
           Case{"bench mr --device ''", "--device", "empty"},
       }) {
    int rc = 0;
    const std::string err = RunCli(std::string(c.args) + " 2>&1 >/dev/null", &rc);
    EXPECT_EQ(rc, 2) << c.args << ": " << err;
    EXPECT_THAT(err, HasSubstr(c.flag)) << c.args;
    EXPECT_THAT(err, HasSubstr(c.value)) << c.args;
  }
  int rc = 0;
  const std::string err = RunCli("bench pin -a -u 2>&1 >/dev/null", &rc);
  EXPECT_EQ(rc, 2) << err;  // PIN and GET at once
  EXPECT_THAT(err, HasSubstr("-u"));
}

// A flag given a value means that value: --no-kernel-pins=false keeps the kernel's pins,
// as --json=false prints text (it turned them off whatever the value was).
TEST(StressCli, AFlagGivenFalseIsOff) {
  struct Case {
    const char* flag;
    bool kernel_pins;
  };
  for (const Case& c :
       {Case{"", true}, Case{"--no-kernel-pins", false}, Case{"--no-kernel-pins=false", true},
        Case{"--no-kernel-pins=true", false}}) {
    int rc = 0;
    const Json j =
        Parse(RunCli(std::string("stress --seconds 0.01 --threads 1 --json ") + c.flag, &rc));
    ASSERT_TRUE(j.is_object()) << c.flag;
    EXPECT_EQ(rc, 0) << c.flag << ": " << j.dump();
    EXPECT_EQ(j["kernel_pins"], c.kernel_pins) << c.flag;
  }
  int rc = 0;
  EXPECT_FALSE(Parse(RunCli("stress --seconds 0.01 --threads 1 --json=false", &rc)).is_object());
  EXPECT_EQ(rc, 0);
}

TEST(Cli, HelpForEveryCommandAndVersion) {
  int rc = 0;
  for (const char* cmd : {"", "info", "demo", "verify", "stress", "bench", "bench pin",
                          "bench translate", "bench alloc", "bench mr", "bench io"}) {
    const std::string out = RunCli(std::string(cmd) + " --help", &rc);
    EXPECT_EQ(rc, 0) << cmd;
    EXPECT_THAT(out, HasSubstr("Usage: hugemm " + std::string(cmd))) << out;
    EXPECT_THAT(out, HasSubstr("Exit status")) << out;
    // Each value of a flag named, not counted ("ADDR LEN", not "ADDR LEN x 2").
    EXPECT_THAT(out, ::testing::Not(::testing::ContainsRegex(" x [0-9]"))) << out;
  }
  EXPECT_THAT(RunCli("verify --help", &rc), HasSubstr("--range ADDR LEN "));
  const std::string help = RunCli("bench pin --help", &rc);
  for (const char* flag :
       {"-m", "-r", "-n", "-a", "-u", "-L", "-w", "-W", "-S", "-P", "-H", "-f", "-j", "--disjoint",
        "--page-size", "--backing", "--output", "--compare", "--json"}) {
    EXPECT_THAT(help, HasSubstr(std::string(flag) + " ")) << flag;
  }
  // A number's range is in the help, not only in the error a value out of it gets.
  EXPECT_THAT(help, HasSubstr("-j N:in [1 - 64]=1"));
  EXPECT_THAT(help, HasSubstr("-n N:in [-1 - "));
  EXPECT_THAT(RunCli("bench io --help", &rc), HasSubstr("Queue depths, each in [1 - 4096]"));
  EXPECT_THAT(RunCli("--version", &rc), ::testing::StartsWith("hugemm "));
  EXPECT_EQ(rc, 0);
}

// Output that never reached stdout (a full disk, a closed stdout) is an error, exit 1,
// said on stderr; a command that already failed keeps its own exit code.
TEST(Cli, LostOutputFailsTheCommand) {
  struct Case {
    const char* args;
    const char* why;
  };
  for (const Case& c : {Case{"info >/dev/full", "No space left on device"},
                        Case{"info --json >/dev/full", "No space left on device"},
                        Case{"info --json >&-", "Bad file descriptor"},
                        Case{"--version >/dev/full", "No space left on device"},
                        Case{"bench --help >&-", "Bad file descriptor"}}) {
    int rc = 0;
    const std::string err = RunCli(std::string("2>&1 ") + c.args, &rc);
    EXPECT_EQ(rc, 1) << c.args << ": " << err;
    EXPECT_THAT(err, HasSubstr("writing standard output")) << c.args;
    EXPECT_THAT(err, HasSubstr(c.why)) << c.args;
  }
  int rc = 0;
  const std::string err = RunCli("2>&1 bench pin -m 0 >/dev/full", &rc);
  EXPECT_EQ(rc, 2) << err;
  EXPECT_THAT(err, HasSubstr("-m"));
  // Where it all fits, it all arrives and the command succeeds.
  EXPECT_FALSE(Parse(RunCli("info --json", &rc)).is_discarded());
  EXPECT_EQ(rc, 0);
}

// `hugemm verify` and `verify --json` report the same leaves and verdict; a size this
// machine cannot map now is skipped, named once ("hugetlb 1G: map 1 GiB: ..."), and the
// run still agrees with the kernel.
// With too little address space for any huge page (RLIMIT_AS just above what the program
// needs to load), demo maps nothing: a run that could not be done, exit 1, not 0.
TEST(DemoCli, MappingNothingIsAFailure) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's shadow memory does not fit under a small RLIMIT_AS";
#endif
  for (int mib = 8; mib <= 64; ++mib) {
    int code = 0;
    const std::string out = testing::RunCommand(
        absl::StrFormat("prlimit --as=%d %s demo 2>&1", mib << 20, HUGEMM_CLI_PATH), &code);
    if (EndedBeforeMain(code, out)) continue;
    if (out.find("demo: 0 page size(s) mapped") == std::string::npos) {
      GTEST_SKIP() << "a page mapped under the first limit the program loads under (" << mib
                   << " MiB): " << out;
    }
    EXPECT_EQ(code, 1) << out;
    EXPECT_THAT(out, HasSubstr("no huge page could be mapped"));
    return;
  }
  FAIL() << "hugemm did not load under RLIMIT_AS of 64 MiB";
}

TEST(VerifyCli, TextAndJsonAgreeAndSkippedSizesAreNamedOnce) {
  int rc = 0;
  const Json j = Parse(RunCli("verify --json", &rc));
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(rc, 0) << j.dump();
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_EQ(j["leaves_checked"]["4K"].get<int>(), 64);
  EXPECT_EQ(j["mismatch_count"].get<int>(), 0);
  int total = 0;
  for (const auto& [size, n] : j["leaves_checked"].items()) total += n.get<int>();
  for (const Json& why : j["skipped"]) {
    const std::string text = why.get<std::string>();
    const std::string name = text.substr(0, text.find(':'));
    EXPECT_EQ(text.find(name + ": " + name), std::string::npos) << text;
  }
  const std::string out = RunCli("verify", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr(absl::StrFormat("%d leaves checked", total)));
  EXPECT_THAT(out, HasSubstr("0 mismatches: shadow agrees with the kernel"));
  for (const Json& why : j["skipped"]) {
    EXPECT_THAT(out, HasSubstr("skipped " + why.get<std::string>().substr(0, 10)));
  }
}

// Without a device-DAX device verify says device-DAX was not checked, and why, and the
// exit status is what the other sources make it (this machine's /sys lists none; a
// --sysfs-root tree may list one that cannot be opened). A device asked for with --dax
// that cannot be mapped fails the run.
TEST(VerifyCli, SaysDevDaxWasNotCheckedWithoutADevice) {
  int rc = 0;
  const bool listed = sys::PathExists(Os::Default(), "/sys/bus/dax/devices/dax0.0").value_or(true);
  if (listed) GTEST_SKIP() << "this machine has a device-DAX device";
  const Json j = Parse(RunCli("verify --json", &rc));
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(rc, j["ok"].get<bool>() ? 0 : 1) << j.dump();
  EXPECT_FALSE(j.contains("devdax")) << j.dump();
  std::vector<std::string> dax_skips;
  for (const Json& why : j["skipped"]) {
    if (why.get<std::string>().starts_with("device-DAX: "))
      dax_skips.push_back(why.get<std::string>());
  }
  ASSERT_EQ(dax_skips.size(), 1u) << j.dump();
  EXPECT_THAT(dax_skips[0], ::testing::AnyOf(HasSubstr("no device under /sys/bus/dax/devices"),
                                             HasSubstr("no usable device: ")));
  EXPECT_THAT(RunCli("verify", &rc), HasSubstr("skipped " + dax_skips[0] + "\n"));

  testing::TempDir dir;
  dir.WriteFile("bus/dax/devices/dax97.0/size", "4194304\n");
  dir.WriteFile("bus/dax/devices/dax97.0/align", "2097152\n");
  dir.WriteFile("bus/dax/devices/dax97.0/numa_node", "0\n");
  const Json fake = Parse(RunCli("verify --json --sysfs-root " + dir.path(), &rc));
  ASSERT_TRUE(fake.is_object());
  EXPECT_EQ(rc, fake["ok"].get<bool>() ? 0 : 1) << fake.dump();
  EXPECT_EQ(fake["ok"], j["ok"]);
  EXPECT_THAT(fake["skipped"].dump(),
              HasSubstr("device-DAX: no usable device: open /dev/dax97.0: No such file or "
                        "directory"));

  const std::string err = RunCli(
      "verify --json --dax /dev/dax97.0 --sysfs-root " + dir.path() + " 2>&1 >/dev/null", &rc);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_THAT(err, HasSubstr("hugemm verify: device-DAX: open /dev/dax97.0: No such file"));
  // The object says why it failed too, not only "ok": false.
  const Json asked =
      Parse(RunCli("verify --json --dax /dev/dax97.0 --sysfs-root " + dir.path(), &rc));
  ASSERT_TRUE(asked.is_object());
  EXPECT_EQ(rc, 1);
  EXPECT_FALSE(asked["ok"].get<bool>()) << asked.dump();
  ASSERT_TRUE(asked["errors"].is_array()) << asked.dump();
  ASSERT_EQ(asked["errors"].size(), 1u) << asked.dump();
  EXPECT_THAT(asked["errors"][0].get<std::string>(),
              HasSubstr("device-DAX: open /dev/dax97.0: No such file"));
  ASSERT_TRUE(j["errors"].is_array()) << j.dump();
  if (j["ok"].get<bool>()) {
    EXPECT_TRUE(j["errors"].empty()) << j.dump();
  }
}

// gup_test's short flags, and --flag value and --flag=value, give the same run.
TEST(BenchCli, PinTakesGupTestFlagsAndBothLongForms) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 5);
  for (const char* args :
       {"-m 2 -r 1 --page-size 2M", "-m 2 -r 1 --page-size=2M", "-m2 -r1 -n 64 -a -w -S -H -j 1"}) {
    int rc = 0;
    const std::string out = RunCli(std::string("bench pin --json ") + args, &rc);
    ASSERT_EQ(rc, 0) << args << ": " << out;
    const Json json = Parse(out);
    ASSERT_TRUE(json.is_object()) << out;
    EXPECT_EQ(json["page_size"], "2M") << args;
    EXPECT_EQ(json["size_mib"].get<int>(), 2) << args;
    EXPECT_EQ(json["flags"], "PIN|WRITE") << args;
    for (const char* key : {"pin_us", "unpin_us"}) {
      EXPECT_GT(json[key]["median"].get<double>(), 0) << key;
      EXPECT_GE(json[key]["median"].get<double>(), json[key]["min"].get<double>()) << key;
    }
    EXPECT_TRUE(json["floor_us"].is_number());
    EXPECT_TRUE(json["pin_over_floor"].is_number());
  }
  int rc = 0;
  EXPECT_EQ(Parse(RunCli("bench pin --json -m 2 -r 1 -u -W", &rc))["flags"], "GET");
  EXPECT_EQ(Parse(RunCli("bench pin --json -m 2 -r 1 -L -P", &rc))["flags"], "PIN|WRITE|LONGTERM");
  // Numbers are decimal with leading zeros too: not octal, not refused.
  const Json lead = Parse(RunCli("bench pin --json -m 010 -r 01", &rc));
  ASSERT_TRUE(lead.is_object()) << rc;
  EXPECT_EQ(lead["size_mib"].get<int>(), 10);
  EXPECT_EQ(Parse(RunCli("bench pin --json -m 08 -r 1", &rc))["size_mib"], 8) << rc;
}

// Folio spans carry the call floor beside the floor; the other outputs have none.
TEST(BenchCli, PinOfFolioSpansReportsTheCallFloor) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  int rc = 0;
  const std::string out = RunCli("bench pin --json -m 4 -r 2 --output folios", &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  EXPECT_GT(json["call_floor_us"].get<double>(), 0);
  EXPECT_GT(json["call_floor_over_floor"].get<double>(), 0);
  EXPECT_NEAR(json["pin_over_call_floor"].get<double>(),
              json["pin_us"]["median"].get<double>() / json["call_floor_us"].get<double>(), 1e-9);
  const Json pages = Parse(RunCli("bench pin --json -m 2 -r 1 --output pages", &rc));
  ASSERT_EQ(rc, 0);
  EXPECT_FALSE(pages.contains("call_floor_us"));
}

// -j 2 --disjoint: each thread its own folios, timed beside one thread over the whole
// range; without --disjoint both threads pin the same folios.
TEST(BenchCli, PinOnThreadsReportsTheirScaling) {
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 4);
  for (const bool disjoint : {true, false}) {
    int rc = 0;
    const std::string out = RunCli(
        std::string("bench pin --json -m 8 -r 2 -j 2") + (disjoint ? " --disjoint" : ""), &rc);
    ASSERT_EQ(rc, 0) << out;
    const Json json = Parse(out);
    ASSERT_TRUE(json.is_object()) << out;
    EXPECT_EQ(json["threads"].get<int>(), 2);
    EXPECT_EQ(json["disjoint"].get<bool>(), disjoint);
    for (const char* key : {"wall_pin_us", "wall_unpin_us", "one_thread_pin_us"}) {
      EXPECT_GT(json[key]["median"].get<double>(), 0) << key;
    }
    EXPECT_GT(json["threads_over_one_pin"].get<double>(), 0);
    EXPECT_GT(json["threads_over_one_unpin"].get<double>(), 0);
    EXPECT_GT(json["cpu_scaling"].get<double>(), 0);
    EXPECT_GT(json["write_scaling"].get<double>(), 0);
    EXPECT_GT(json["atomic_scaling"].get<double>(), 0);
  }
  int rc = 0;
  const Json one = Parse(RunCli("bench pin --json -m 2 -r 1", &rc));
  ASSERT_EQ(rc, 0);
  EXPECT_FALSE(one.contains("threads_over_one_pin"));
}

// 1G pages: the folio is the 1G page.
TEST(BenchCli, PinOnGiganticPages) {
  HUGEMM_NEED_HUGEPAGES(kPageSize1G, 1);
  int rc = 0;
  const std::string out = RunCli("bench pin --json --page-size 1G -m 1024 -r 1 -n -1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  EXPECT_EQ(json["page_size"], "1G");
  EXPECT_EQ(json["size_mib"].get<int>(), 1024);
  EXPECT_GT(json["pin_us"]["median"].get<double>(), 0);
}

// Names in a directory, or an empty set when it cannot be read.
std::set<std::string> FilesIn(const std::string& dir) {
  std::set<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) names.insert(e->d_name);
    closedir(d);
  }
  return names;
}

// A path that is neither a device nor in a hugetlbfs mount is refused, and nothing is
// created anywhere (it once became a file of that name in a hugetlbfs mount, holding
// the machine's huge pages until deleted by hand).
TEST(BenchCli, PinRefusesAFileOutsideHugetlbfs) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  const std::set<std::string> before = FilesIn(mount);
  for (const char* path : {"/nonexistent", "/tmp/hugemm-bench-pin-file", "relative-name"}) {
    int rc = 0;
    const std::string err =
        RunCli(std::string("bench pin -m 2 -r 1 -f ") + path + " 2>&1 >/dev/null", &rc);
    EXPECT_EQ(rc, 2) << path << ": " << err;
    EXPECT_THAT(err, HasSubstr(path));
    EXPECT_NE(access(path, F_OK), 0) << path << " was created";
  }
  EXPECT_EQ(FilesIn(mount), before) << "a file appeared in " << mount;
}

// A file the benchmark creates in a hugetlbfs mount is gone when it ends; one that was
// there before stays.
TEST(BenchCli, PinRemovesTheFileItCreated) {
  const std::string mount = testing::HugetlbfsMountFor(kPageSize2M);
  HUGEMM_NEED(!mount.empty(), "needs a 2M hugetlbfs mount");
  HUGEMM_NEED_HUGEPAGES(kPageSize2M, 2);
  const std::string path = mount + "/hugemm-info-test-" + std::to_string(getpid());
  int rc = 0;
  std::string out = RunCli("bench pin --json -m 2 -r 1 -f " + path, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(Parse(out)["backing"], "hugetlbfs") << out;
  EXPECT_NE(access(path.c_str(), F_OK), 0) << path << " was left behind";

  FILE* kept = fopen(path.c_str(), "w");
  ASSERT_NE(kept, nullptr);
  fclose(kept);
  out = RunCli("bench pin --json -m 2 -r 1 -f " + path, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(access(path.c_str(), F_OK), 0) << "a file that was there before was removed";
  unlink(path.c_str());
}

// `hugemm bench translate --json` carries every key doc/benchmarks.md names: positive times,
// and ratios that follow from them. (How fast is the benchmark's business, not a test's.)
// The MR benchmark registers memory with an RDMA device: without one (this machine; the VM
// runs it on soft-RoCE) it says so and what would give one, and fails.
TEST(BenchCli, MrSaysClearlyThatItNeedsAnRdmaDevice) {
  if (std::filesystem::exists("/sys/class/infiniband") &&
      !std::filesystem::is_empty("/sys/class/infiniband")) {
    GTEST_SKIP() << "an RDMA device is present";
  }
  for (const char* args : {"bench mr", "bench mr --json"}) {
    int rc = 0;
    const std::string err = RunCli(std::string(args) + " 2>&1 >/dev/null", &rc);
    EXPECT_EQ(rc, 1) << args << ": " << err;
    EXPECT_THAT(err, HasSubstr("no RDMA device")) << args;
    EXPECT_THAT(err, HasSubstr("rdma_rxe")) << args;
  }
}

// What a command given --json printed when it was to fail: stdout parsed (discarded when
// it is not JSON) and stderr.
struct JsonRun {
  int rc = 0;
  std::string out, err;
  Json json;
};

// Runs `<prefix>hugemm <args>` (prefix: a program to run it under, or "").
JsonRun RunJsonFailure(const std::string& args, const std::string& prefix = "") {
  const testing::TempDir dir;
  const std::string err_path = dir.path() + "/stderr";
  JsonRun r;
  r.out = testing::RunCommand(prefix + HUGEMM_CLI_PATH + " " + args + " 2>" + err_path, &r.rc);
  r.json = Parse(r.out);
  std::ifstream in(err_path);
  std::stringstream err;
  err << in.rdbuf();
  r.err = err.str();
  return r;
}

// A run that could not be done, exit 1, with --json: one object on stdout, the same shape
// for every command (the README's "The command line"): the command line, "ok": false, and
// the error's code, its errno (`err`, 0 for none) and the message that stderr got too.
// Returns that message ("" when there is none).
std::string ExpectFailureObject(const JsonRun& r, const std::string& command,
                                const std::string& args, const std::string& code, int err) {
  EXPECT_EQ(r.rc, 1) << r.err;
  if (!r.json.is_object() || !r.json.contains("error") || !r.json["error"].is_object()) {
    ADD_FAILURE() << "no error object; stdout: " << r.out << "\nstderr: " << r.err;
    return "";
  }
  std::vector<std::string> keys;
  for (const auto& [key, value] : r.json.items()) keys.push_back(key);
  EXPECT_THAT(keys, ::testing::ElementsAre("command", "ok", "error")) << r.out;
  EXPECT_EQ(r.json["command"], "hugemm " + args);
  EXPECT_EQ(r.json["ok"], false);
  const Json& e = r.json["error"];
  EXPECT_EQ(e.value("code", ""), code) << r.out;
  if (err != 0) {
    EXPECT_EQ(e.value("errno", 0), err) << r.out;
  } else {
    EXPECT_FALSE(e.contains("errno")) << r.out;
  }
  const std::string message = e.value("message", "");
  EXPECT_FALSE(message.empty()) << r.out;
  EXPECT_THAT(r.err, ::testing::EndsWith("hugemm " + command + ": " + message + "\n"));
  return message;
}

// A pool in the sysfs tree without its nr_hugepages: info cannot be read, exit 1, and
// --json says so on stdout (it printed nothing there).
TEST(JsonFailure, InfoOfATreeItCannotRead) {
  const testing::TempDir dir;
  dir.WriteFile("kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "0\n");
  const std::string args = "info --json --sysfs-root " + dir.path();
  EXPECT_THAT(ExpectFailureObject(RunJsonFailure(args), "info", args, "NOT_FOUND", ENOENT),
              HasSubstr("/nr_hugepages"));
  // Without --json stdout stays empty.
  int rc = 0;
  EXPECT_EQ(RunCli("info --sysfs-root " + dir.path() + " 2>/dev/null", &rc), "");
  EXPECT_EQ(rc, 1);
}

TEST(JsonFailure, BenchMrWithoutAnRdmaDevice) {
  if (std::filesystem::exists("/sys/class/infiniband") &&
      !std::filesystem::is_empty("/sys/class/infiniband")) {
    GTEST_SKIP() << "an RDMA device is present";
  }
  EXPECT_THAT(ExpectFailureObject(RunJsonFailure("bench mr --json"), "bench mr", "bench mr --json",
                                  "FAILED_PRECONDITION", 0),
              HasSubstr("no RDMA device"));
}

// Under the smallest RLIMIT_AS the program loads under, no benchmark can map its buffer:
// each fails on mmap's ENOMEM, and says so on stdout too.
TEST(JsonFailure, BenchmarksWithoutAddressSpace) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's shadow memory does not fit under a small RLIMIT_AS";
#endif
  for (const auto& [command, args] : {std::pair{"bench pin", "bench pin --json -m 1024 -r 1"},
                                      {"bench alloc", "bench alloc --json"},
                                      {"bench translate", "bench translate --json"}}) {
    SCOPED_TRACE(args);
    bool loaded = false;
    for (int mib = 8; mib <= 64 && !loaded; ++mib) {
      const JsonRun r = RunJsonFailure(args, absl::StrFormat("prlimit --as=%d ", mib << 20));
      if (EndedBeforeMain(r.rc, r.err)) continue;
      loaded = true;
      EXPECT_THAT(ExpectFailureObject(r, command, args, "RESOURCE_EXHAUSTED", ENOMEM),
                  HasSubstr("mmap"));
    }
    EXPECT_TRUE(loaded) << "hugemm did not load under RLIMIT_AS of 64 MiB";
  }
}

// Between the smallest RLIMIT_AS the program loads under and one it runs whole under, a
// command's own tables meet an exhausted heap somewhere: that is a failure it says, with
// --json as an object, never an abort (std::bad_alloc escaping the command).
TEST(JsonFailure, OutOfMemoryIsAFailureNotAnAbort) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's shadow memory does not fit under a small RLIMIT_AS";
#endif
  int loaded = 0;
  int out_of_memory = 0;
  for (int mib = 8; mib <= 40; ++mib) {
    const JsonRun r =
        RunJsonFailure("verify --json", absl::StrFormat("prlimit --as=%d ", mib << 20));
    if (EndedBeforeMain(r.rc, r.err)) continue;
    ++loaded;
    SCOPED_TRACE(absl::StrFormat("RLIMIT_AS %d MiB", mib));
    ASSERT_TRUE(r.rc == 0 || r.rc == 1) << "exit " << r.rc << "\n" << r.err;
    ASSERT_TRUE(r.json.is_object()) << r.out << "\n" << r.err;
    if (r.json.contains("error") && r.json["error"].value("code", "") == "RESOURCE_EXHAUSTED" &&
        r.json["error"].value("message", "").starts_with("out of memory")) {
      ++out_of_memory;
      ExpectFailureObject(r, "verify", "verify --json", "RESOURCE_EXHAUSTED", 0);
    }
  }
  EXPECT_GT(loaded, 0) << "hugemm did not load under RLIMIT_AS of 40 MiB";
  RecordProperty("out_of_memory_runs", out_of_memory);
}

// stress with few descriptors: registering external memory then fails with EMFILE, which
// hugemm.h documents; the run counts it as a refusal, not a violation. (As above, the
// limit goes up from where the program first loads.)
TEST(JsonFailure, StressCountsNoDescriptorLeftAsARefusal) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's runtime needs descriptors of its own: without them its type "
                  "checks fail and stop the command";
#endif
  int refused_runs = 0;
  for (int n = 3; n <= 32 && refused_runs == 0; ++n) {
    const JsonRun r =
        RunJsonFailure("stress --seconds 0.3", absl::StrFormat("prlimit --nofile=%d ", n));
    if (EndedBeforeMain(r.rc, r.err)) continue;
    SCOPED_TRACE(absl::StrFormat("RLIMIT_NOFILE %d", n));
    EXPECT_THAT(r.out + r.err, Not(HasSubstr("VIOLATION")));
    if (r.out.find("register external: RESOURCE_EXHAUSTED") != std::string::npos) {
      ++refused_runs;
      EXPECT_EQ(r.rc, 0) << r.out << r.err;
    }
  }
  EXPECT_GT(refused_runs, 0) << "no run was short of descriptors for RegisterExternal";
}

// verify with no descriptor left for pagemap: the huge pages could not be checked, which
// fails the run (a machine without them is a skip; this process just could not look).
// The descriptors the command is started with vary (a test runner's own), so the limit
// goes up from where the program first loads until a run has all it needs.
TEST(JsonFailure, VerifyWithoutDescriptorsFailsRatherThanSkips) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's runtime needs descriptors of its own: without them its type "
                  "checks fail and stop the command";
#endif
  int short_runs = 0;
  for (int n = 3; n <= 32; ++n) {
    const JsonRun r = RunJsonFailure("verify --json", absl::StrFormat("prlimit --nofile=%d ", n));
    if (EndedBeforeMain(r.rc, r.err)) continue;
    SCOPED_TRACE(absl::StrFormat("RLIMIT_NOFILE %d", n));
    ASSERT_TRUE(r.json.is_object()) << r.out << r.err;
    if (r.rc == 0) break;  // enough descriptors for every check
    ++short_runs;
    EXPECT_EQ(r.rc, 1) << r.out << r.err;
    EXPECT_FALSE(r.json.value("ok", true));
    ASSERT_TRUE(r.json.contains("errors") && !r.json["errors"].empty()) << r.out;
    EXPECT_THAT(r.json["errors"].dump(), HasSubstr("EMFILE"));
    EXPECT_THAT(r.json["skipped"].dump(), Not(HasSubstr("EMFILE"))) << r.out;
  }
  EXPECT_GT(short_runs, 0) << "no run was short of descriptors";
}

// A usage error prints nothing on stdout, --json or not (nothing ran); a check that ran
// and failed keeps its own object, with "ok": false and no "error".
TEST(JsonFailure, UsageErrorsPrintNothingAndVerifyKeepsItsShape) {
  for (const char* args :
       {"info --json --bogus", "bench pin --json -m 0", "bench io --json --bs 3K",
        "verify --json --range 0x1000 0", "stress --json --threads 0"}) {
    int rc = 0;
    EXPECT_EQ(RunCli(std::string(args) + " 2>/dev/null", &rc), "") << args;
    EXPECT_EQ(rc, 2) << args;
  }
  int rc = 0;
  const Json j = Parse(RunCli("verify --json --range 0x1000 4096 2>/dev/null", &rc));
  EXPECT_EQ(rc, 1);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["ok"], false);
  EXPECT_TRUE(j.contains("leaves_checked"));
  EXPECT_FALSE(j.contains("error"));
}

TEST(BenchCli, TranslateJsonHasEveryKey) {
  int rc = 0;
  std::string out = RunCli("bench translate --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  const Json json = Parse(out);
  ASSERT_TRUE(json.is_object()) << out;
  auto number = [&](const char* key) {
    const bool ok = json.contains(key) && json[key].is_number();
    EXPECT_TRUE(ok) << key << " in " << out;
    return ok ? json[key].get<double>() : 0.0;
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

// ---- on a real device-DAX device (the VM, tests/devdax-suite.sh) ----

class InfoVerifyRealDevDax : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TestDaxDevice();
    if (path_.empty()) GTEST_SKIP() << "HUGEMM_TEST_DAX names no device-DAX device";
    absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice(path_);
    ASSERT_TRUE(info.ok()) << info.status();
    info_ = *info;
  }

  // The device's entry in `hugemm info --json`.
  Json InfoEntry() {
    int rc = 0;
    const Json json = Parse(RunCli("info --json", &rc));
    EXPECT_EQ(rc, 0);
    for (const Json& d : json["dax_devices"]) {
      if (d["name"] == info_.name) return d;
    }
    ADD_FAILURE() << info_.name << " is not in " << json.dump();
    return Json();
  }

  std::string path_;
  DaxDeviceInfo info_;
};

// A served device is usable, and verify maps a page of it by itself: PFNs held against
// pagemap where it shows them (2M; not 1G), the device's sysfs ranges and kpageflags.
TEST_F(InfoVerifyRealDevDax, AServedDeviceIsUsableAndVerified) {
  const Json entry = InfoEntry();
  EXPECT_EQ(entry["usable"], true) << entry;
  EXPECT_EQ(entry["driver"], "device_dax") << entry;
  EXPECT_FALSE(entry.contains("unusable_reason")) << entry;
  for (const std::string& args :
       std::vector<std::string>{"verify --json", "verify --json --dax " + path_}) {
    int rc = 0;
    const std::string out = RunCli(args, &rc);
    const Json j = Parse(out);
    ASSERT_TRUE(j.is_object()) << out;
    EXPECT_EQ(rc, 0) << args << ": " << out;
    EXPECT_EQ(j["ok"], true) << out;
    const Json& dax = j["devdax"];
    EXPECT_EQ(dax["device"], path_) << out;
    EXPECT_EQ(dax["page_size"].get<uint64_t>(), info_.align) << out;
    EXPECT_EQ(dax["pages"].get<int>(), 1) << out;
    EXPECT_EQ(dax["pfns_in_pagemap"], info_.align == kPageSize2M) << out;
    EXPECT_EQ(dax["pfns_vs_sysfs"], true) << out;
    EXPECT_EQ(dax["kpageflags_checked"], true) << out;
    EXPECT_GE(j["leaves_checked"][PageSizeName(info_.align)].get<int>(), 1) << out;
    EXPECT_THAT(j["skipped"].dump(), Not(HasSubstr("device-DAX"))) << out;
  }
  int rc = 0;
  const std::string text = RunCli("verify", &rc);
  EXPECT_EQ(rc, 0) << text;
  EXPECT_THAT(text, HasSubstr(absl::StrFormat("device-DAX %s: 1 page of %s; PFNs held against ",
                                              path_, PageSizeName(info_.align))));
}

// A copy of the device's sysfs that puts it at 16 MiB, in RAM, where the kernel does not
// map it: verify names the shadow table's PFN as wrong. At 2M the PFN comes from pagemap
// (the device's real one) and sysfs says otherwise; at 1G pagemap hides it, the backing
// takes it from that same sysfs, and kpageflags shows a page of RAM there. The copy
// unmoved passes, so it is faithful but for the move.
TEST_F(InfoVerifyRealDevDax, VerifyNamesAPfnThatIsNotTheDevices) {
  const std::string dir = "/sys/bus/dax/devices/" + info_.name + "/";
  auto read = [&](const std::string& file) {
    absl::StatusOr<std::string> v = sys::ReadTrimmed(Os::Default(), dir + file);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.value_or("0");
  };
  const bool mappings = sys::PathExists(Os::Default(), dir + "mapping0").value_or(false);
  const uint64_t first = std::stoull(read(mappings ? "mapping0/start" : "resource"), nullptr, 0);
  for (const bool move : {false, true}) {
    const uint64_t shift = move ? (uint64_t{16} << 20) - first : 0;  // modulo 2^64
    testing::TempDir root;
    const std::string copy = "bus/dax/devices/" + info_.name + "/";
    for (const char* file : {"size", "align", "numa_node", "dev"}) {
      root.WriteFile(copy + file, read(file) + "\n");
    }
    auto moved = [&](const std::string& file) {
      return absl::StrFormat("0x%x\n", std::stoull(read(file), nullptr, 0) + shift);
    };
    int ranges = 0;
    for (; sys::PathExists(Os::Default(), dir + "mapping" + std::to_string(ranges)).value_or(false);
         ++ranges) {
      const std::string m = "mapping" + std::to_string(ranges) + "/";
      root.WriteFile(copy + m + "start", moved(m + "start"));
      root.WriteFile(copy + m + "end", moved(m + "end"));
      root.WriteFile(copy + m + "page_offset", read(m + "page_offset") + "\n");
    }
    if (ranges == 0) root.WriteFile(copy + "resource", moved("resource"));
    int rc = 0;
    const std::string out =
        RunCli("verify --json --dax " + path_ + " --sysfs-root " + root.path(), &rc);
    const Json j = Parse(out);
    ASSERT_TRUE(j.is_object()) << out;
    EXPECT_EQ(j["devdax"]["pfns_vs_sysfs"], true) << out;
    EXPECT_EQ(j["devdax"]["kpageflags_checked"], true) << out;
    if (!move) {
      EXPECT_EQ(rc, 0) << out;
      EXPECT_EQ(j["mismatch_count"].get<int>(), 0) << out;
      continue;
    }
    EXPECT_EQ(rc, 1) << out;
    EXPECT_EQ(j["ok"], false) << out;
    const std::string named = j["mismatches"].dump();
    if (info_.align == kPageSize2M) {
      // The first and last frame of the page, each named.
      EXPECT_EQ(j["mismatch_count"].get<int>(), 2) << out;
      EXPECT_THAT(named,
                  HasSubstr(absl::StrFormat(
                      "%s's sysfs ranges put byte 0x0 of the device at PFN 0x1000", info_.name)))
          << out;
    } else {
      EXPECT_THAT(named, HasSubstr("shadow has PFN 0x1000, which kpageflags describes as a page "
                                   "of RAM"))
          << out;
    }
  }
}

// A device sysfs lists but no driver serves (unbound from device_dax; daxctl's
// system-ram mode is the same to an open): info says it is not usable and why, verify
// skips device-DAX and says so, its exit status what the rest makes it, and --dax fails.
// Only in the VM: the device is unbound for the test and bound again after.
TEST_F(InfoVerifyRealDevDax, ADeviceNoDriverServesIsNotUsable) {
  const char* in_vm = std::getenv("HUGEMM_IN_VM");
  HUGEMM_NEED(in_vm != nullptr && std::string(in_vm) == "1",
              "unbinds the device from its driver: only in the VM (tests/vm)");
  auto write = [](const std::string& file, const std::string& value) {
    FILE* f = std::fopen(file.c_str(), "w");
    if (f == nullptr) return false;
    const bool ok = std::fputs(value.c_str(), f) >= 0;
    return std::fclose(f) == 0 && ok;
  };
  int rc = 0;
  const Json served = Parse(RunCli("verify --json", &rc));
  const std::string drivers = "/sys/bus/dax/drivers/device_dax/";
  ASSERT_TRUE(write(drivers + "unbind", info_.name)) << "cannot unbind " << info_.name;
  const Json entry = InfoEntry();
  const std::string text = RunCli("info", &rc);
  int verify_rc = 0, asked_rc = 0;
  const Json verify = Parse(RunCli("verify --json", &verify_rc));
  const std::string asked = RunCli("verify --dax " + path_ + " 2>&1", &asked_rc);
  ASSERT_TRUE(write(drivers + "bind", info_.name))
      << "cannot bind " << info_.name << " again: the tests after this fail";

  EXPECT_EQ(entry["usable"], false) << entry;
  EXPECT_TRUE(entry["driver"].is_null()) << entry;
  EXPECT_THAT(entry["unusable_reason"].get<std::string>(),
              HasSubstr("the device_dax driver does not serve " + info_.name +
                        " (no driver is bound to it: daxctl reconfigure-device --mode=devdax " +
                        info_.name + ")"));
  EXPECT_THAT(text, HasSubstr("driver none       not usable: "));
  ASSERT_TRUE(verify.is_object());
  EXPECT_FALSE(verify.contains("devdax")) << verify.dump();
  EXPECT_THAT(verify["skipped"].dump(), HasSubstr("device-DAX: no usable device: "));
  EXPECT_THAT(verify["skipped"].dump(), HasSubstr("no driver is bound to it"));
  EXPECT_EQ(verify["ok"], served["ok"]);
  EXPECT_EQ(verify_rc, verify["ok"].get<bool>() ? 0 : 1);
  EXPECT_EQ(asked_rc, 1) << asked;
  EXPECT_THAT(asked, HasSubstr("hugemm verify: device-DAX: "));
  EXPECT_THAT(asked, HasSubstr("no driver is bound to it"));
  // Served again, it is usable again.
  EXPECT_EQ(InfoEntry()["usable"], true);
}

}  // namespace
}  // namespace hugemm
