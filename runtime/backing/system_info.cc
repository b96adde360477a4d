#include "hugemm/system_info.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "runtime/sys/hugepages.h"
#include "runtime/sys/pagemap.h"
#include "runtime/util/json.h"

namespace hugemm {

bool SystemInfo::anon_fallback() const {
  for (const HugePagePool& p : pools) {
    if (p.free > 0 || p.overcommit > p.surplus) return false;
  }
  return true;
}

absl::StatusOr<SystemInfo> CollectSystemInfo(const std::string& sysfs_root, Os& os) {
  SystemInfo info;
  info.sysfs_root = sysfs_root;
  absl::StatusOr<std::vector<int>> nodes = sys::OnlineNodes(os, sysfs_root);
  if (!nodes.ok()) return nodes.status();
  info.nodes = std::move(*nodes);
  info.default_huge_page_size = sys::DefaultHugePageSize(os);
  absl::StatusOr<std::vector<size_t>> sizes = sys::HugePageSizes(os, sysfs_root);
  if (sizes.ok()) {
    for (size_t s : *sizes) {
      absl::StatusOr<HugePagePool> pool = sys::ReadHugePagePool(os, s, sysfs_root);
      if (!pool.ok()) return pool.status();
      info.pools.push_back(std::move(*pool));
    }
  }
  absl::StatusOr<std::vector<HugetlbfsMount>> mounts = sys::HugetlbfsMounts(os);
  if (mounts.ok()) info.hugetlbfs_mounts = std::move(*mounts);
  absl::StatusOr<std::vector<DaxDeviceInfo>> dax = ListDaxDevices(sysfs_root, os);
  if (dax.ok()) {
    info.dax_devices = std::move(*dax);
  } else {
    info.dax_error = std::string(dax.status().message());
  }
  info.can_read_pfns = sys::CanReadPfns(os);
  info.can_read_kpageflags = sys::ReadKpageflags(os, 0, 1).ok();
  return info;
}

std::string FormatSystemInfo(const SystemInfo& info) {
  std::string out;
  std::string sizes = PageSizeName(info.base_page_size);
  for (const HugePagePool& p : info.pools) absl::StrAppend(&sizes, " ", PageSizeName(p.page_size));
  absl::StrAppendFormat(
      &out, "page sizes      %s (default huge page %s)\n", sizes,
      info.default_huge_page_size ? PageSizeName(info.default_huge_page_size) : "none");
  absl::StrAppendFormat(&out, "NUMA nodes      %s\n", absl::StrJoin(info.nodes, " "));
  absl::StrAppend(&out, "\nhuge page pools\n");
  absl::StrAppendFormat(&out, "  %-6s %-6s %10s %10s %10s %10s\n", "size", "node", "reserved",
                        "free", "surplus", "in use");
  for (const HugePagePool& p : info.pools) {
    absl::StrAppendFormat(&out, "  %-6s %-6s %10d %10d %10d %10d\n", PageSizeName(p.page_size),
                          "all", p.nr, p.free, p.surplus, p.nr - p.free);
    for (const NodePool& n : p.nodes) {
      absl::StrAppendFormat(&out, "  %-6s %-6d %10d %10d %10d %10d\n", "", n.node, n.nr, n.free,
                            n.surplus, n.nr - n.free);
    }
  }
  absl::StrAppend(&out, "\nhugetlbfs mounts\n");
  if (info.hugetlbfs_mounts.empty()) absl::StrAppend(&out, "  none\n");
  for (const HugetlbfsMount& m : info.hugetlbfs_mounts) {
    absl::StrAppendFormat(&out, "  %-6s %s\n", PageSizeName(m.page_size), m.path);
  }
  absl::StrAppend(&out, "\ndevice-DAX devices\n");
  if (info.dax_devices.empty()) {
    absl::StrAppend(&out, "  none", info.dax_error.empty() ? "" : ": " + info.dax_error, "\n");
  }
  for (const DaxDeviceInfo& d : info.dax_devices) {
    absl::StrAppendFormat(&out, "  %-14s size %-10s align %-4s node %d\n", d.path,
                          HumanBytes(d.size), PageSizeName(d.align), d.numa_node);
  }
  absl::StrAppendFormat(&out, "\nPFNs readable   %s\n",
                        info.can_read_pfns ? "yes (pagemap)" : "no (needs CAP_SYS_ADMIN)");
  absl::StrAppendFormat(&out, "kpageflags      %s\n",
                        info.can_read_kpageflags ? "readable" : "not readable");
  if (info.anon_fallback()) {
    absl::StrAppend(&out,
                    "\nno free huge pages: hugemm falls back to 4K anonymous memory (slower);\n"
                    "reserve some with: echo 512 > /proc/sys/vm/nr_hugepages\n");
  }
  return out;
}

std::string SystemInfoJson(const SystemInfo& info) {
  Json root = Json::MakeObject();
  Json sizes = Json::MakeArray();
  sizes.Push(info.base_page_size);
  for (const HugePagePool& p : info.pools) sizes.Push(p.page_size);
  root.Set("page_sizes", std::move(sizes));
  root.Set("default_huge_page_size", info.default_huge_page_size);
  Json nodes = Json::MakeArray();
  for (int n : info.nodes) nodes.Push(n);
  root.Set("numa_nodes", std::move(nodes));
  Json pools = Json::MakeArray();
  for (const HugePagePool& p : info.pools) {
    Json pool = Json::MakeObject();
    pool.Set("page_size", p.page_size);
    pool.Set("name", PageSizeName(p.page_size));
    pool.Set("nr", p.nr);
    pool.Set("free", p.free);
    pool.Set("resv", p.resv);
    pool.Set("surplus", p.surplus);
    pool.Set("overcommit", p.overcommit);
    Json per_node = Json::MakeArray();
    for (const NodePool& n : p.nodes) {
      Json np = Json::MakeObject();
      np.Set("node", n.node);
      np.Set("nr", n.nr);
      np.Set("free", n.free);
      np.Set("surplus", n.surplus);
      per_node.Push(std::move(np));
    }
    pool.Set("nodes", std::move(per_node));
    pools.Push(std::move(pool));
  }
  root.Set("pools", std::move(pools));
  Json mounts = Json::MakeArray();
  for (const HugetlbfsMount& m : info.hugetlbfs_mounts) {
    Json mj = Json::MakeObject();
    mj.Set("path", m.path);
    mj.Set("page_size", m.page_size);
    mounts.Push(std::move(mj));
  }
  root.Set("hugetlbfs_mounts", std::move(mounts));
  Json dax = Json::MakeArray();
  for (const DaxDeviceInfo& d : info.dax_devices) {
    Json dj = Json::MakeObject();
    dj.Set("name", d.name);
    dj.Set("path", d.path);
    dj.Set("size", d.size);
    dj.Set("align", d.align);
    dj.Set("numa_node", d.numa_node);
    dax.Push(std::move(dj));
  }
  root.Set("dax_devices", std::move(dax));
  if (!info.dax_error.empty()) root.Set("dax_error", info.dax_error);
  root.Set("can_read_pfns", info.can_read_pfns);
  root.Set("can_read_kpageflags", info.can_read_kpageflags);
  root.Set("anon_fallback", info.anon_fallback());
  return root.Dump() + "\n";
}

}  // namespace hugemm
