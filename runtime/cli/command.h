// `hugemm <command>`: each command is a function over its arguments returning an exit
// code, defined in its own file and registered with HUGEMM_REGISTER_COMMAND. Benchmarks
// in perf/ register under `hugemm bench <name>` with HUGEMM_REGISTER_BENCH.
#ifndef HUGEMM_RUNTIME_CLI_COMMAND_H_
#define HUGEMM_RUNTIME_CLI_COMMAND_H_

#include <string>
#include <vector>

namespace hugemm::cli {

using Args = std::vector<std::string>;
using CommandFn = int (*)(const Args& args);

struct CommandInfo {
  std::string name;
  std::string summary;
  CommandFn run;
};

// Registries, filled by static registration before main().
std::vector<CommandInfo>& Commands();
std::vector<CommandInfo>& Benches();

struct Registrar {
  Registrar(std::vector<CommandInfo>& (*table)(), const char* name, const char* summary,
            CommandFn run) {
    table().push_back({name, summary, run});
  }
};

// True if `flag` is present; removes it.
bool TakeFlag(Args* args, const std::string& flag);
// The value after `flag` (or in --flag=value form); removes both. Empty if absent.
std::string TakeValue(Args* args, const std::string& flag);
// Prints "hugemm <command>: unknown argument X" and returns 2 when args is not empty.
int RejectLeftovers(const std::string& command, const Args& args);

}  // namespace hugemm::cli

#define HUGEMM_CLI_CONCAT2(a, b) a##b
#define HUGEMM_CLI_CONCAT(a, b) HUGEMM_CLI_CONCAT2(a, b)
#define HUGEMM_REGISTER_COMMAND(name, summary, fn)                              \
  static ::hugemm::cli::Registrar HUGEMM_CLI_CONCAT(hugemm_command_, __LINE__)( \
      &::hugemm::cli::Commands, name, summary, fn)
#define HUGEMM_REGISTER_BENCH(name, summary, fn)                              \
  static ::hugemm::cli::Registrar HUGEMM_CLI_CONCAT(hugemm_bench_, __LINE__)( \
      &::hugemm::cli::Benches, name, summary, fn)

#endif  // HUGEMM_RUNTIME_CLI_COMMAND_H_
