// hugemm: the command-line face of the runtime.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

void Usage(FILE* out, const std::vector<CommandInfo>& table, const char* prefix) {
  std::vector<CommandInfo> sorted = table;
  std::sort(sorted.begin(), sorted.end(),
            [](const CommandInfo& a, const CommandInfo& b) { return a.name < b.name; });
  std::fprintf(out, "usage: %s <command> [options]\n\ncommands:\n", prefix);
  for (const CommandInfo& c : sorted) {
    std::fprintf(out, "  %-10s %s\n", c.name.c_str(), c.summary.c_str());
  }
}

int Dispatch(const std::vector<CommandInfo>& table, const char* prefix, const Args& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    Usage(args.empty() ? stderr : stdout, table, prefix);
    return args.empty() ? 2 : 0;
  }
  for (const CommandInfo& c : table) {
    if (c.name == args[0]) return c.run(Args(args.begin() + 1, args.end()));
  }
  std::fprintf(stderr, "%s: unknown command \"%s\"\n", prefix, args[0].c_str());
  Usage(stderr, table, prefix);
  return 2;
}

int RunBench(const Args& args) { return Dispatch(Benches(), "hugemm bench", args); }

}  // namespace

std::vector<CommandInfo>& Commands() {
  static auto* table = new std::vector<CommandInfo>();
  return *table;
}

std::vector<CommandInfo>& Benches() {
  static auto* table = new std::vector<CommandInfo>();
  return *table;
}

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

HUGEMM_REGISTER_COMMAND("bench", "benchmarks: hugemm bench <name> (--help lists them)", RunBench);

}  // namespace hugemm::cli

int main(int argc, char** argv) {
  return hugemm::cli::Dispatch(hugemm::cli::Commands(), "hugemm",
                               hugemm::cli::Args(argv + 1, argv + argc));
}
