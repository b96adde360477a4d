#!/bin/bash
# devdax-suite.sh ALIGN BINARY[:GTEST_FILTER]...
# Runs each gtest binary (with its filter) against $HUGEMM_TEST_DAX, inside the device-DAX
# VM: one boot serves every layer's device-DAX tests. Fails if any binary fails.
set -uo pipefail
align=$1
shift
export HUGEMM_TEST_DAX_ALIGN=$align
failed=()
for spec in "$@"; do
  bin=${spec%%:*}
  filter='*'
  [[ $spec == *:* ]] && filter=${spec#*:}
  echo "=== $(basename "$bin") --gtest_filter=$filter (device-DAX, align $align)"
  "$bin" --gtest_filter="$filter" || failed+=("$(basename "$bin")")
done
if ((${#failed[@]})); then
  echo "device-DAX suite ($align): FAILED in ${failed[*]}"
  exit 1
fi
echo "device-DAX suite ($align): all passed"
