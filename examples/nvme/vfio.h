// IOVA mode's PCI side: the function bound to vfio-pci behind an IOMMU, reached through
// VFIO (its group, a type1 container, the device), with hugemm's IOVA mapper on the
// container so that every piece of the runtime's memory has an IOVA before any command
// names it.
//
//   nvme::PciFunction("0000:00:04.0").BindDriver("vfio-pci");
//   auto fn = nvme::VfioFunction::Open("0000:00:04.0");   // group, container, TYPE1v2
//   auto mapper = hugemm::IovaMapper::Attach(rt, (*fn)->container_fd());
//   (*fn)->EnableBusMaster();
//   auto bar = (*fn)->MapBar0();
//   ... ControllerOptions{.iova = mapper->get()} ...
#ifndef HUGEMM_EXAMPLES_NVME_VFIO_H_
#define HUGEMM_EXAMPLES_NVME_VFIO_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nvme/pci.h"

namespace nvme {

// One PCI function owned through VFIO: closes the device, the group and the container
// when dropped (the IOMMU mappings go with the container). Not thread-safe.
class VfioFunction {
 public:
  // Opens the function's IOMMU group (/dev/vfio/N, from sysfs), a container with the
  // TYPE1v2 IOMMU, and the device. Errors: NotFound (no IOMMU group: vfio-pci not bound,
  // or no IOMMU), FailedPrecondition (the group is not viable: another of its devices
  // has a kernel driver), and what the kernel said to each ioctl.
  static absl::StatusOr<std::unique_ptr<VfioFunction>> Open(const std::string& bdf,
                                                            const std::string& sysfs_root = "/sys");
  ~VfioFunction();
  VfioFunction(const VfioFunction&) = delete;
  VfioFunction& operator=(const VfioFunction&) = delete;

  int container_fd() const { return container_; }
  // Sets Memory Space and Bus Master Enable through the device's config region.
  absl::Status EnableBusMaster();
  // Maps BAR0 through the device's region (mmap of the device descriptor).
  absl::StatusOr<MappedBar> MapBar0();

 private:
  explicit VfioFunction(std::string bdf) : bdf_(std::move(bdf)) {}

  std::string bdf_;
  int container_ = -1;
  int group_ = -1;
  int device_ = -1;
};

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_VFIO_H_
