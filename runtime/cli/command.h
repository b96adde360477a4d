// `hugemm <command>`: CLI11 parses the command line. Each command's file adds its
// subcommand, flags and what runs it to the CommandTable; main() parses once and runs the
// command given. The CLI owns all presentation: the library layers and perf/ return
// data, which the commands render as text or as JSON (nlohmann::ordered_json, so keys
// print in the order they were set).
//
// Exit codes, the same for every command: kExitOk, kExitFailed (a check failed or the
// run could not be done), kExitUsage (the command line was wrong).
//
// A command given --json (see CommandTable::AddJsonFlag) prints one JSON object on stdout
// also when it fails with kExitFailed through Fail: FailureJson's. A usage error prints
// nothing on stdout, --json or not: nothing ran, and parsing may stop before --json.
#ifndef HUGEMM_RUNTIME_CLI_COMMAND_H_
#define HUGEMM_RUNTIME_CLI_COMMAND_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace hugemm::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitUsage = 2;
// For --help and the man page.
inline constexpr const char* kExitCodesText =
    "Exit status: 0 ok; 1 a check failed or the run could not be done; 2 usage error "
    "(an unknown flag, a bad value).";

using Json = nlohmann::ordered_json;

// The commands, with what runs each. Not thread-safe: main() fills it, parses, runs.
class CommandTable {
 public:
  using Run = std::function<int()>;

  // Adds subcommand `name` under `parent`. `run` runs when it is the command given;
  // a command without one (`bench`) must be given a subcommand.
  CLI::App* Add(CLI::App* parent, const std::string& name, const std::string& summary,
                Run run = nullptr);
  // Adds --json to `command` (one Add made), setting `json`. When the command runs with
  // it set, Fail also prints FailureJson on stdout.
  CLI::Option* AddJsonFlag(CLI::App* command, bool& json, const std::string& help);
  // After parsing: the exit code of the command given.
  int RunSelected() const;

 private:
  struct Command {
    CLI::App* app;
    Run run;
    const bool* json = nullptr;  // its --json flag, if it has one
  };
  std::vector<Command> commands_;
};

void AddInfoCommand(CommandTable& table, CLI::App* app);
void AddDemoCommand(CommandTable& table, CLI::App* app);
void AddVerifyCommand(CommandTable& table, CLI::App* app);
void AddBenchPinCommand(CommandTable& table, CLI::App* bench);
void AddBenchTranslateCommand(CommandTable& table, CLI::App* bench);
void AddBenchAllocCommand(CommandTable& table, CLI::App* bench);
void AddStressCommand(CommandTable& table, CLI::App* app);
void AddBenchMrCommand(CommandTable& table, CLI::App* bench);
void AddBenchIoCommand(CommandTable& table, CLI::App* bench);

// "hugemm" and the arguments as given: JSON output records the command that made it.
const std::string& CommandLine();
void SetCommandLine(int argc, const char* const* argv);

// Flag value checks, run before a value is converted. Each message names the value;
// CLI11 puts the flag's name in front ("-m: \"zz\" is not a whole number").
// IntegerIn reads decimal and hands CLI11 the number it read (whose own conversion takes
// "010" as octal): give it with ->transform, not ->check, which would drop that.
CLI::Validator IntegerIn(int64_t min, int64_t max);
// A finite decimal number ("2", "0.5", "1e3"). CLI::Range lets "nan" through (no
// comparison with it is true) and calls "abc" out of range: give this one first.
CLI::Validator FiniteNumber();
CLI::Validator PageSizeValue();  // "4K", "2M", "1G", "2MB", a number of bytes
// A path or name: an empty one ("-f ''", a variable that was not set) is a bad value, not
// the flag's default.
CLI::Validator NonEmpty();
CLI::Validator AddressValue();  // decimal or 0x hexadecimal
// The value AddressValue accepts.
absl::StatusOr<uint64_t> ParseAddress(absl::string_view text);

// A flag that takes a comma-separated list, and may be given more than once (the lists
// add up; given at all, they replace the default `*out` holds). Each item goes through
// `checks` in order (validators and transforms, as ->check would run them) into `*out`.
// An empty item ("1,,2", "1,") is a bad value: CLI11's own delimiter skips it, so that a
// typo would run something else than asked.
CLI::Option* AddListOption(CLI::App* app, const std::string& name, std::vector<std::string>* out,
                           const std::string& help, std::vector<CLI::Validator> checks = {});

// Print "hugemm <command>: <message>" to stderr. Fail returns kExitFailed, and when the
// command runs with --json also prints FailureJson(status) on stdout; Usage, for a config
// the flags made that cannot run, adds "Run 'hugemm <command> --help' for its flags." as a
// parse error does, returns kExitUsage and prints nothing on stdout.
int Fail(absl::string_view command, const absl::Status& status);
int Usage(absl::string_view command, const absl::Status& status);
// What a command given --json prints when it fails (the README's "The command line"):
// {"command": CommandLine(), "ok": false, "error": {"code": "RESOURCE_EXHAUSTED",
// "errno": 12, "message": "..."}}, "code" the status code's name, "errno" only when the
// status carries one (ErrnoOf), "message" the status's message.
Json FailureJson(const absl::Status& status);
// Prints `json`, pretty, and a newline to stdout; a string that is not UTF-8 (a path
// given in another encoding) has its bad bytes printed as U+FFFD, so the output parses.
void PrintJson(const Json& json);

}  // namespace hugemm::cli

#endif  // HUGEMM_RUNTIME_CLI_COMMAND_H_
