#include "nvme/vfio.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace nvme {
namespace {

constexpr uint16_t kCommandMemory = 1u << 1;
constexpr uint16_t kCommandBusMaster = 1u << 2;
constexpr off_t kConfigCommand = 4;

absl::Status Errno(const std::string& what, int err) {
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", std::strerror(err)));
}

absl::StatusOr<vfio_region_info> RegionInfo(int device, uint32_t index) {
  vfio_region_info info = {};
  info.argsz = sizeof(info);
  info.index = index;
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &info) != 0) {
    return Errno(absl::StrCat("VFIO_DEVICE_GET_REGION_INFO ", index), errno);
  }
  return info;
}

}  // namespace

absl::StatusOr<std::unique_ptr<VfioFunction>> VfioFunction::Open(const std::string& bdf,
                                                                 const std::string& sysfs_root) {
  const std::string link = absl::StrCat(sysfs_root, "/bus/pci/devices/", bdf, "/iommu_group");
  char target[PATH_MAX] = {};
  const ssize_t len = readlink(link.c_str(), target, sizeof(target) - 1);
  if (len <= 0) {
    return absl::NotFoundError(
        absl::StrFormat("%s has no IOMMU group (%s): boot with an IOMMU, bind vfio-pci", bdf,
                        std::strerror(errno)));
  }
  const char* slash = std::strrchr(target, '/');
  const std::string group_path = absl::StrCat("/dev/vfio/", slash ? slash + 1 : target);

  std::unique_ptr<VfioFunction> fn(new VfioFunction(bdf));
  fn->container_ = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  if (fn->container_ < 0) return Errno("open /dev/vfio/vfio", errno);
  if (ioctl(fn->container_, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
    return absl::FailedPreconditionError("VFIO: unknown API version");
  }
  if (ioctl(fn->container_, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0) {
    return absl::FailedPreconditionError("VFIO: the container offers no TYPE1v2 IOMMU");
  }
  fn->group_ = open(group_path.c_str(), O_RDWR | O_CLOEXEC);
  if (fn->group_ < 0) return Errno(absl::StrCat("open ", group_path), errno);
  vfio_group_status status = {};
  status.argsz = sizeof(status);
  if (ioctl(fn->group_, VFIO_GROUP_GET_STATUS, &status) != 0) {
    return Errno(absl::StrCat("VFIO_GROUP_GET_STATUS ", group_path), errno);
  }
  if ((status.flags & VFIO_GROUP_FLAGS_VIABLE) == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        group_path, " is not viable: every device of the group must be bound to vfio-pci"));
  }
  if (ioctl(fn->group_, VFIO_GROUP_SET_CONTAINER, &fn->container_) != 0) {
    return Errno(absl::StrCat("VFIO_GROUP_SET_CONTAINER ", group_path), errno);
  }
  if (ioctl(fn->container_, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) != 0) {
    return Errno("VFIO_SET_IOMMU TYPE1v2", errno);
  }
  fn->device_ = ioctl(fn->group_, VFIO_GROUP_GET_DEVICE_FD, bdf.c_str());
  if (fn->device_ < 0) return Errno(absl::StrCat("VFIO_GROUP_GET_DEVICE_FD ", bdf), errno);
  return fn;
}

VfioFunction::~VfioFunction() {
  for (int fd : {device_, group_, container_}) {
    if (fd >= 0) close(fd);
  }
}

absl::Status VfioFunction::EnableBusMaster() {
  absl::StatusOr<vfio_region_info> cfg = RegionInfo(device_, VFIO_PCI_CONFIG_REGION_INDEX);
  if (!cfg.ok()) return cfg.status();
  const off_t at = static_cast<off_t>(cfg->offset) + kConfigCommand;
  uint16_t command = 0;
  if (pread(device_, &command, sizeof command, at) != sizeof command) {
    return Errno(absl::StrCat(bdf_, ": read COMMAND"), errno);
  }
  command |= kCommandMemory | kCommandBusMaster;
  if (pwrite(device_, &command, sizeof command, at) != sizeof command) {
    return Errno(absl::StrCat(bdf_, ": write COMMAND"), errno);
  }
  uint16_t check = 0;
  if (pread(device_, &check, sizeof check, at) != sizeof check ||
      (check & kCommandBusMaster) == 0) {
    return absl::InternalError(
        absl::StrFormat("%s: bus mastering did not turn on (COMMAND 0x%04x)", bdf_, check));
  }
  return absl::OkStatus();
}

absl::StatusOr<MappedBar> VfioFunction::MapBar0() {
  absl::StatusOr<vfio_region_info> bar = RegionInfo(device_, VFIO_PCI_BAR0_REGION_INDEX);
  if (!bar.ok()) return bar.status();
  if ((bar->flags & VFIO_REGION_INFO_FLAG_MMAP) == 0 || bar->size == 0) {
    return absl::FailedPreconditionError(absl::StrCat(bdf_, ": BAR0 cannot be mapped"));
  }
  void* base = mmap(nullptr, bar->size, PROT_READ | PROT_WRITE, MAP_SHARED, device_,
                    static_cast<off_t>(bar->offset));
  if (base == MAP_FAILED) return Errno(absl::StrCat(bdf_, ": mmap BAR0"), errno);
  return MappedBar(base, bar->size);
}

}  // namespace nvme
