// devdax: a /dev/daxX.Y character device. Its memory never moves and is mapped by the
// kernel only at the device alignment, so the rules are strict: MAP_SHARED, offsets and
// lengths in whole alignment units, and extents carved from free ranges of the device.
//
// The free ranges belong to the device, not to one Backing: a program (or one Runtime)
// makes a Backing per buffer and per pool, and each would otherwise start carving at
// offset 0 and hand the same frames out twice. So every Backing of one device in this
// process (through the same Os) shares one DeviceRanges, found by the device's name.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/backing/kind.h"
#include "runtime/sys/files.h"
#include "runtime/sys/status.h"
#include "runtime/sys/unique_fd.h"

namespace hugemm::backing_internal {
namespace {

// The unmapped ranges of one device, shared by every Backing of it.
struct DeviceRanges {
  explicit DeviceRanges(uint64_t size) { free[0] = size; }
  std::mutex mu;  // std::mutex: ThreadSanitizer sees it (the system abseil is not built for it)
  std::map<uint64_t, uint64_t> free ABSL_GUARDED_BY(mu);  // offset -> length
};

// The live DeviceRanges per (Os, device name); an entry goes with its last Backing.
std::shared_ptr<DeviceRanges> RangesOf(const Os& os, const DaxDeviceInfo& info) {
  static std::mutex mu;
  static auto* live =
      new std::map<std::pair<const Os*, std::string>, std::weak_ptr<DeviceRanges>>();
  std::lock_guard<std::mutex> lock(mu);
  std::weak_ptr<DeviceRanges>& slot = (*live)[{&os, info.name}];
  std::shared_ptr<DeviceRanges> ranges = slot.lock();
  if (ranges == nullptr) {
    ranges = std::make_shared<DeviceRanges>(info.size);
    slot = ranges;
  }
  for (auto it = live->begin(); it != live->end();) {  // forget devices no Backing uses
    it = it->second.expired() ? live->erase(it) : std::next(it);
  }
  return ranges;
}

class DevDaxBacking final : public Kind {
 public:
  DevDaxBacking(DaxDeviceInfo info, sys::UniqueFd fd, Os& os)
      : Kind(BackingKind::kDevDax, info.align, os),
        info_(std::move(info)),
        fd_(std::move(fd)),
        ranges_(RangesOf(os, info_)) {}

  std::string Describe() const override {
    return absl::StrCat("devdax ", info_.path, " (align ", PageSizeName(info_.align), ", ",
                        HumanBytes(info_.size), ", node ", info_.numa_node, ")");
  }

  absl::StatusOr<Source> Prepare(const MapRequest& request) override {
    if (!request.shared) {
      return absl::InvalidArgumentError(
          absl::StrCat("device-DAX ", info_.path,
                       " can only be mapped MAP_SHARED; a private mapping is "
                       "refused"));
    }
    if (!request.name.empty()) {
      return absl::InvalidArgumentError("device-DAX memory has no file names");
    }
    absl::StatusOr<uint64_t> offset = Take(request);
    if (!offset.ok()) return offset.status();
    Source s;
    s.fd = fd_.get();
    s.offset = *offset;
    s.flags = MAP_SHARED;
    s.fixed_node = info_.numa_node;
    return s;
  }

  uint64_t PfnWithoutPagemap(uint64_t offset) const override {
    const uint64_t phys = info_.PhysicalAddress(offset);
    return phys == ~uint64_t{0} ? kUnknownPfn : phys >> kPageShift;
  }

  void Release(uint64_t offset, size_t length) override {
    std::lock_guard<std::mutex> lock(ranges_->mu);
    std::map<uint64_t, uint64_t>& unmapped = ranges_->free;
    auto [it, inserted] = unmapped.emplace(offset, length);
    if (!inserted) return;  // cannot happen: ranges are handed out once
    // Merge with the neighbours on both sides.
    if (auto next = std::next(it);
        next != unmapped.end() && it->first + it->second == next->first) {
      it->second += next->second;
      unmapped.erase(next);
    }
    if (it != unmapped.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        unmapped.erase(it);
      }
    }
  }

