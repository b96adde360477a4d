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
    # 64 MiB at both alignments: the buffer is whole pages of the device's alignment (one
    # 1G page), the pinned range the size asked for.
    mib=64
    echo "=== hugemm bench pin -f $HUGEMM_TEST_DAX -m $mib (align $align)"
    if out=$("$cli" bench pin -f "$HUGEMM_TEST_DAX" -m "$mib" -r 2 --compare=kernel --json) &&
      grep -q '"backing": "devdax"' <<<"$out" && grep -q '"kernel_pin_us"' <<<"$out" &&
      grep -q "\"page_size\": \"$align\"" <<<"$out" && grep -q '"size_mib": 64' <<<"$out"; then
      echo "$out"
    else
      echo "$out"
      failed+=("bench pin -f")
    fi
    # A page size that is not the device's is refused, not silently replaced.
    other=1G
    [[ $align == 1G ]] && other=2M
    echo "=== hugemm bench pin -f $HUGEMM_TEST_DAX --page-size $other (align $align)"
    if out=$("$cli" bench pin -f "$HUGEMM_TEST_DAX" --page-size "$other" -m "$mib" -r 1 2>&1); then
      echo "$out"
      failed+=("bench pin -f --page-size $other")
    elif ! grep -q "has alignment $align, not $other" <<<"$out"; then
      echo "$out"
      failed+=("bench pin -f --page-size $other (message)")
    else
      echo "refused: $out"
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
