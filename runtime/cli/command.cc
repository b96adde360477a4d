// The command table, flag value checks and output helpers every command uses.
#include "runtime/cli/command.h"

#include <cmath>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "hugemm/os.h"
#include "hugemm/page_size.h"

namespace hugemm::cli {

namespace {
std::string& CommandLineStorage() {
  static auto* line = new std::string("hugemm");
  return *line;
}

// Whether the command that runs was given --json: Fail then prints FailureJson too.
bool& JsonOnFailure() {
  static bool json = false;
  return json;
}
}  // namespace

CLI::App* CommandTable::Add(CLI::App* parent, const std::string& name, const std::string& summary,
                            Run run) {
  CLI::App* sub = parent->add_subcommand(name, summary);
  sub->footer(kExitCodesText);
  commands_.push_back({.app = sub, .run = std::move(run)});
  return sub;
}

CLI::Option* CommandTable::AddJsonFlag(CLI::App* command, bool& json, const std::string& help) {
  for (Command& c : commands_) {
    if (c.app == command) c.json = &json;
  }
  return command->add_flag("--json", json, help);
}

int CommandTable::RunSelected() const {
  for (const Command& c : commands_) {
    if (c.run && c.app->parsed()) {
      JsonOnFailure() = c.json != nullptr && *c.json;
      return c.run();
    }
  }
  return kExitUsage;  // CLI11 requires a subcommand wherever there is no run
}

const std::string& CommandLine() { return CommandLineStorage(); }

void SetCommandLine(int argc, const char* const* argv) {
  std::string& line = CommandLineStorage();
  line = "hugemm";
  for (int i = 1; i < argc; ++i) absl::StrAppend(&line, " ", argv[i]);
}

CLI::Option* AddListOption(CLI::App* app, const std::string& name, std::vector<std::string>* out,
                           const std::string& help, std::vector<CLI::Validator> checks) {
  CLI::Option* opt = app->add_option_function<std::vector<std::string>>(
      name,
      [name, out, checks = std::move(checks)](const std::vector<std::string>& given) {
        std::vector<std::string> items;
        for (const std::string& list : given) {
          for (absl::string_view piece : absl::StrSplit(list, ',')) {
            std::string item(piece);
            if (item.empty()) {
              throw CLI::ValidationError(name, absl::StrCat("\"", list, "\" has an empty item"));
            }
            for (const CLI::Validator& check : checks) {
              if (std::string why = check(item); !why.empty())
                throw CLI::ValidationError(name, why);
            }
            items.push_back(std::move(item));
          }
        }
        *out = std::move(items);
      },
      help);
  opt->default_str(absl::StrJoin(*out, ","));
  return opt;
}

CLI::Validator IntegerIn(int64_t min, int64_t max) {
  return CLI::Validator(
      [min, max](std::string& value) -> std::string {
        int64_t v = 0;
        if (!absl::SimpleAtoi(value, &v))
          return absl::StrCat("\"", value, "\" is not a whole number");
        if (v < min || v > max) return absl::StrCat(value, " is not in ", min, "..", max);
        // CLI11 converts with base 0 afterwards ("010" as octal 8, "08" not at all):
        // hand it the decimal read here.
        value = absl::StrCat(v);
        return "";
      },
      // --help shows it after the value's name: "-j N:in [1 - 64]=1".
      absl::StrCat("in [", min, " - ", max, "]"));
}

CLI::Validator FiniteNumber() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        double v = 0;
        if (!absl::SimpleAtod(value, &v)) return absl::StrCat("\"", value, "\" is not a number");
        if (!std::isfinite(v)) return absl::StrCat(value, " is not a finite number");
        return "";
      },
      "");
}

CLI::Validator PageSizeValue() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        absl::StatusOr<size_t> size = ParsePageSize(value);
        return size.ok() ? "" : std::string(size.status().message());
      },
      "");
}

CLI::Validator NonEmpty() {
  return CLI::Validator(
      [](std::string& value) -> std::string { return value.empty() ? "an empty value" : ""; }, "");
}

absl::StatusOr<uint64_t> ParseAddress(absl::string_view text) {
  uint64_t v = 0;
  const absl::string_view t = absl::StripAsciiWhitespace(text);
  const bool ok = absl::StartsWithIgnoreCase(t, "0x") ? absl::SimpleHexAtoi(t.substr(2), &v)
                                                      : absl::SimpleAtoi(t, &v);
  if (!ok || t.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a number (decimal, or hexadecimal after 0x)"));
  }
  return v;
}

CLI::Validator AddressValue() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        absl::StatusOr<uint64_t> v = ParseAddress(value);
        return v.ok() ? "" : std::string(v.status().message());
      },
      "");
}

namespace {
void PrintMessage(absl::string_view command, const absl::Status& status) {
  std::fprintf(stderr, "hugemm %s: %s\n", std::string(command).c_str(),
               std::string(status.message()).c_str());
}
}  // namespace

Json FailureJson(const absl::Status& status) {
  Json error = {{"code", absl::StatusCodeToString(status.code())}};
  if (const int err = ErrnoOf(status); err != 0) error["errno"] = err;
  error["message"] = std::string(status.message());
  return {{"command", CommandLine()}, {"ok", false}, {"error", std::move(error)}};
}

int Fail(absl::string_view command, const absl::Status& status) {
  PrintMessage(command, status);
  if (JsonOnFailure()) PrintJson(FailureJson(status));
  return kExitFailed;
}

int Usage(absl::string_view command, const absl::Status& status) {
  PrintMessage(command, status);
  // As a parse error says it (main.cc): the flags are what to change.
  std::fprintf(stderr, "Run 'hugemm %s --help' for its flags.\n", std::string(command).c_str());
  return kExitUsage;
}

void PrintJson(const Json& json) {
  // A path or argument is bytes, not always UTF-8 (a file named in Latin-1): such a byte
  // prints as U+FFFD, where dump() would throw and end the program.
  std::printf("%s\n", json.dump(2, ' ', false, Json::error_handler_t::replace).c_str());
}

}  // namespace hugemm::cli
