// The memory-sources layer on a real /dev/dax device ($HUGEMM_TEST_DAX). This machine's
// kernel has no device-DAX driver, so ctest runs this binary inside a VM that has one
// (tests/vm, label devdax-vm), once with a 2M-aligned and once with a 1G-aligned
// namespace ($HUGEMM_TEST_DAX_ALIGN).
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hugemm/backing.h"
#include "hugemm/kernel_check.h"
#include "hugemm/os.h"
#include "tests/test_util.h"

namespace hugemm {
namespace {

using ::testing::HasSubstr;

class RealDevDaxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TestDaxDevice();
    HUGEMM_NEED(!path_.empty(), "needs a device-DAX device in $HUGEMM_TEST_DAX (tests/vm)");
    absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice(path_);
    ASSERT_TRUE(info.ok()) << info.status();
    info_ = *info;
    if (const char* a = std::getenv("HUGEMM_TEST_DAX_ALIGN")) {
      absl::StatusOr<size_t> want = ParsePageSize(a);
      ASSERT_TRUE(want.ok()) << want.status();
      ASSERT_EQ(info_.align, *want) << "the VM made a namespace of another alignment";
    }
    auto backing = Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = path_});
    ASSERT_TRUE(backing.ok()) << backing.status();
    backing_ = *backing;
  }

  std::string path_;
  DaxDeviceInfo info_;
  std::shared_ptr<Backing> backing_;
};

TEST_F(RealDevDaxTest, SysfsAndLibdaxctlAgree) {
  absl::StatusOr<std::vector<DaxDeviceInfo>> sysfs = ListDaxDevices();
  absl::StatusOr<std::vector<DaxDeviceInfo>> lib = ListDaxDevicesWithLibdaxctl();
  ASSERT_TRUE(sysfs.ok()) << sysfs.status();
  ASSERT_TRUE(lib.ok()) << lib.status();
  ASSERT_FALSE(lib->empty()) << "libdaxctl sees no device";
  bool found = false;
  for (const DaxDeviceInfo& d : *lib) {
    if (d.name != info_.name) continue;
    found = true;
    EXPECT_EQ(d.size, info_.size);
    EXPECT_EQ(d.align, info_.align);
  }
  EXPECT_TRUE(found) << info_.name << " missing from libdaxctl's list";
  EXPECT_EQ(backing_->page_size(), info_.align);
}

TEST_F(RealDevDaxTest, MapsAtTheDeviceAlignmentAndMatchesTheKernel) {
  const size_t length = info_.align == kPageSize1G ? kPageSize1G : 4 * info_.align;
  ASSERT_LE(length, info_.size);
  absl::StatusOr<Extent> extent = backing_->Map({.length = length});
  ASSERT_TRUE(extent.ok()) << extent.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(extent->data()) % info_.align, 0u);
  EXPECT_EQ(extent->node(), info_.numa_node);
  for (size_t off = 0; off < length; off += kPageSize4K) extent->data()[off] = std::byte{0x3c};
  for (size_t off = 0; off < length; off += kPageSize4K) {
    ASSERT_EQ(extent->data()[off], std::byte{0x3c});
  }
  absl::StatusOr<KernelCheck> check = CheckAgainstKernel(*extent);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->kernel_page_size, info_.align);
  EXPECT_TRUE(check->pfns_checked);
  for (size_t i = 0; i < extent->page_count(); ++i) EXPECT_NE(extent->pfn(i), kUnknownPfn);
  for (const std::string& m : check->mismatches) ADD_FAILURE() << m;
  std::printf("device-DAX %s: %zu pages of %s, head PFN 0x%llx, pagemap %s, kpageflags %s\n",
              path_.c_str(), extent->page_count(), PageSizeName(info_.align).c_str(),
              static_cast<unsigned long long>(extent->pfn(0)),
              check->pfns_hidden ? "hides PFNs" : "shows PFNs",
              check->flags_checked ? "head+tails" : "not shown");
  // The recorded PFNs come from sysfs when pagemap hides them: they must match.
  if (!info_.ranges.empty()) {
    EXPECT_EQ(extent->pfn(0), info_.PhysicalAddress(extent->offset()) >> kPageShift);
  }
}

