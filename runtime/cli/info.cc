#include <cstdio>

#include "hugemm/system_info.h"
#include "runtime/cli/command.h"

namespace hugemm::cli {

namespace {

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
  std::string out = json ? SystemInfoJson(*info) : FormatSystemInfo(*info);
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

HUGEMM_REGISTER_COMMAND("info",
                        "page sizes, huge page pools per node, hugetlbfs mounts, DAX devices "
                        "[--json] [--sysfs-root DIR]",
                        RunInfo);

}  // namespace hugemm::cli
