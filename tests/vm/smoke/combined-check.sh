#!/bin/bash
# combined-check.sh PROBE
# Run inside the VM booted with every device at once (vm_combined_smoke): each
# smoke check in turn, the same ones the single-device tests run.
set -uo pipefail
probe=$1
dir=$(dirname -- "${BASH_SOURCE[0]}")
failed=()
run() {
  echo "=== $*"
  "$@" || failed+=("$(basename -- "$1")")
}
run "$dir/devdax-check.sh" 2097152
run "$dir/nvme-check.sh" "$probe" uio vfio
run "$dir/numa-check.sh" "$probe"
run "$dir/rxe-check.sh"
run "$dir/rxe-pair-check.sh"
if ((${#failed[@]})); then
  echo "combined smoke: FAILED in ${failed[*]}"
  exit 1
fi
echo "combined smoke OK"
