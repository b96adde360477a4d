// The soak's run: the slots, the threads, the clock, and what must be back at the end.
#include "soak/stress.h"

#include <sys/mman.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "hugemm/os.h"
#include "hugemm/system_info.h"
#include "soak/footprint.h"
#include "soak/stress_worker.h"

namespace hugemm::soak {

using stress_internal::Shared;
using stress_internal::Slot;
using stress_internal::SlotKind;
using stress_internal::Worker;

namespace {

constexpr size_t kBufferSlots = 12;
constexpr size_t kExternalSlots = 2;
constexpr int kMaxThreads = 64;  // each writes its canary word at its own offset in a page

// The regions the soak maps itself and registers as external memory: 2M huge pages.
absl::Status MapExternal(Shared& s) {
  for (size_t i = 0; i < kExternalSlots; ++i) {
    void* p = mmap(nullptr, kPageSize2M, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("stress: no 2M huge page for an external region: ", std::strerror(errno)));
    }
    auto slot = std::make_unique<Slot>();
    slot->kind = SlotKind::kExternal;
    slot->data = static_cast<std::byte*>(p);
    slot->size = kPageSize2M;
    s.slots.push_back(std::move(slot));
  }
  return absl::OkStatus();
}

// Everything back: buffers freed, registrations gone, external regions unmapped.
void TearDown(Shared& s) {
  for (auto& slot : s.slots) {
    if (slot->kind == SlotKind::kMapped || slot->kind == SlotKind::kAllocated) {
      if (absl::Status st = s.rt.Free(slot->data); !st.ok()) s.Violation("free: " + st.ToString());
    } else if (slot->kind == SlotKind::kExternal) {
      if (slot->registered) {
        if (absl::Status st = s.rt.UnregisterExternal(slot->external_id); !st.ok()) {
          s.Violation("unregister at the end: " + st.ToString());
        }
      }
      munmap(slot->data, slot->size);
    }
    slot->kind = SlotKind::kEmpty;
  }
}

}  // namespace

absl::StatusOr<StressReport> RunStress(const StressConfig& config) {
  if (config.threads < 1 || config.threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrFormat("stress: %d threads, not 1 to %d", config.threads, kMaxThreads));
  }
  if (!(config.seconds > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("stress: ", config.seconds, " seconds"));
  }
  const ProcessFootprint before = ProcessFootprint::Now();
  StressReport report;
  {
    absl::StatusOr<std::unique_ptr<Runtime>> rt =
        Runtime::Open({.kernel_pins = config.kernel_pins});
    if (!rt.ok()) return rt.status();
    Shared shared(**rt, config);
    absl::StatusOr<SystemInfo> info = CollectSystemInfo();
    shared.pfns_known = !info.ok() || info->can_read_pfns;
    for (size_t i = 0; i < kBufferSlots; ++i) shared.slots.push_back(std::make_unique<Slot>());
    shared.buffer_slots = kBufferSlots;
    if (absl::Status st = MapExternal(shared); !st.ok()) {
      TearDown(shared);
      return st;
    }

    std::vector<std::unique_ptr<Worker>> workers;
    for (int t = 0; t < config.threads; ++t) {
      workers.push_back(std::make_unique<Worker>(shared, t));
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    absl::Status started;
    for (auto& w : workers) {
      try {
        threads.emplace_back([&w] { w->Run(); });
      } catch (const std::system_error& e) {
        // A thread the system refuses (RLIMIT_NPROC, threads-max): the run cannot be done.
        started = ErrnoStatus(e.code().value(), "stress: start a thread");
        break;
      }
    }
    if (!started.ok()) {
      shared.stop = true;
      for (std::thread& t : threads) t.join();
      TearDown(shared);
      return started;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(config.seconds));
    shared.stop = true;
    for (std::thread& t : threads) t.join();
    if (shared.out_of_memory) {
      // A worker stopped halfway through an operation, the library's or its own: what it
      // held may be half made. Nothing is torn down (the command's exit takes it all).
      for (auto& w : workers) (void)w.release();
      (void)rt->release();
      return absl::ResourceExhaustedError(
          "stress: out of memory for the run's own records (RLIMIT_AS, or the machine's): "
          "the run could not be done");
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    TearDown(shared);
    (*rt)->allocator().Shrink();
    for (const PoolStats& p : (*rt)->allocator().Stats()) {
      if (p.mapped_bytes != 0) {
        shared.Violation(absl::StrFormat("%s: %u bytes still mapped after every folio came back",
                                         p.describe, p.mapped_bytes));
      }
    }
    rt->reset();

    report.seconds = elapsed;
    report.threads = config.threads;
    for (const auto& w : workers) {
      for (const auto& [kind, n] : w->by_kind) {
        report.by_kind[kind] += n;
        report.operations += n;
      }
      for (const auto& [kind, n] : w->refusals) report.refusals[kind] += n;
      report.canaries_checked += w->canaries_checked;
      report.audits += w->audits;
    }
    report.operations_per_second = elapsed > 0 ? report.operations / elapsed : 0;
    report.violations = std::move(shared.violations);
  }
  const std::string leak = before.Diff(ProcessFootprint::Now());
  if (!leak.empty()) report.violations.push_back("after the run: " + leak);
  return report;
}

}  // namespace hugemm::soak
