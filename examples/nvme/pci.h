// The PCI side of a userspace driver, through sysfs: hand the function to another
// kernel driver, turn on bus mastering, map BAR0.
//
//   nvme::PciFunction fn("0000:00:04.0");
//   fn.BindDriver("uio_pci_generic");      // the kernel's nvme driver lets go of it
//   fn.EnableBusMaster();                  // the controller may now read and write memory
//   auto bar = fn.MapBar0();               // its registers
//
// Physical mode: uio_pci_generic claims the function without touching it (no IOMMU
// domain, no DMA API), so the device sees guest-physical addresses as they are.
#ifndef HUGEMM_EXAMPLES_NVME_PCI_H_
#define HUGEMM_EXAMPLES_NVME_PCI_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "nvme/registers.h"

namespace nvme {

// A mapping of a BAR; unmapped when dropped. Move-only.
class MappedBar {
 public:
  MappedBar() = default;
  MappedBar(void* base, size_t size) : base_(base), size_(size) {}
  MappedBar(MappedBar&& other) noexcept;
  MappedBar& operator=(MappedBar&& other) noexcept;
  ~MappedBar();

  Registers registers() const { return Registers(static_cast<volatile void*>(base_), size_); }
  size_t size() const { return size_; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

// One PCI function by address. Every call reads or writes sysfs (root). Not thread-safe.
class PciFunction {
 public:
  explicit PciFunction(std::string bdf, std::string sysfs_root = "/sys");

  const std::string& bdf() const { return bdf_; }
  // "0x1b36:0x0010".
  absl::StatusOr<std::string> VendorDevice() const;
  // The bound driver's name, "" when none.
  absl::StatusOr<std::string> Driver() const;
  // Whether the class code says NVMe (0x010802).
  absl::StatusOr<bool> IsNvme() const;

  // Unbinds the function from its driver and binds `driver` (driver_override, then
  // drivers_probe), waiting up to `timeout_ms` for it to take the function. Errors:
  // NotFound (no such function, driver not loaded), Internal (the driver refused it).
  absl::Status BindDriver(const std::string& driver, int timeout_ms = 10000);
  // Sets Memory Space and Bus Master Enable in the config space COMMAND register.
  absl::Status EnableBusMaster();
  // Maps resource0. FailedPrecondition while a kernel driver other than
  // uio_pci_generic owns the function (the kernel refuses, or it would be unsafe).
  absl::StatusOr<MappedBar> MapBar0();

 private:
  std::string Path(const std::string& file) const;

  std::string bdf_;
  std::string sysfs_root_;
};

}  // namespace nvme

#endif  // HUGEMM_EXAMPLES_NVME_PCI_H_
