// A VFIO container that records its mappings, over the real OS: real huge pages and
// real pins under a mapper, with no IOMMU.
#ifndef HUGEMM_TESTS_RECORDING_VFIO_H_
#define HUGEMM_TESTS_RECORDING_VFIO_H_

#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hugemm/os.h"

namespace hugemm::testing {

// A container that records mappings, over the real OS: real huge pages, real pins.
class RecordingVfio : public OsWrapper {
 public:
  RecordingVfio() : OsWrapper(Os::Default()) {}
  absl::Status VfioCheckContainer(int) override { return absl::OkStatus(); }
  // The container is a number only, kContainer: the mapper's own descriptor of it is
  // the same number, and closing it closes nothing.
  static constexpr int kContainer = 1000;
  absl::StatusOr<int> Duplicate(int fd) override {
    return fd == kContainer ? fd : OsWrapper::Duplicate(fd);
  }
  absl::Status Close(int fd) override {
    return fd == kContainer ? absl::OkStatus() : OsWrapper::Close(fd);
  }
  absl::Status VfioMapDma(int, const void* va, size_t length, uint64_t iova) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!maps_.emplace(iova, iovec{const_cast<void*>(va), length}).second) {
      return ErrnoStatus(EEXIST, "VFIO_IOMMU_MAP_DMA");
    }
    return absl::OkStatus();
  }
  absl::Status VfioUnmapDma(int, uint64_t iova, size_t length) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = maps_.find(iova);
    if (it == maps_.end() || it->second.iov_len != length) {
      return ErrnoStatus(EINVAL, "VFIO_IOMMU_UNMAP_DMA");
    }
    maps_.erase(it);
    return absl::OkStatus();
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return maps_.size();
  }

 private:
  std::mutex mu_;
  std::map<uint64_t, iovec> maps_;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_RECORDING_VFIO_H_