 private:
  // Claims [offset, offset + length) from the free ranges: the requested offset, or the
  // lowest free range that fits.
  absl::StatusOr<uint64_t> Take(const MapRequest& request) {
    const uint64_t length = request.length;
    std::lock_guard<std::mutex> lock(ranges_->mu);
    std::map<uint64_t, uint64_t>& unmapped = ranges_->free;
    if (request.offset.has_value()) {
      const uint64_t want = *request.offset;
      if (want % info_.align != 0) {
        return absl::InvalidArgumentError(absl::StrCat("offset ", want,
                                                       " is not a multiple of the device "
                                                       "alignment ",
                                                       PageSizeName(info_.align)));
      }
      if (want > info_.size || length > info_.size - want) {
        return absl::OutOfRangeError(absl::StrCat("range [", want, ", ", want + length,
                                                  ") lies beyond the device size ", info_.size));
      }
      auto it = unmapped.upper_bound(want);
      if (it == unmapped.begin() || std::prev(it)->first + std::prev(it)->second < want + length) {
        return absl::AlreadyExistsError(absl::StrCat("range [", want, ", ", want + length, ") of ",
                                                     info_.path,
                                                     " is already mapped in this process"));
      }
      --it;
      Carve(unmapped, it, want, length);
      return want;
    }
    for (auto it = unmapped.begin(); it != unmapped.end(); ++it) {
      if (it->second >= length) {
        uint64_t at = it->first;
        Carve(unmapped, it, at, length);
        return at;
      }
    }
    uint64_t largest = 0;
    for (const auto& [off, len] : unmapped) largest = std::max<uint64_t>(largest, len);
    if (length > info_.size) {
      return absl::ResourceExhaustedError(absl::StrCat(Bytes(length), " is more than ", info_.path,
                                                       " holds (", Bytes(info_.size), ")"));
    }
    // Sizes that round to the same text ("2.0 GiB" of "2.0 GiB") are given in bytes too.
    const bool exact = HumanBytes(length) == HumanBytes(largest);
    return absl::ResourceExhaustedError(
        absl::StrCat("no free range of ", exact ? Bytes(length) : HumanBytes(length), " in ",
                     info_.path, " (largest free: ", exact ? Bytes(largest) : HumanBytes(largest),
                     ", of ", Bytes(info_.size), "; the rest is mapped by this process)"));
  }

  // "2.0 GiB (2111832064 bytes)": a device's sizes are rarely round.
  static std::string Bytes(uint64_t n) {
    const std::string human = HumanBytes(n);
    if (human.find('.') == std::string::npos) return human;
    return absl::StrCat(human, " (", n, " bytes)");
  }

  static void Carve(std::map<uint64_t, uint64_t>& unmapped,
                    std::map<uint64_t, uint64_t>::iterator it, uint64_t at, uint64_t length) {
    const uint64_t start = it->first, end = it->first + it->second;
    unmapped.erase(it);
    if (start < at) unmapped[start] = at - start;
    if (at + length < end) unmapped[at + length] = end - (at + length);
  }

  const DaxDeviceInfo info_;
  sys::UniqueFd fd_;
  const std::shared_ptr<DeviceRanges> ranges_;
};

// The file opened must be the device sysfs describes: a regular file or another device
// that happens to carry its name would be mapped as device memory, its PFNs made up from
// the device's physical ranges. sysfs names the device number in <dir>/dev ("252:0");
// a tree without that file (a test's stand-in) is taken at its word.
absl::Status CheckIsTheDevice(Os& os, int fd, const DaxDeviceInfo& info,
                              const std::string& sysfs_root) {
  const std::string dev_file = absl::StrCat(sysfs_root, "/bus/dax/devices/", info.name, "/dev");
  absl::StatusOr<bool> described = sys::PathExists(os, dev_file);
  if (!described.ok()) return described.status();
  if (!*described) return absl::OkStatus();
  absl::StatusOr<std::string> text = sys::ReadTrimmed(os, dev_file);
  if (!text.ok()) return text.status();
  std::vector<absl::string_view> parts = absl::StrSplit(*text, ':');
  unsigned major_num = 0, minor_num = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &major_num) ||
      !absl::SimpleAtoi(parts[1], &minor_num)) {
    return absl::DataLossError(absl::StrCat("garbled ", dev_file, ": \"", *text, "\""));
  }
  absl::StatusOr<struct stat> st = os.Fstat(fd);
  if (!st.ok()) return st.status();
  if (!S_ISCHR(st->st_mode)) {
    return absl::NotFoundError(absl::StrCat(
        info.path, " is ", S_ISREG(st->st_mode) ? "a regular file" : "not a character device",
        ", not the device-DAX character device ", info.name, " (", *text, ")"));
  }
  if (major(st->st_rdev) != major_num || minor(st->st_rdev) != minor_num) {
    return absl::NotFoundError(absl::StrCat(info.path, " is character device ", major(st->st_rdev),
                                            ":", minor(st->st_rdev), ", not the device-DAX device ",
                                            info.name, " (", *text, ")"));
  }
  return absl::OkStatus();
}

