#!/bin/bash
# vm-suite.sh NVME_VM_TEST HUGEMM_CLI|-
# Inside the VM (--nvme, 2M and 1G pools, /dev/dax0.0), in one boot: the driver's gtest
# binary (it takes the controller to uio_pci_generic); the pin benchmark on the
# device-DAX memory; then the controller back to the kernel's nvme driver, which must
# read the image's pattern: the driver left it in a state a kernel can take over; then
# the storage benchmark on the controller through that driver.
# HUGEMM_CLI "-" leaves the benchmarks out (the IOVA mode's boot: the physical mode's ran
# it).
set -uo pipefail
test_bin=$1
cli=$2
failed=()

echo "=== $(basename "$test_bin")"
"$test_bin" || failed+=("$(basename "$test_bin")")

if [[ $cli != - ]]; then
  echo "=== hugemm bench pin -f $HUGEMM_TEST_DAX -m 64"
  if out=$("$cli" bench pin -f "$HUGEMM_TEST_DAX" -m 64 -r 2 --json) &&
    grep -q '"backing": "devdax"' <<<"$out"; then
    echo "$out"
  else
    echo "$out"
    failed+=("bench pin -f")
  fi
fi

echo "=== $HUGEMM_TEST_NVME_BDF back to nvme"
if block=$("$HUGEMM_TEST_PCI_BIND" "$HUGEMM_TEST_NVME_BDF" nvme) &&
  cmp -n $((64 << 20)) -- "$block" "$HUGEMM_TEST_NVME_IMAGE"; then
  echo "$block reads the image's 64 MiB pattern"
else
  failed+=("back to nvme")
  block=
fi

# The storage benchmark against the controller itself, with the kernel's nvme driver:
# reads only, so the image stays what the host checks.
if [[ $cli != - && -n $block ]]; then
  echo "=== hugemm bench io --file $block"
  if out=$("$cli" bench io --file "$block" --rw randread --bs 4K,128K --qd 1,16 \
    --candidates plain,fixed,fixed+pins --seconds 0.5 --json) &&
    (($(grep -c '"iops"' <<<"$out") == 12)) && ! grep -q '"skipped"' <<<"$out"; then
    echo "$out"
  else
    echo "$out"
    failed+=("bench io --file $block")
  fi
fi

if ((${#failed[@]})); then
  echo "nvme VM suite: FAILED in ${failed[*]}"
  exit 1
fi
echo "nvme VM suite: all passed"
