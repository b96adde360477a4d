#!/usr/bin/env bash
# labels_check.sh BUILD_DIR: the gtest tests carry their labels (the TSan run selects its
# tests by one, ctest -L threads): a test that starts threads is listed under "threads",
# and a test with several labels under each of them.
set -euo pipefail
cd "$1"
# listed LABEL TEST: whether ctest -L LABEL lists TEST (a test name, up to its comment).
listed() {
  local tests
  tests=$(ctest -N -L "^$1\$")
  grep -qF ": $2" <<<"$tests" || { echo "ctest -L $1 does not list $2" >&2; return 1; }
}
listed threads Runtime.BuffersComeAndGoOnManyThreadsAtOnce
listed api Handlers/SignalsTest.MapPinTranslateFree/NoSaRestart
listed io Handlers/SignalsTest.MapPinTranslateFree/NoSaRestart
echo "labels reach the discovered tests"
