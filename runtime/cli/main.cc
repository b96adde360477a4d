// hugemm: the command-line face of the runtime.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/cli/command.h"

namespace hugemm::cli {
namespace {

// The deepest command parsing reached ("bench" of "hugemm bench pin" is not it).
const CLI::App* Selected(const CLI::App& app) {
  const CLI::App* at = &app;
  while (!at->get_subcommands().empty()) at = at->get_subcommands().front();
  return at;
}

// "hugemm bench pin": the commands parsing reached, for messages.
std::string SelectedPath(const CLI::App& app) {
  std::string path = app.get_name();
  const CLI::App* at = &app;
  while (at != Selected(app)) {
    at = at->get_subcommands().front();
    path += " " + at->get_name();
  }
  return path;
}

// A standard stream the caller closed would be the next file opened, and output meant
// for stdout would go into it: hold each closed one with /dev/null opened read-only, so
// that writing stdout fails (EBADF) and is reported, as it would be on the closed stream.
void HoldClosedStandardStreams() {
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
      const int held = ::open("/dev/null", O_RDONLY);
      if (held >= 0 && held != fd) {
        ::dup2(held, fd);
        ::close(held);
      }
    }
  }
}

// Output that did not reach stdout (a full disk, a closed stream) fails the command: a
// script reading it must not take a cut-off result for a whole one.
int CheckStdout(const std::string& path, int rc) {
  errno = 0;
  const bool flush_failed = std::fflush(stdout) != 0;
  const int err = errno;
  if (!flush_failed && !std::ferror(stdout)) return rc;
  std::fprintf(stderr, "%s: writing standard output: %s\n", path.c_str(),
               flush_failed && err != 0 ? std::strerror(err) : "a write failed");
  return rc == kExitOk ? kExitFailed : rc;
}

int Main(int argc, char** argv) {
  HoldClosedStandardStreams();
  SetCommandLine(argc, argv);
  CLI::App app(
      "hugemm: DMA buffers on real huge pages, a shadow page table held against the "
      "kernel's, and pin/unpin at GUP-fast speed.",
      "hugemm");
  app.set_version_flag("--version", "hugemm " HUGEMM_VERSION, "Print the version and exit");
  app.footer(kExitCodesText);
  app.require_subcommand(1);
  CommandTable table;
  AddInfoCommand(table, &app);
  AddDemoCommand(table, &app);
  AddVerifyCommand(table, &app);
  AddStressCommand(table, &app);
  CLI::App* bench = table.Add(&app, "bench", "Benchmarks, each beside its baseline");
  bench->require_subcommand(1);
  AddBenchPinCommand(table, bench);
  AddBenchTranslateCommand(table, bench);
  AddBenchAllocCommand(table, bench);
  AddBenchMrCommand(table, bench);
  AddBenchIoCommand(table, bench);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help, --version
      // Rendered here and written with stdio, whose failing write CheckStdout then sees
      // with its errno: CLI11 would flush std::cout itself, and the errno would be lost.
      std::ostringstream out;
      const int rc = app.exit(e, out, std::cerr);
      std::fputs(out.str().c_str(), stdout);
      return CheckStdout(SelectedPath(app), rc);
    }
    const std::string path = SelectedPath(app);
    // "hugemm nonsense" stops at the missing command before CLI11 looks at the extra
    // word: name the word, not only what is missing.
    const std::vector<std::string> extra = Selected(app)->remaining();
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr && !extra.empty() &&
        !Selected(app)->get_subcommands({}).empty()) {
      const bool flag = extra.front().rfind('-', 0) == 0;
      std::fprintf(stderr, "%s: unknown %s \"%s\"\nRun '%s --help' for its commands.\n",
                   path.c_str(), flag ? "flag" : "command", extra.front().c_str(), path.c_str());
      return kExitUsage;
    }
    std::fprintf(stderr, "%s: %s\nRun '%s --help' for its flags.\n", path.c_str(), e.what(),
                 path.c_str());
    return kExitUsage;
  }
  const std::string path = SelectedPath(app);
  int rc = kExitFailed;
  try {
    rc = table.RunSelected();
  } catch (const std::bad_alloc&) {
    // The heap ran out (an RLIMIT_AS nearly reached): what the command held is freed on
    // the way here, so the failure can still be said, and with --json as an object.
    rc = Fail(path.substr(path.find(' ') + 1),
              absl::ResourceExhaustedError(
                  "out of memory (the heap, or the address space RLIMIT_AS allows)"));
  }
  return CheckStdout(path, rc);
}

}  // namespace
}  // namespace hugemm::cli

int main(int argc, char** argv) { return hugemm::cli::Main(argc, argv); }
