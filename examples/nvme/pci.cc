#include "nvme/pci.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace nvme {
namespace {

constexpr off_t kConfigCommand = 0x04;
constexpr uint16_t kCommandMemory = 1u << 1;
constexpr uint16_t kCommandBusMaster = 1u << 2;

absl::Status ErrnoError(const std::string& what, int err) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return ErrnoError(absl::StrCat("read ", path), errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

absl::Status WriteFile(const std::string& path, const std::string& value) {
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat("open ", path), errno);
  const ssize_t n = write(fd, value.data(), value.size());
  const int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(value.size())) {
    return ErrnoError(absl::StrCat("write \"", value, "\" to ", path), n < 0 ? err : EIO);
  }
  return absl::OkStatus();
}

}  // namespace

MappedBar::MappedBar(MappedBar&& other) noexcept { *this = std::move(other); }

MappedBar& MappedBar::operator=(MappedBar&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) munmap(base_, size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedBar::~MappedBar() {
  if (base_ != nullptr) munmap(base_, size_);
}

PciFunction::PciFunction(std::string bdf, std::string sysfs_root)
    : bdf_(std::move(bdf)), sysfs_root_(std::move(sysfs_root)) {}

std::string PciFunction::Path(const std::string& file) const {
  return absl::StrCat(sysfs_root_, "/bus/pci/devices/", bdf_, file.empty() ? "" : "/", file);
}

absl::StatusOr<std::string> PciFunction::VendorDevice() const {
  absl::StatusOr<std::string> vendor = ReadFile(Path("vendor"));
  if (!vendor.ok()) return vendor.status();
  absl::StatusOr<std::string> device = ReadFile(Path("device"));
  if (!device.ok()) return device.status();
  return absl::StrCat(*vendor, ":", *device);
}

absl::StatusOr<std::string> PciFunction::Driver() const {
  char target[512];
  const ssize_t n = readlink(Path("driver").c_str(), target, sizeof target - 1);
  if (n < 0) {
    if (errno == ENOENT && access(Path("").c_str(), F_OK) == 0) return std::string();
    return ErrnoError(absl::StrCat("PCI function ", bdf_, ": driver link"), errno);
  }
  target[n] = '\0';
  const char* slash = std::strrchr(target, '/');
  return std::string(slash == nullptr ? target : slash + 1);
}

absl::StatusOr<bool> PciFunction::IsNvme() const {
  absl::StatusOr<std::string> cls = ReadFile(Path("class"));
  if (!cls.ok()) return cls.status();
  return *cls == "0x010802";
}

absl::Status PciFunction::BindDriver(const std::string& driver, int timeout_ms) {
  absl::StatusOr<std::string> current = Driver();
  if (!current.ok()) return current.status();
  if (*current == driver) return absl::OkStatus();
  const std::string driver_dir = absl::StrCat(sysfs_root_, "/bus/pci/drivers/", driver);
  if (access(driver_dir.c_str(), F_OK) != 0) {
    return absl::NotFoundError(
        absl::StrFormat("bind %s to %s: the driver is not loaded (%s)", bdf_, driver, driver_dir));
  }
  if (!current->empty()) {
    if (absl::Status st = WriteFile(Path("driver/unbind"), bdf_); !st.ok()) return st;
  }
  // driver_override names the one driver that may take the function, whatever its IDs.
  if (absl::Status st = WriteFile(Path("driver_override"), driver); !st.ok()) return st;
  // A refusal shows as "not bound" below, with what is bound instead.
  (void)WriteFile(absl::StrCat(sysfs_root_, "/bus/pci/drivers_probe"), bdf_);
  for (int waited = 0;; waited += 10) {
    current = Driver();
    if (current.ok() && *current == driver) return absl::OkStatus();
    if (waited >= timeout_ms) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return absl::InternalError(absl::StrFormat(
      "bind %s to %s: not bound after %d ms (bound: %s)", bdf_, driver, timeout_ms,
      current.ok() ? (current->empty() ? "nothing" : *current) : current.status().ToString()));
}

absl::Status PciFunction::EnableBusMaster() {
  const std::string path = Path("config");
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat("open ", path), errno);
  uint16_t command = 0;
  absl::Status st;
  if (pread(fd, &command, sizeof command, kConfigCommand) != sizeof command) {
    st = ErrnoError(absl::StrCat("read COMMAND from ", path), errno);
  } else {
    command |= kCommandMemory | kCommandBusMaster;
    uint16_t check = 0;
    if (pwrite(fd, &command, sizeof command, kConfigCommand) != sizeof command) {
      st = ErrnoError(absl::StrCat("write COMMAND to ", path), errno);
    } else if (pread(fd, &check, sizeof check, kConfigCommand) != sizeof check ||
               (check & kCommandBusMaster) == 0) {
      st = absl::InternalError(
          absl::StrFormat("%s: bus mastering did not turn on (COMMAND 0x%04x)", bdf_, check));
    }
  }
  close(fd);
  return st;
}

absl::StatusOr<MappedBar> PciFunction::MapBar0() {
  absl::StatusOr<std::string> driver = Driver();
  if (!driver.ok()) return driver.status();
  if (!driver->empty() && *driver != "uio_pci_generic") {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is bound to %s: hand it to uio_pci_generic first (BindDriver)", bdf_, *driver));
  }
  const std::string path = Path("resource0");
  const int fd = open(path.c_str(), O_RDWR | O_SYNC | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat("open ", path), errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size <= 0) {
    const int err = errno;
    close(fd);
    return ErrnoError(absl::StrCat("size of ", path), err ? err : EINVAL);
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* base = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (base == MAP_FAILED) return ErrnoError(absl::StrCat("mmap ", path), err);
  return MappedBar(base, size);
}

}  // namespace nvme
