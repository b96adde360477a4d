// Device-DAX discovery. sysfs is the contract (NVDIMM namespaces and CXL/hmem devices
// both show up under /sys/bus/dax/devices); libdaxctl gives the same list through the
// library the daxctl tool uses, which tests compare against.
#include <daxctl/libdaxctl.h>

#include <bit>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hugemm/backing.h"
#include "runtime/sys/files.h"

namespace hugemm {
namespace {

std::string BaseName(absl::string_view path) {
  size_t slash = path.rfind('/');
  return std::string(slash == absl::string_view::npos ? path : path.substr(slash + 1));
}

// Above any node number a kernel gives (MAX_NUMNODES is at most 1024).
constexpr int64_t kMaxNumaNode = (int64_t{1} << 16) - 1;

// Physical placement is best effort: the files are root-only and older kernels lack the
// mappingN directories. Missing or inconsistent data leaves `ranges` empty.
void ReadPhysicalRanges(Os& os, const std::string& dir, DaxDeviceInfo* info) {
  std::vector<DaxDeviceInfo::Range> ranges;
  uint64_t covered = 0;
  for (int i = 0;; ++i) {
    const std::string m = absl::StrCat(dir, "/mapping", i);
    absl::StatusOr<bool> exists = sys::PathExists(os, m);
    if (!exists.ok()) return;
    if (!*exists) break;
    absl::StatusOr<int64_t> start = sys::ReadInt(os, m + "/start");
    absl::StatusOr<int64_t> end = sys::ReadInt(os, m + "/end");
    absl::StatusOr<int64_t> pgoff = sys::ReadInt(os, m + "/page_offset");
    // Read as unsigned, and held to the device's size: a garbled file (a negative start,
    // an offset past 2^64 bytes, ranges that add up past the size) leaves no ranges.
    if (!start.ok() || !end.ok() || !pgoff.ok() || *start < 0 || *end < *start || *pgoff < 0 ||
        static_cast<uint64_t>(*pgoff) > (~uint64_t{0} >> kPageShift)) {
      return;
    }
    DaxDeviceInfo::Range r;
    r.phys = static_cast<uint64_t>(*start);
    r.size = static_cast<uint64_t>(*end) - static_cast<uint64_t>(*start) + 1;
    r.offset = static_cast<uint64_t>(*pgoff) << kPageShift;
    if (r.size > info->size - covered) return;
    covered += r.size;
    ranges.push_back(r);
  }
  if (ranges.empty()) {
    absl::StatusOr<int64_t> start = sys::ReadInt(os, dir + "/resource");
    if (!start.ok()) return;
    ranges.push_back({0, static_cast<uint64_t>(*start), info->size});
    covered = info->size;
  }
  if (covered != info->size) return;
  info->ranges = std::move(ranges);
}

}  // namespace

absl::StatusOr<DaxDeviceInfo> ReadDaxDevice(absl::string_view device, const std::string& sysfs_root,
                                            Os& os) {
  DaxDeviceInfo info;
  info.name = BaseName(device);
  info.path = absl::StrContains(device, '/') ? std::string(device) : "/dev/" + info.name;
  if (info.name.empty() || info.name == "." || info.name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("bad device-DAX name \"", device, "\""));
  }
  const std::string dir = absl::StrCat(sysfs_root, "/bus/dax/devices/", info.name);
  absl::StatusOr<bool> exists = sys::PathExists(os, dir);
  if (!exists.ok()) return exists.status();
  if (!*exists) {
    return absl::NotFoundError(absl::StrCat("no sysfs entry ", dir, " for ", info.path,
                                            " (is it a device-DAX device, and is the "
                                            "device_dax driver loaded?)"));
  }
  absl::StatusOr<int64_t> size = sys::ReadInt(os, dir + "/size");
  if (!size.ok()) return size.status();
  absl::StatusOr<int64_t> align = sys::ReadInt(os, dir + "/align");
  if (!align.ok()) return align.status();
  absl::StatusOr<int64_t> node = sys::ReadInt(os, dir + "/numa_node");
  if (!node.ok()) return node.status();
  if (*align < static_cast<int64_t>(kPageSize4K) ||
      !std::has_single_bit(static_cast<uint64_t>(*align))) {
    return absl::DataLossError(absl::StrCat("garbled ", dir, "/align: ", *align,
                                            " is not a power of two of at least 4096"));
  }
  if (*size == 0) {
    // What a region's seed device (dynamic CXL or hmem regions) reads until it is given
    // capacity: a real device, with nothing in it to map.
    return absl::NotFoundError(absl::StrCat(info.path, " has no capacity (", dir,
                                            "/size is 0): a region's empty seed device; ",
                                            "daxctl create-device gives it a size"));
  }
  if (*size < 0 || *size % *align != 0) {
    return absl::DataLossError(absl::StrCat("garbled ", dir, "/size: ", *size,
                                            " is not a positive multiple of the alignment ",
                                            *align));
  }
  if (*node < -1 || *node > kMaxNumaNode) {
    return absl::DataLossError(absl::StrCat("garbled ", dir, "/numa_node: ", *node));
  }
  info.size = static_cast<uint64_t>(*size);
  info.align = static_cast<uint64_t>(*align);
  info.numa_node = static_cast<int>(*node);
  ReadPhysicalRanges(os, dir, &info);
  return info;
}

