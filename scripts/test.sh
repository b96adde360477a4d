#!/usr/bin/env bash
# Everything CI checks, from a fresh Debian 12 machine: packages, huge pages, builds in
# three flavours (Release, Debug+ASan+UBSan, TSan), formatting, every test in each
# flavour, the device-DAX tests in a VM (Release), and the README's install and link
# steps (check-install.sh: a fresh prefix, then the Debian packages).
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
  exclude=()
  # The VM runs once, with the Release binaries: emulated CPUs make sanitizers too slow.
  [ "$flavour" != release ] && exclude=(-LE vm)
  if ! (cd "build/$flavour" && ctest --output-on-failure "${exclude[@]}"); then
    failed+=("$flavour")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  die "tests failed in: ${failed[*]}"
fi
say "all tests passed in release, asan and tsan"
"$HUGEMM_ROOT/scripts/check-install.sh"
