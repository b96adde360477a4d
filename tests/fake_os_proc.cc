// What the fake machine's /proc and /sys say, written from the model on every read.
#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/fake_os_model.h"

namespace hugemm::testing::fake_internal {
namespace {

std::string PoolDir(size_t page_size) { return absl::StrCat("hugepages-", page_size >> 10, "kB"); }

size_t KernelPageSize(const Mapping& m) {
  if (!m.file) return 4096;
  if (m.file->dax) return m.file->device->align;
  return m.file->page_size;
}

}  // namespace

HugePagePool Model::PoolView(size_t page_size) const {
  HugePagePool view;
  view.page_size = page_size;
  for (const SizePool& p : pools) {
    if (p.page_size != page_size) continue;
    view.nr = p.per_node * machine.nodes;
    view.free = p.free_total();
    view.resv = p.resv;
    for (int n = 0; n < machine.nodes; ++n) {
      view.nodes.push_back({.node = n,
                            .nr = p.per_node,
                            .free = static_cast<int64_t>(p.free[n].size()),
                            .surplus = 0});
    }
  }
  return view;
}

std::map<std::string, std::string> Model::VirtualFiles() const {
  std::map<std::string, std::string> files;
  const size_t default_size = pools.empty() ? 0 : pools.front().page_size;
  files["/proc/meminfo"] =
      absl::StrFormat("MemTotal:       25165824 kB\nHugepagesize:   %8u kB\n", default_size >> 10);
  files["/proc/cpuinfo"] =
      "processor\t: 0\nmodel name\t: fake\nflags\t\t: fpu pse pae pge pdpe1gb lm\n";
  std::string mounts = "sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n";
  for (const FakeMachine::Mount& m : machine.mounts) {
    absl::StrAppend(&mounts, "none ", m.path, " hugetlbfs rw,relatime,pagesize=", m.page_size >> 20,
                    "M 0 0\n");
  }
  files["/proc/mounts"] = mounts;
  for (const SizePool& p : pools) {
    const HugePagePool v = PoolView(p.page_size);
    const std::string dir = "/sys/kernel/mm/hugepages/" + PoolDir(p.page_size);
    files[dir + "/nr_hugepages"] = absl::StrCat(v.nr, "\n");
    files[dir + "/free_hugepages"] = absl::StrCat(v.free, "\n");
    files[dir + "/resv_hugepages"] = absl::StrCat(v.resv, "\n");
    files[dir + "/surplus_hugepages"] = "0\n";
    files[dir + "/nr_overcommit_hugepages"] = "0\n";
    for (const NodePool& n : v.nodes) {
      const std::string ndir = absl::StrCat("/sys/devices/system/node/node", n.node, "/hugepages/",
                                            PoolDir(p.page_size));
      files[ndir + "/nr_hugepages"] = absl::StrCat(n.nr, "\n");
      files[ndir + "/free_hugepages"] = absl::StrCat(n.free, "\n");
      files[ndir + "/surplus_hugepages"] = "0\n";
    }
  }
  for (int n = 0; n < machine.nodes; ++n) {
    files[absl::StrCat("/sys/devices/system/node/node", n, "/cpulist")] = absl::StrCat(n, "\n");
  }
  for (size_t i = 0; i < machine.dax.size(); ++i) {
    const FakeMachine::DaxDevice& d = machine.dax[i];
    const std::string dir = "/sys/bus/dax/devices/" + d.name;
    files[dir + "/size"] = absl::StrCat(d.size, "\n");
    files[dir + "/align"] = absl::StrCat(d.align, "\n");
    files[dir + "/numa_node"] = absl::StrCat(d.node, "\n");
    if (!d.driver.empty()) {
      files[absl::StrCat("/sys/bus/dax/drivers/", d.driver, "/", d.name, "/uevent")] = "";
    }
    // Root only, as on a real machine.
    if (machine.root) files[dir + "/resource"] = absl::StrFormat("0x%x\n", dax_pfn[i] << 12);
  }
  return files;
}

std::string Model::Smaps() const {
  std::string out;
  for (const auto& [start, m] : maps) {
    const bool shared = (m.flags & MAP_SHARED) != 0;
    absl::StrAppendFormat(&out, "%x-%x %c%c%c%c %08x 00:00 0\n", start, start + m.length,
                          m.prot & PROT_READ ? 'r' : '-', m.prot & PROT_WRITE ? 'w' : '-',
                          m.prot & PROT_EXEC ? 'x' : '-', shared ? 's' : 'p', m.offset);
    const size_t kps = KernelPageSize(m);
    absl::StrAppendFormat(&out, "Size:           %8u kB\n", m.length >> 10);
    absl::StrAppendFormat(&out, "KernelPageSize: %8u kB\nMMUPageSize:    %8u kB\n", kps >> 10,
                          kps >> 10);
    std::string flags;
    if (m.prot & PROT_READ) flags += "rd ";
    if (m.prot & PROT_WRITE) flags += "wr ";
    if (shared) flags += "sh ";
    flags += "mr mw me ";
    if (shared) flags += "ms ";
    if (m.dontfork) flags += "dc ";
    if (m.file && !m.file->dax && m.file->page_size > 4096) flags += "ht ";
    absl::StrAppend(&out, "VmFlags: ", flags, "\n");
  }
  return out;
}

}  // namespace hugemm::testing::fake_internal
