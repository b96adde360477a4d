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
# also replays in Release and ASan above), two at a time (one per core; each is one
# process). What they add to the corpus goes to a scratch directory; a crash fails CI
# and leaves its input in build/fuzz/artifacts.
fuzz_seconds=${HUGEMM_FUZZ_SECONDS:-30}
build fuzz
started=$SECONDS
mkdir -p build/fuzz/artifacts
# fuzz_one NAME: runs one fuzzer; its status is the fuzzer's.
fuzz_one() {
  local scratch status=0
  scratch=$(mktemp -d)
  "build/fuzz/fuzz/$1" -max_total_time="$fuzz_seconds" -print_final_stats=1 \
    -artifact_prefix="build/fuzz/artifacts/$1-" "$scratch" "fuzz/corpus/$1" \
    2>"build/fuzz/$1.log" || status=$?
  rm -rf "$scratch"
  return "$status"
}
for pair in "pgtable_fuzzer c_api_fuzzer" "alloc_fuzzer io_fuzzer"; do
  read -r first second <<<"$pair"
  say "fuzz: $first and $second for ${fuzz_seconds}s"
  fuzz_one "$first" & pid=$!
  fuzz_one "$second" && second_status=0 || second_status=$?
  wait "$pid" && first_status=0 || first_status=$?
  for fuzzer in "$first:$first_status" "$second:$second_status"; do
    name=${fuzzer%%:*}
    if [ "${fuzzer##*:}" != 0 ]; then
      tail -40 "build/fuzz/$name.log"
      failed+=("fuzz:$name")
    fi
    say "fuzz: $name: $(grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' \
      "build/fuzz/$name.log" | tr -s ' \n' ' ')"
  done
done
say "fuzz: took $(took "$started")"
if [ ${#failed[@]} -gt 0 ]; then
  die "tests failed in: ${failed[*]} (after $(took 0))"
fi
say "all tests passed in release, asan and tsan; the fuzzers found nothing"
started=$SECONDS
"$HUGEMM_ROOT/scripts/check-install.sh"
say "install: took $(took "$started"); everything: $(took 0)"
