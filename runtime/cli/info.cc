// `hugemm info`: what this machine offers hugemm, as a table or as JSON (the keys are
// listed in the README), and what folio descriptors cost beside the kernel's.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "hugemm/alloc.h"
#include "hugemm/system_info.h"
#include "runtime/cli/command.h"
#include "runtime/util/format.h"

namespace hugemm::cli {
namespace {

std::string InfoText(const SystemInfo& info) {
  std::string out;
  std::string sizes = PageSizeName(info.base_page_size);
  for (const HugePagePool& p : info.pools) absl::StrAppend(&sizes, " ", PageSizeName(p.page_size));
  AppendFormat(&out, "page sizes      %s (default huge page %s)\n", sizes,
               info.default_huge_page_size ? PageSizeName(info.default_huge_page_size) : "none");
  AppendFormat(&out, "NUMA nodes      %s\n", absl::StrJoin(info.nodes, " "));
  absl::StrAppend(&out, "\nhuge page pools\n");
  // "pages" is the pool (nr_hugepages); "promised" the kernel's HugePages_Rsvd, pages
  // mappings were promised and have not faulted in (known for the whole pool only).
  AppendFormat(&out, "  %-6s %-6s %10s %10s %10s %10s %10s\n", "size", "node", "pages", "free",
               "promised", "surplus", "in use");
  for (const HugePagePool& p : info.pools) {
    AppendFormat(&out, "  %-6s %-6s %10d %10d %10d %10d %10d\n", PageSizeName(p.page_size), "all",
                 p.nr, p.free, p.resv, p.surplus, p.nr - p.free);
    for (const NodePool& n : p.nodes) {
      AppendFormat(&out, "  %-6s %-6d %10d %10d %10s %10d %10d\n", "", n.node, n.nr, n.free, "-",
                   n.surplus, n.nr - n.free);
    }
  }
  absl::StrAppend(&out, "\nhugetlbfs mounts\n");
  if (info.hugetlbfs_mounts.empty()) absl::StrAppend(&out, "  none\n");
  for (const HugetlbfsMount& m : info.hugetlbfs_mounts) {
    // The hugetlbfs backing creates its files there: say so when this user may not.
    const bool refused = ::access(m.path.c_str(), W_OK) != 0 &&
                         (errno == EACCES || errno == EPERM || errno == EROFS);
    AppendFormat(&out, "  %-6s %s%s\n", PageSizeName(m.page_size), m.path,
                 refused ? "  (not writable by this user)" : "");
  }
  absl::StrAppend(&out, "\ndevice-DAX devices\n");
  if (info.dax_devices.empty()) {
    absl::StrAppend(&out, "  none", info.dax_error.empty() ? "" : ": " + info.dax_error, "\n");
  }
  for (size_t i = 0; i < info.dax_devices.size(); ++i) {
    const DaxDeviceInfo& d = info.dax_devices[i];
    const SystemInfo::DaxUse& use = info.dax_use[i];
    AppendFormat(&out, "  %-14s size %-10s align %-4s node %-3d driver %-10s %s\n", d.path,
                 HumanBytes(d.size), PageSizeName(d.align), d.numa_node,
                 use.driver.empty() ? "none" : use.driver,
                 use.usable.ok() ? "usable" : "not usable: " + std::string(use.usable.message()));
  }
  AppendFormat(&out, "\nPFNs readable   %s\n",
               info.can_read_pfns ? "yes (pagemap)" : "no (needs CAP_SYS_ADMIN)");
  AppendFormat(&out, "kpageflags      %s\n",
               info.can_read_kpageflags ? "readable" : "not readable (root only)");
  if (info.anon_fallback()) {
    absl::StrAppend(&out,
                    "\nno free huge pages: only 4K anonymous memory (backing anon) can be mapped;\n"
                    "reserve some with: echo 512 > /proc/sys/vm/nr_hugepages\n");
  }
  return out;
}

Json InfoJson(const SystemInfo& info) {
  Json root = Json::object();
  Json sizes = Json::array({info.base_page_size});
  for (const HugePagePool& p : info.pools) sizes.push_back(p.page_size);
  root["page_sizes"] = std::move(sizes);
  root["default_huge_page_size"] = info.default_huge_page_size;
  root["numa_nodes"] = info.nodes;
  Json pools = Json::array();
  for (const HugePagePool& p : info.pools) {
    Json per_node = Json::array();
    for (const NodePool& n : p.nodes) {
      per_node.push_back(
          {{"node", n.node}, {"nr", n.nr}, {"free", n.free}, {"surplus", n.surplus}});
    }
    pools.push_back({{"page_size", p.page_size},
                     {"name", PageSizeName(p.page_size)},
                     {"nr", p.nr},
                     {"free", p.free},
                     {"resv", p.resv},
                     {"surplus", p.surplus},
                     {"overcommit", p.overcommit},
                     {"nodes", std::move(per_node)}});
  }
  root["pools"] = std::move(pools);
  Json mounts = Json::array();
  for (const HugetlbfsMount& m : info.hugetlbfs_mounts) {
    mounts.push_back({{"path", m.path}, {"page_size", m.page_size}});
  }
  root["hugetlbfs_mounts"] = std::move(mounts);
  Json dax = Json::array();
  for (size_t i = 0; i < info.dax_devices.size(); ++i) {
    const DaxDeviceInfo& d = info.dax_devices[i];
    const SystemInfo::DaxUse& use = info.dax_use[i];
    Json device = Json::object();
    device["name"] = d.name;
    device["path"] = d.path;
    device["size"] = d.size;
    device["align"] = d.align;
    device["numa_node"] = d.numa_node;
    device["driver"] = use.driver.empty() ? Json(nullptr) : Json(use.driver);
    device["usable"] = use.usable.ok();
    if (!use.usable.ok()) device["unusable_reason"] = std::string(use.usable.message());
    dax.push_back(std::move(device));
  }
  root["dax_devices"] = std::move(dax);
  if (!info.dax_error.empty()) root["dax_error"] = info.dax_error;
  root["can_read_pfns"] = info.can_read_pfns;
  root["can_read_kpageflags"] = info.can_read_kpageflags;
  root["anon_fallback"] = info.anon_fallback();
  return root;
}

struct MetaRow {
  const char* name;
  size_t folio;
  size_t page;
};
constexpr MetaRow kMetaRows[] = {{"4K", kPageSize4K, kPageSize2M},
                                 {"2M", kPageSize2M, kPageSize2M},
                                 {"1G", kPageSize1G, kPageSize1G}};

// Where folio descriptors live and what they cost, beside the kernel's struct pages.
std::string FolioMetadataText() {
  std::string out = "\nfolio metadata\n";
  AppendFormat(&out, "  descriptor      %d B per folio (any order)\n", sizeof(Folio));
  absl::StrAppend(&out,
                  "  placement       system memory by default; devdax and hugetlbfs pools can\n"
                  "                  carve a reserve from each extent (meta_reserve_bytes),\n"
                  "                  falling back to system memory when it is full\n");
  AppendFormat(&out, "  %-8s %14s %14s %14s\n", "folios", "hugemm/GiB", "kernel/GiB", "kernel HVO");
  for (const MetaRow& r : kMetaRows) {
    const MetadataCost c = *FolioMetadataCost(r.folio, r.page);  // kMetaRows: real pools
    AppendFormat(&out, "  %-8s %14s %14s %14s\n", r.name, HumanBytes(c.bytes_per_gib),
                 HumanBytes(c.kernel_bytes_per_gib), HumanBytes(c.kernel_hvo_bytes_per_gib));
  }
  return out;
}

Json FolioMetadataJson() {
  Json per_gib = Json::object();
  for (const MetaRow& r : kMetaRows) {
    const MetadataCost c = *FolioMetadataCost(r.folio, r.page);  // kMetaRows: real pools
    per_gib[r.name] = {{"hugemm", c.bytes_per_gib},
                       {"kernel", c.kernel_bytes_per_gib},
                       {"kernel_hvo", c.kernel_hvo_bytes_per_gib}};
  }
  return {{"descriptor_bytes", sizeof(Folio)},
          {"default_placement", "system"},
          {"reserve_capable", Json::array({"devdax", "hugetlbfs"})},
          {"bytes_per_gib", std::move(per_gib)}};
}

struct InfoFlags {
  bool json = false;
  std::string sysfs_root = "/sys";
};

int RunInfo(const InfoFlags& flags) {
  absl::StatusOr<SystemInfo> info = CollectSystemInfo(flags.sysfs_root);
  if (!info.ok()) return Fail("info", info.status());
  if (flags.json) {
    Json out = InfoJson(*info);
    out["folio_metadata"] = FolioMetadataJson();
    PrintJson(out);
  } else {
    std::fputs((InfoText(*info) + FolioMetadataText()).c_str(), stdout);
  }
  return kExitOk;
}

}  // namespace

void AddInfoCommand(CommandTable& table, CLI::App* app) {
  auto flags = std::make_shared<InfoFlags>();
  CLI::App* info = table.Add(
      app, "info",
      "Page sizes, huge page pools per node, hugetlbfs mounts, DAX devices, folio metadata",
      [flags] { return RunInfo(*flags); });
  table.AddJsonFlag(info, flags->json, "One JSON object (keys: see the README)");
  // A root that is not there would read as a machine without pools or devices.
  info->add_option("--sysfs-root", flags->sysfs_root, "Read sysfs from DIR (a fake tree)")
      ->check(CLI::Validator(CLI::ExistingDirectory).description(""))
      ->type_name("DIR")
      ->capture_default_str();
}

}  // namespace hugemm::cli