// Why the device_dax driver does not serve a device sysfs lists (its open gave ENXIO),
// and how to give it back.
std::string WhyNotServed(const DaxDeviceInfo& info, const std::string& sysfs_root, Os& os) {
  const std::string fix = absl::StrCat("daxctl reconfigure-device --mode=devdax ", info.name);
  absl::StatusOr<std::string> driver = DaxDeviceDriver(info.name, sysfs_root, os);
  if (driver.ok() && driver->empty()) return absl::StrCat("no driver is bound to it: ", fix);
  if (driver.ok() && *driver == "kmem") {
    return absl::StrCat("it is system RAM (driver kmem): ", fix);
  }
  if (driver.ok() && *driver != "device_dax") {
    return absl::StrCat("driver ", *driver, " holds it: ", fix);
  }
  return absl::StrCat("unbound, or in system-ram mode: ", fix);  // sysfs cannot say which
}

// Opens the device the devdax backing maps, and checks it is the one sysfs describes.
absl::StatusOr<sys::UniqueFd> OpenDevice(const DaxDeviceInfo& info, const std::string& sysfs_root,
                                         Os& os) {
  absl::StatusOr<int> fd = os.Open(info.path, O_RDWR, 0);
  if (!fd.ok()) {
    if (ErrnoOf(fd.status()) == EISDIR) {
      return absl::NotFoundError(absl::StrCat(info.path,
                                              " is a directory, not the device-DAX "
                                              "character device ",
                                              info.name));
    }
    if (ErrnoOf(fd.status()) == ENXIO) {
      // sysfs still lists a device that no driver serves, e.g. one made system RAM.
      return sys::AppendToMessage(
          fd.status(), absl::StrCat(": the device_dax driver does not serve ", info.name, " (",
                                    WhyNotServed(info, sysfs_root, os), ")"));
    }
    return fd.status();
  }
  sys::UniqueFd owned(os, *fd);
  if (absl::Status st = CheckIsTheDevice(os, owned.get(), info, sysfs_root); !st.ok()) return st;
  return owned;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Kind>> NewDevDax(const BackingOptions& options, Os& os) {
  if (options.devdax_path.empty()) {
    return absl::InvalidArgumentError("devdax backing needs a device path (e.g. /dev/dax0.0)");
  }
  absl::StatusOr<DaxDeviceInfo> info = ReadDaxDevice(options.devdax_path, options.sysfs_root, os);
  if (!info.ok()) return info.status();
  info->path = options.devdax_path;
  if (options.page_size != 0 && options.page_size != info->align) {
    return absl::InvalidArgumentError(absl::StrCat(info->path, " has alignment ",
                                                   PageSizeName(info->align), ", not ",
                                                   PageSizeName(options.page_size)));
  }
  absl::StatusOr<sys::UniqueFd> fd = OpenDevice(*info, options.sysfs_root, os);
  if (!fd.ok()) return fd.status();
  return std::make_unique<DevDaxBacking>(std::move(*info), std::move(*fd), os);
}

}  // namespace hugemm::backing_internal

namespace hugemm {

absl::Status CheckDaxDeviceOpens(const DaxDeviceInfo& info, const std::string& sysfs_root, Os& os) {
  return backing_internal::OpenDevice(info, sysfs_root, os).status();
}

}  // namespace hugemm