TEST_F(RealDevDaxTest, DataStaysOnTheDeviceAtItsOffset) {
  const uint64_t offset = info_.size >= 2 * info_.align ? info_.align : 0;
  {
    absl::StatusOr<Extent> e = backing_->Map({.length = info_.align, .offset = offset});
    ASSERT_TRUE(e.ok()) << e.status();
    EXPECT_EQ(e->offset(), offset);
    std::memcpy(e->data() + 777, "persistent", 11);
  }
  absl::StatusOr<Extent> again = backing_->Map({.length = info_.align, .offset = offset});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(std::memcmp(again->data() + 777, "persistent", 11), 0);
}

TEST_F(RealDevDaxTest, RefusesPrivateAndMisalignedMappings) {
  absl::StatusOr<Extent> e = backing_->Map({.length = info_.align, .shared = false});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("MAP_SHARED"));
  e = backing_->Map({.length = info_.align, .offset = info_.align / 2});
  ASSERT_FALSE(e.ok());
  EXPECT_THAT(e.status().message(), HasSubstr("device alignment"));
  e = backing_->Map({.length = info_.align + kPageSize4K});
  EXPECT_FALSE(e.ok());
  e = backing_->Map({.length = info_.size + info_.align});
  EXPECT_FALSE(e.ok());
}

// A file that carries the device's name is not the device: mapping it would hand out the
// device's physical addresses for page cache memory.
TEST_F(RealDevDaxTest, RefusesWhatOnlyCarriesTheDeviceName) {
  testing::TempDir dir;
  const std::string file = dir.path() + "/" + info_.name;
  dir.WriteFile(info_.name, "");
  ASSERT_EQ(truncate(file.c_str(), static_cast<off_t>(2 * info_.align)), 0);
  auto regular = Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = file});
  ASSERT_FALSE(regular.ok()) << "the regular file " << file << " was taken for " << path_;
  EXPECT_EQ(regular.status().code(), absl::StatusCode::kNotFound) << regular.status();
  EXPECT_THAT(regular.status().message(), HasSubstr("regular file"));
  const std::string sysfs_dir = "/sys/bus/dax/devices/" + info_.name;
  auto directory = Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = sysfs_dir});
  ASSERT_FALSE(directory.ok());
  EXPECT_EQ(directory.status().code(), absl::StatusCode::kNotFound) << directory.status();
  EXPECT_THAT(directory.status().message(), HasSubstr("is a directory"));
}

// sysfs lists a device no driver serves (unbound, or made system RAM by daxctl): its
// /dev node is still there, and opening it fails with ENXIO. The message says why. Only
// in the VM: the device is unbound from device_dax for the test and bound again after.
TEST_F(RealDevDaxTest, ADeviceNoDriverServesSaysSo) {
  const char* in_vm = std::getenv("HUGEMM_IN_VM");
  HUGEMM_NEED(in_vm != nullptr && std::string(in_vm) == "1",
              "unbinds the device from its driver: only in the VM (tests/vm)");
  backing_.reset();  // its descriptor would outlive the binding it was opened under
  auto write = [](const std::string& file, const std::string& value) {
    std::ofstream out(file);
    out << value;
    out.flush();
    return out.good();
  };
  const std::string drivers = "/sys/bus/dax/drivers/device_dax/";
  ASSERT_TRUE(write(drivers + "unbind", info_.name)) << "cannot unbind " << info_.name;
  auto unbound = Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = path_});
  const bool rebound = write(drivers + "bind", info_.name);
  ASSERT_TRUE(rebound) << "cannot bind " << info_.name << " again: the tests after this fail";
  ASSERT_FALSE(unbound.ok()) << path_ << " opened while no driver served it";
  EXPECT_EQ(unbound.status().code(), absl::StatusCode::kNotFound) << unbound.status();
  EXPECT_EQ(ErrnoOf(unbound.status()), ENXIO) << unbound.status();
  EXPECT_THAT(unbound.status().message(), HasSubstr("device_dax driver does not serve"));
  auto again = Backing::Create({.kind = BackingKind::kDevDax, .devdax_path = path_});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Map({.length = info_.align}).ok());
}

}  // namespace
}  // namespace hugemm
