#!/bin/bash
# pci-bind.sh BDF DRIVER
#
# Inside the VM (as $HUGEMM_TEST_PCI_BIND): hand the PCI device BDF (e.g.
# 0000:00:04.0) to DRIVER and wait until what that driver offers is there:
#   nvme             the kernel's NVMe driver: prints the namespaces' block devices
#   uio_pci_generic  for a userspace driver using physical addresses: prints /dev/uioN
#   vfio-pci         for a userspace driver behind the IOMMU: prints /dev/vfio/N
#   none             unbound, and no driver may claim it: prints nothing
# The device is unbound from its current driver first (unless that is DRIVER)
# and bound through driver_override + drivers_probe, so DRIVER needs no ID table.
# Exit 0 when bound, 1 with a reason on stderr when not (e.g. vfio-pci without
# --iommu), 2 on bad usage.
set -euo pipefail

fail() {
  echo "pci-bind.sh: $*" >&2
  exit 1
}
(($# == 2)) || { sed -n '2p' "${BASH_SOURCE[0]}" | sed 's/^# /usage: /' >&2; exit 2; }
bdf=$1
want=$2
case $want in
  nvme | uio_pci_generic | vfio-pci | none) ;;
  *) echo "pci-bind.sh: DRIVER must be nvme, uio_pci_generic, vfio-pci or none" >&2; exit 2 ;;
esac
dev=/sys/bus/pci/devices/$bdf
[[ -d $dev ]] || fail "no PCI device $bdf"

driver_of() { # -> the bound driver's name, or nothing
  if [[ -L $dev/driver ]]; then basename -- "$(readlink -- "$dev/driver")"; fi
}
# wait_for TENTHS TEST...: poll until the test succeeds; fail after TENTHS/10 s.
wait_for() {
  local n=$1
  shift
  until "$@"; do
    ((--n > 0)) || return 1
    sleep 0.1
  done
}

if [[ $want == vfio-pci && ! -e $dev/iommu_group ]]; then
  fail "$bdf is in no IOMMU group: vfio-pci needs the VM booted with --iommu"
fi

current=$(driver_of)
if [[ $current != "$want" ]]; then
  if [[ -n $current ]]; then
    echo "$bdf" >"$dev/driver/unbind" || fail "cannot unbind $bdf from $current"
  fi
  # driver_override names the only driver that may take the device; "none"
  # names no driver at all, so the device stays free.
  echo "$want" >"$dev/driver_override"
  if [[ $want != none ]]; then
    [[ -d /sys/bus/pci/drivers/$want ]] || modprobe "$want" || fail "cannot load $want"
    echo "$bdf" >/sys/bus/pci/drivers_probe || true # the check below says why
    current=$(driver_of)
    [[ $current == "$want" ]] ||
      fail "$want did not bind $bdf (bound: ${current:-nothing}); kernel log: $(dmesg | tail -n 3 | tr '\n' ' ')"
  fi
fi

case $want in
  nvme)
    nvme_namespaces() { compgen -G "$dev/nvme/nvme*/nvme*n*" >/dev/null; }
    wait_for 100 nvme_namespaces || fail "nvme bound $bdf but no namespace appeared"
    for ns in "$dev"/nvme/nvme*/nvme*n*; do
      wait_for 100 test -b "/dev/${ns##*/}" || fail "/dev/${ns##*/} did not appear"
      echo "/dev/${ns##*/}"
    done
    ;;
  uio_pci_generic)
    uio_node() { compgen -G "$dev/uio/uio*" >/dev/null; }
    wait_for 100 uio_node || fail "uio_pci_generic bound $bdf but made no uio device"
    uio=$(basename -- "$(compgen -G "$dev/uio/uio*" | head -n1)")
    wait_for 100 test -c "/dev/$uio" || fail "/dev/$uio did not appear"
    echo "/dev/$uio"
    ;;
  vfio-pci)
    group=$(basename -- "$(readlink -- "$dev/iommu_group")")
    wait_for 100 test -c "/dev/vfio/$group" || fail "/dev/vfio/$group did not appear"
    echo "/dev/vfio/$group"
    ;;
esac
