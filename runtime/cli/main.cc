// hugemm: the command-line face of the runtime.
#include <cstdio>
#include <cstring>
#include <string>

#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const Args&);
};

constexpr Command kCommands[] = {
    {"info", "page sizes, huge page pools per node, hugetlbfs mounts, DAX devices [--json]",
     RunInfo},
    {"demo", "map a 2M and a 1G page and check them against the kernel", RunDemo},
};

void Usage(FILE* out) {
  std::fprintf(out, "usage: hugemm <command> [options]\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-8s %s\n", c.name, c.summary);
}

}  // namespace

bool TakeFlag(Args* args, const std::string& flag) {
  for (auto it = args->begin(); it != args->end(); ++it) {
    if (*it == flag) {
      args->erase(it);
      return true;
    }
  }
  return false;
}

std::string TakeValue(Args* args, const std::string& flag) {
  for (auto it = args->begin(); it != args->end(); ++it) {
    if (*it == flag && it + 1 != args->end()) {
      std::string v = *(it + 1);
      args->erase(it, it + 2);
      return v;
    }
    if (it->rfind(flag + "=", 0) == 0) {
      std::string v = it->substr(flag.size() + 1);
      args->erase(it);
      return v;
    }
  }
  return "";
}

int RejectLeftovers(const std::string& command, const Args& args) {
  if (args.empty()) return 0;
  std::fprintf(stderr, "hugemm %s: unknown argument \"%s\"\n", command.c_str(), args[0].c_str());
  return 2;
}

}  // namespace hugemm::cli

int main(int argc, char** argv) {
  using hugemm::cli::kCommands;
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help") ||
      !std::strcmp(argv[1], "help")) {
    hugemm::cli::Usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) {
      return c.run(hugemm::cli::Args(argv + 2, argv + argc));
    }
  }
  std::fprintf(stderr, "hugemm: unknown command \"%s\"\n", argv[1]);
  hugemm::cli::Usage(stderr);
  return 2;
}
