// The MR cache benchmark (bench_mr.h).
#include "perf/bench_mr.h"

#include <infiniband/verbs.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "hugemm/runtime.h"
#include "hugemm/verbs.h"
#include "runtime/util/format.h"

namespace hugemm::perf {
namespace {

constexpr int kAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;

// The device and a protection domain on it, closed at the end.
struct Device {
  ibv_context* context = nullptr;
  ibv_pd* pd = nullptr;
  std::string name;
  ~Device() {
    if (pd != nullptr) ibv_dealloc_pd(pd);
    if (context != nullptr) ibv_close_device(context);
  }
};

absl::Status OpenDevice(const std::string& want, Device* out) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr || n == 0) {
    if (list != nullptr) ibv_free_device_list(list);
    return absl::FailedPreconditionError(
        "no RDMA device: this benchmark registers memory with one (libibverbs lists none; "
        "soft-RoCE gives one: modprobe rdma_rxe && rdma link add rxe0 type rxe netdev lo)");
  }
  std::string names;
  for (int i = 0; i < n && out->context == nullptr; ++i) {
    const char* name = ibv_get_device_name(list[i]);
    names += (names.empty() ? "" : ", ") + std::string(name);
    if (want.empty() || want == name) {
      out->name = name;
      out->context = ibv_open_device(list[i]);
      if (out->context == nullptr) {
        const int err = errno;
        ibv_free_device_list(list);
        return absl::FailedPreconditionError(
            Format("cannot open RDMA device %s: %s", name, std::strerror(err)));
      }
    }
  }
  ibv_free_device_list(list);
  if (out->context == nullptr) {
    return absl::FailedPreconditionError(Format("no RDMA device %s (there are: %s)", want, names));
  }
  out->pd = ibv_alloc_pd(out->context);
  if (out->pd == nullptr) {
    return absl::FailedPreconditionError(
        Format("ibv_alloc_pd on %s: %s", out->name, std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Buffer> BufferOf(Runtime& rt, size_t size) {
  if (size == kPageSize4K) return rt.Allocate(kPageSize4K, {.zero = false});
  return rt.MapBuffer(size, {.page_size = size});
}

std::string MemoryOf(size_t size) {
  if (size == kPageSize4K) return "4K folio from the 2M hugetlb pool";
  return Format("%s hugetlb page", PageSizeName(size));
}

absl::Status RunRow(Runtime& rt, const Device& dev, const MrBenchConfig& config, MrBenchRow* row) {
  absl::StatusOr<Buffer> buf = BufferOf(rt, row->size);
  if (!buf.ok()) {
    if (row->size == kPageSize1G) {
      row->skipped = Format("no 1G page: %s", buf.status().message());
      return absl::OkStatus();
    }
    return buf.status();
  }
  // Registrations of exactly the buffer, as a plain ibv_reg_mr of it.
  absl::StatusOr<std::unique_ptr<MrCache>> cache = MrCache::Create(rt, {.scope = MrScope::kBuffer});
  if (!cache.ok()) return cache.status();
  void* p = buf->data();
  const size_t len = buf->size();
  row->registrations =
      row->size >= kPageSize1G ? std::min(config.registrations, 5) : config.registrations;

  std::vector<double> reg, miss, hit;
  const int per_round = std::max(1, config.hits / kMrBenchSamples);
  // Untimed warm-up of each, then round-robin so that a noisy neighbour slows all alike.
  if (ibv_mr* mr = ibv_reg_mr(dev.pd, p, len, kAccess)) {
    ibv_dereg_mr(mr);
  } else {
    return absl::InternalError(
        Format("ibv_reg_mr of %u bytes on %s: %s", len, dev.name, std::strerror(errno)));
  }
  for (int round = 0; round < std::max(row->registrations, kMrBenchSamples); ++round) {
    if (round < row->registrations) {
      uint64_t t0 = NowNs();
      ibv_mr* mr = ibv_reg_mr(dev.pd, p, len, kAccess);
      if (mr == nullptr) return absl::InternalError("ibv_reg_mr failed mid-run");
      ibv_dereg_mr(mr);
      reg.push_back(static_cast<double>(NowNs() - t0));

      (*cache)->Flush();  // untimed: the next Get misses
      t0 = NowNs();
      absl::StatusOr<MrHandle> h = (*cache)->Get(dev.pd, p, len, kAccess);
      const uint64_t t1 = NowNs();
      if (!h.ok()) return h.status();
      miss.push_back(static_cast<double>(t1 - t0));
    }
    if (round < kMrBenchSamples) {
      { absl::StatusOr<MrHandle> warm = (*cache)->Get(dev.pd, p, len, kAccess); }
      const uint64_t t0 = NowNs();
      for (int i = 0; i < per_round; ++i) {
        absl::StatusOr<MrHandle> h = (*cache)->Get(dev.pd, p, len, kAccess);
        DoNotOptimize(h);
      }
      hit.push_back(static_cast<double>(NowNs() - t0) / per_round);
    }
  }
  const MrCacheStats s = (*cache)->Stats();
  if (s.misses != static_cast<uint64_t>(row->registrations)) {
    return absl::InternalError(
        Format("the cache missed %u times, expected %d: the hit loop did not only hit", s.misses,
               row->registrations));
  }
  row->reg_dereg_ns = Summarize(std::move(reg));
  row->miss_ns = Summarize(std::move(miss));
  row->hit_ns = Summarize(std::move(hit));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MrBenchResult> RunMrBench(const MrBenchConfig& config) {
  if (config.hits < kMrBenchSamples || config.registrations < 1) {
    return absl::InvalidArgumentError(
        Format("need at least %d hits and 1 registration per size", kMrBenchSamples));
  }
  Device dev;
  if (absl::Status st = OpenDevice(config.device, &dev); !st.ok()) return st;
  // The benchmark's buffers go to no device by PFN: no kernel pins (ibv_reg_mr takes its own).
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
  if (!rt.ok()) return rt.status();
  MrBenchResult result;
  result.device = dev.name;
  for (size_t size : {kPageSize4K, kPageSize2M, kPageSize1G}) {
    MrBenchRow row;
    row.size = size;
    row.memory = MemoryOf(size);
    if (absl::Status st = RunRow(**rt, dev, config, &row); !st.ok()) return st;
    result.rows.push_back(std::move(row));
  }
  return result;
}

}  // namespace hugemm::perf