uint64_t DaxDeviceInfo::PhysicalAddress(uint64_t offset) const {
  for (const Range& r : ranges) {
    if (offset >= r.offset && offset - r.offset < r.size) return r.phys + (offset - r.offset);
  }
  return ~uint64_t{0};
}

absl::StatusOr<std::vector<DaxDeviceInfo>> ListDaxDevices(const std::string& sysfs_root, Os& os) {
  std::vector<DaxDeviceInfo> devices;
  const std::string dir = sysfs_root + "/bus/dax/devices";
  absl::StatusOr<bool> exists = sys::PathExists(os, dir);
  if (!exists.ok()) return exists.status();
  if (!*exists) return devices;
  absl::StatusOr<std::vector<std::string>> names = os.ListDir(dir);
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    // A device of size 0 (an empty seed device) has nothing to list, as libdaxctl's
    // listing below has it.
    absl::StatusOr<int64_t> size = sys::ReadInt(os, absl::StrCat(dir, "/", name, "/size"));
    if (size.ok() && *size == 0) continue;
    absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice(name, sysfs_root, os);
    if (!info.ok()) return info.status();
    devices.push_back(std::move(*info));
  }
  return devices;
}

// sysfs links each bound device into its driver's directory. Read through the Os, which
// has no readlink, so not from <device>/driver.
absl::StatusOr<std::string> DaxDeviceDriver(absl::string_view name, const std::string& sysfs_root,
                                            Os& os) {
  // A plain name: "" or one with a slash would name a driver's own directory, or a path
  // outside it, and find a driver bound to no such device.
  if (name.empty() || name == "." || name == ".." || absl::StrContains(name, '/')) {
    return absl::InvalidArgumentError(absl::StrCat("bad device-DAX name \"", name, "\""));
  }
  const std::string drivers = sysfs_root + "/bus/dax/drivers";
  absl::StatusOr<bool> exists = sys::PathExists(os, drivers);
  if (!exists.ok()) return exists.status();
  if (!*exists) return std::string();
  absl::StatusOr<std::vector<std::string>> names = os.ListDir(drivers);
  if (!names.ok()) return names.status();
  for (const std::string& driver : *names) {
    absl::StatusOr<bool> bound = sys::PathExists(os, absl::StrCat(drivers, "/", driver, "/", name));
    if (!bound.ok()) return bound.status();
    if (*bound) return driver;
  }
  return std::string();
}

absl::StatusOr<std::vector<DaxDeviceInfo>> ListDaxDevicesWithLibdaxctl() {
  struct daxctl_ctx* ctx = nullptr;
  if (int rc = daxctl_new(&ctx); rc < 0) {
    return absl::UnavailableError(absl::StrCat("daxctl_new failed: error ", -rc));
  }
  std::vector<DaxDeviceInfo> devices;
  struct daxctl_region* region;
  daxctl_region_foreach(ctx, region) {
    struct daxctl_dev* dev;
    daxctl_dev_foreach(region, dev) {
      DaxDeviceInfo info;
      info.name = daxctl_dev_get_devname(dev);
      info.path = "/dev/" + info.name;
      info.size = daxctl_dev_get_size(dev);
      info.align = daxctl_dev_get_align(dev);
      info.numa_node = daxctl_dev_get_target_node(dev);
      if (info.size > 0) devices.push_back(std::move(info));
    }
  }
  daxctl_unref(ctx);
  return devices;
}

}  // namespace hugemm
