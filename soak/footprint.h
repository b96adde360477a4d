// What a process holds that a leak would change, read from /proc: its open descriptors,
// its mappings of huge page memory (hugemm's memfds, hugetlbfs files, anonymous huge
// pages) and the memory the kernel pins for it (VmPin, io_uring's long-term pins).
//
//   const ProcessFootprint before = ProcessFootprint::Now();
//   ... something that must leave nothing behind ...
//   std::string leak = before.Diff(ProcessFootprint::Now());  // "" when nothing changed
//
// Thread safety: a value; Now() may run on any thread, and sees whatever other threads
// hold at that moment.
#ifndef HUGEMM_SOAK_FOOTPRINT_H_
#define HUGEMM_SOAK_FOOTPRINT_H_

#include <cstdint>
#include <set>
#include <string>

namespace hugemm::soak {

struct ProcessFootprint {
  std::set<int> fds;
  std::set<std::string> huge_mappings;  // "<start>-<end> <path>" lines of /proc/self/maps
  int64_t vm_pin_kb = 0;

  // With `mappings` false the huge page mappings are not read (the costly part) and
  // stay empty.
  [[nodiscard]] static ProcessFootprint Now(bool mappings = true);
  // What `later` holds that this did not, and what it lost: "" when they are the same.
  [[nodiscard]] std::string Diff(const ProcessFootprint& later) const;
  bool operator==(const ProcessFootprint&) const = default;
};

}  // namespace hugemm::soak

#endif  // HUGEMM_SOAK_FOOTPRINT_H_
