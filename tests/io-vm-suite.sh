#!/bin/bash
# io-vm-suite.sh IO_TEST HUGEMM_CLI
# Storage in the VM, one boot: device-DAX buffers as io_uring fixed buffers with per-I/O
# pins, data verified (IO_TEST's *RealDevDax* tests, against $HUGEMM_TEST_NULL_BLK), with
# the rest of IO_TEST on this kernel (6.12 clones whole tables only), then
# `hugemm bench io` against the memory-backed null_blk disk, where no device time hides
# the CPU each candidate spends. Fails if a test fails, the bench fails, or a candidate
# that can run here did not.
set -uo pipefail
io_test=$1
cli=$2
failed=()
[[ -b ${HUGEMM_TEST_NULL_BLK:-} ]] || { echo "no null_blk disk (HUGEMM_TEST_NULL_BLK)"; exit 1; }

echo "=== $(basename "$io_test") (device-DAX and hugetlb buffers, $HUGEMM_TEST_NULL_BLK, kernel $(uname -r))"
# All but the 2 GiB buffer of 1G pages, which this VM has no room for (the host runs it).
"$io_test" --gtest_filter='-*ABufferOfTwoGib*' || failed+=("$(basename "$io_test")")
# The device-DAX tests skip without a device: here they must have run.
if "$io_test" --gtest_filter='*RealDevDax*' 2>&1 | grep -q '\[  SKIPPED \]'; then
  failed+=("device-DAX I/O tests skipped")
fi

seconds=${HUGEMM_VM_BENCH_SECONDS:-1}
echo "=== hugemm bench io --file $HUGEMM_TEST_NULL_BLK (null_blk, ${seconds}s per candidate)"
if out=$("$cli" bench io --file "$HUGEMM_TEST_NULL_BLK" --write-existing --size 256M \
  --seconds "$seconds" --json); then
  echo "$out"
  # Every candidate ran on every job (fio only where it is installed).
  candidates='["plain","fixed","fixed+pins"]'
  command -v fio >/dev/null && candidates='["plain","fixed","fixed+pins","fio"]'
  if ! jq -e --argjson c "$candidates" \
    '(.jobs | length) == 8 and all(.jobs[]; . as $j | all($c[]; $j.candidates[.].iops > 0))' \
    <<<"$out" >/dev/null; then
    failed+=("bench io: a candidate did not run")
  fi
  # The ratios, one line per job, for the log.
  jq -r '.jobs[] | "\(.rw) \(.bs/1024)K qd\(.qd): \(.ratios | to_entries | map("\(.key) \(.value * 1000 | round / 1000)") | join(", "))"' <<<"$out"
else
  echo "$out"
  failed+=("bench io")
fi

if ((${#failed[@]})); then
  echo "storage VM suite: FAILED in ${failed[*]}"
  exit 1
fi
echo "storage VM suite: all passed"
