#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "hugemm/alloc.h"
#include "hugemm/system_info.h"
#include "runtime/cli/command.h"
#include "runtime/util/json.h"

namespace hugemm::cli {

namespace {

struct MetaRow {
  const char* name;
  size_t folio;
  size_t page;
};
constexpr MetaRow kMetaRows[] = {{"4K", kPageSize4K, kPageSize2M},
                                 {"2M", kPageSize2M, kPageSize2M},
                                 {"1G", kPageSize1G, kPageSize1G}};

// Where folio descriptors live and what they cost, beside the kernel's struct pages.
std::string FormatFolioMetadata() {
  std::string out = "\nfolio metadata\n";
  absl::StrAppendFormat(&out, "  descriptor      %d B per folio (any order)\n", sizeof(Folio));
  absl::StrAppend(&out,
                  "  placement       system memory by default; devdax and hugetlbfs pools can\n"
                  "                  carve a reserve from each extent (meta_reserve_bytes),\n"
                  "                  falling back to system memory when it is full\n");
  absl::StrAppendFormat(&out, "  %-8s %14s %14s %14s\n", "folios", "hugemm/GiB", "kernel/GiB",
                        "kernel HVO");
  for (const MetaRow& r : kMetaRows) {
    const MetadataCost c = FolioMetadataCost(r.folio, r.page);
    absl::StrAppendFormat(&out, "  %-8s %14s %14s %14s\n", r.name, HumanBytes(c.bytes_per_gib),
                          HumanBytes(c.kernel_bytes_per_gib),
                          HumanBytes(c.kernel_hvo_bytes_per_gib));
  }
  return out;
}

Json FolioMetadataJson() {
  Json out = Json::MakeObject();
  out.Set("descriptor_bytes", sizeof(Folio));
  out.Set("default_placement", "system");
  out.Set("reserve_capable", Json(Json::Array{Json("devdax"), Json("hugetlbfs")}));
  Json per_gib = Json::MakeObject();
  for (const MetaRow& r : kMetaRows) {
    const MetadataCost c = FolioMetadataCost(r.folio, r.page);
    Json row = Json::MakeObject();
    row.Set("hugemm", c.bytes_per_gib);
    row.Set("kernel", c.kernel_bytes_per_gib);
    row.Set("kernel_hvo", c.kernel_hvo_bytes_per_gib);
    per_gib.Set(r.name, std::move(row));
  }
  out.Set("bytes_per_gib", std::move(per_gib));
  return out;
}

int RunInfo(const Args& in) {
  Args args = in;
  const bool json = TakeFlag(&args, "--json");
  std::string root = TakeValue(&args, "--sysfs-root");
  if (int rc = RejectLeftovers("info", args)) return rc;
  absl::StatusOr<SystemInfo> info = CollectSystemInfo(root.empty() ? "/sys" : root);
  if (!info.ok()) {
    std::fprintf(stderr, "hugemm info: %s\n", std::string(info.status().message()).c_str());
    return 1;
  }
  std::string out;
  if (json) {
    absl::StatusOr<Json> root = Json::Parse(SystemInfoJson(*info));
    if (!root.ok()) {
      std::fprintf(stderr, "hugemm info: %s\n", std::string(root.status().message()).c_str());
      return 1;
    }
    root->Set("folio_metadata", FolioMetadataJson());
    out = root->Dump() + "\n";
  } else {
    out = FormatSystemInfo(*info) + FormatFolioMetadata();
  }
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

HUGEMM_REGISTER_COMMAND("info",
                        "page sizes, huge page pools per node, hugetlbfs mounts, DAX devices "
                        "[--json] [--sysfs-root DIR]",
                        RunInfo);

}  // namespace hugemm::cli
