// `hugemm <command>`: each command is a function over its arguments returning an exit
// code. Commands live in their own files and register themselves in main.cc's table.
#ifndef HUGEMM_RUNTIME_CLI_COMMAND_H_
#define HUGEMM_RUNTIME_CLI_COMMAND_H_

#include <string>
#include <vector>

namespace hugemm::cli {

using Args = std::vector<std::string>;

int RunInfo(const Args& args);
int RunDemo(const Args& args);

// True if `flag` is present; removes it.
bool TakeFlag(Args* args, const std::string& flag);
// The value after `flag` (or in --flag=value form); removes both. Empty if absent.
std::string TakeValue(Args* args, const std::string& flag);
// Prints "hugemm <command>: unknown argument X" and returns 2 when args is not empty.
int RejectLeftovers(const std::string& command, const Args& args);

}  // namespace hugemm::cli

#endif  // HUGEMM_RUNTIME_CLI_COMMAND_H_
