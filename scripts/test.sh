#!/usr/bin/env bash
# Everything CI checks, from a fresh Debian 12 machine: packages, huge pages, builds in
# three flavours (Release, Debug+ASan+UBSan, TSan), formatting, every test in Release
# and ASan and under TSan those that start threads or handle signals (label threads),
# the device-DAX tests in a VM (Release), and the README's install and link
# steps (check-install.sh: a fresh prefix, then the Debian packages), and each fuzzer for
# half a minute (HUGEMM_FUZZ_SECONDS) from its seed corpus.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

"$HUGEMM_ROOT/scripts/setup.sh" --flavours "release asan tsan"

say "format: checking with $(clang-format --version | head -1)"
cd "$HUGEMM_ROOT"
mapfile -t sources < <(git ls-files '*.h' '*.cc' '*.c')
if ! clang-format --dry-run --Werror "${sources[@]}"; then
  die "code is not clang-formatted (run: clang-format -i \$(git ls-files '*.h' '*.cc' '*.c'))"
fi

failed=()
for flavour in release asan tsan; do
  say "tests: $flavour"
  select=()
  # The VM runs once, with the Release binaries: emulated CPUs make sanitizers too slow.
  # TSan runs what it can check: the tests that start threads or handle signals.
  case $flavour in
    asan) select=(-LE vm) ;;
    tsan) select=(-L threads -LE vm) ;;
  esac
  started=$SECONDS
  if ! (cd "build/$flavour" && ctest --output-on-failure "${select[@]}"); then
    failed+=("$flavour")
  fi
  say "tests: $flavour took $(took "$started")"
done

# The fuzzers, a bounded run each from the seed corpus (fuzz/corpus/<name>, which ctest
# also replays in Release and ASan above). What they add to the corpus goes to a scratch
# directory; a crash fails CI and leaves its input in build/fuzz/artifacts.
fuzz_seconds=${HUGEMM_FUZZ_SECONDS:-30}
build fuzz
started=$SECONDS
mkdir -p build/fuzz/artifacts
for fuzzer in pgtable_fuzzer alloc_fuzzer c_api_fuzzer io_fuzzer; do
  say "fuzz: $fuzzer for ${fuzz_seconds}s"
  scratch=$(mktemp -d)
  if ! "build/fuzz/fuzz/$fuzzer" -max_total_time="$fuzz_seconds" -print_final_stats=1 \
      -artifact_prefix="build/fuzz/artifacts/$fuzzer-" "$scratch" "fuzz/corpus/$fuzzer" \
      2>"build/fuzz/$fuzzer.log"; then
    tail -40 "build/fuzz/$fuzzer.log"
    failed+=("fuzz:$fuzzer")
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec)|cov:' \
    "build/fuzz/$fuzzer.log" | tail -3 || true
  rm -rf "$scratch"
done
say "fuzz: took $(took "$started")"
if [ ${#failed[@]} -gt 0 ]; then
  die "tests failed in: ${failed[*]} (after $(took 0))"
fi
say "all tests passed in release, asan and tsan; the fuzzers found nothing"
started=$SECONDS
"$HUGEMM_ROOT/scripts/check-install.sh"
say "install: took $(took "$started"); everything: $(took 0)"
