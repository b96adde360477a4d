#!/bin/bash
# devdax-suite.sh ALIGN BINARY[:GTEST_FILTER]... [bench:HUGEMM_CLI]
# Runs each gtest binary (with its filter) against $HUGEMM_TEST_DAX, inside the device-DAX
# VM: one boot serves every layer's device-DAX tests. bench:PATH runs the pin benchmark on
# the device (hugemm bench pin -f) and checks its JSON. Fails if any of them fails.
set -uo pipefail
align=$1
shift
export HUGEMM_TEST_DAX_ALIGN=$align
failed=()
for spec in "$@"; do
  if [[ $spec == bench:* ]]; then
    cli=${spec#bench:}
    mib=64
    [[ $align == 1G ]] && mib=1024
    echo "=== hugemm bench pin -f $HUGEMM_TEST_DAX -m $mib (align $align)"
    if out=$("$cli" bench pin -f "$HUGEMM_TEST_DAX" -m "$mib" -r 2 --compare=kernel --json) &&
      grep -q '"backing": "devdax"' <<<"$out" && grep -q '"kernel_pin_us"' <<<"$out"; then
      echo "$out"
    else
      echo "$out"
      failed+=("bench pin -f")
    fi
    continue
  fi
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
