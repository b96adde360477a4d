#!/bin/bash
# nvme-check.sh PROBE MODE...   (MODE: uio, vfio)
# Run inside the VM (booted with --nvme, and --iommu for vfio) by the vm_nvme_*
# smoke tests, wrapped by nvme-image.sh: the controller is where the harness
# says and the kernel's nvme driver owns it; the namespace holds the image's
# bytes and copies them to offset 1 MiB (the host checks that copy). Then each
# MODE hands the device to a userspace driver with $HUGEMM_TEST_PCI_BIND and back:
#   uio   uio_pci_generic: BAR0 maps through resource0 (and not while nvme owns
#         it), CAP/VS read, bus mastering on; without an IOMMU vfio-pci is refused
#   vfio  vfio-pci behind the IOMMU: /dev/vfio/N, a type-1 container with 2M
#         IOVA pages, a DMA map round trip, CAP/VS read through the region
# PROBE is the vm_probe binary.
set -euo pipefail
probe=$1
shift
bdf=${HUGEMM_TEST_NVME_BDF:?HUGEMM_TEST_NVME_BDF is not set}
bind=${HUGEMM_TEST_PCI_BIND:?HUGEMM_TEST_PCI_BIND is not set}
block=${HUGEMM_TEST_NVME_BLOCK:?HUGEMM_TEST_NVME_BLOCK is not set}
image=${HUGEMM_TEST_NVME_IMAGE:?HUGEMM_TEST_NVME_IMAGE is not set}
dev=/sys/bus/pci/devices/$bdf
fail() {
  echo "FAIL: $*"
  exit 1
}
driver() { basename -- "$(readlink -- "$dev/driver" 2>/dev/null || echo none)"; }

id=$(<"$dev/vendor"):$(<"$dev/device")
echo "$bdf: $id, driver $(driver), $block $(blockdev --getsize64 "$block") bytes"
[[ $id == 0x1b36:0x0010 ]] || fail "$bdf is $id, not qemu's NVMe controller 0x1b36:0x0010"
[[ $(driver) == nvme ]] || fail "$bdf is bound to $(driver), not nvme"
[[ $(blockdev --getsize64 "$block") == "${HUGEMM_TEST_NVME_SIZE:?}" ]] ||
  fail "$block is not HUGEMM_TEST_NVME_SIZE=$HUGEMM_TEST_NVME_SIZE bytes"
serial=$(<"$dev"/nvme/nvme*/serial)
[[ ${serial// /} == "${HUGEMM_TEST_NVME_SERIAL:?}" ]] || fail "serial '$serial' is not $HUGEMM_TEST_NVME_SERIAL"

# The host's bytes, read through the controller (the image is visible read-only
# through the shared host root), then copied to offset 1 MiB for the host to find.
image_head() { cmp -n 65536 -- "$image" "$block" >/dev/null; }
image_head || fail "the first 64 KiB of $block differ from $image"
dd if="$block" of="$block" bs=64K count=1 seek=16 iflag=direct oflag=direct status=none
sync
cmp -n 65536 -- "$block" <(dd if="$block" bs=64K skip=16 count=1 iflag=direct status=none) ||
  fail "the copy at offset 1 MiB of $block reads back different"
echo "namespace: the image's first 64 KiB read, and copied to offset 1 MiB"

back_to_nvme() {
  local out
  out=$("$bind" "$bdf" nvme) || fail "pci-bind.sh $bdf nvme failed"
  [[ $out == "$block" ]] || fail "back on nvme, the namespace is '$out', not $block"
  image_head || fail "back on nvme, $block no longer reads the image"
  echo "$bdf back on nvme ($out)"
}

uio_regs=
for mode in "$@"; do
  case $mode in
    uio)
      if "$probe" bar0 "$bdf" 2>/dev/null; then
        fail "BAR0 mapped while the kernel's nvme driver owns $bdf"
      fi
      if [[ -z ${HUGEMM_TEST_IOMMU:-} ]]; then
        if msg=$("$bind" "$bdf" vfio-pci 2>&1); then fail "vfio-pci bound $bdf without an IOMMU"; fi
        grep -q -- --iommu <<<"$msg" || fail "pci-bind.sh's refusal does not name --iommu: $msg"
        [[ $(driver) == nvme ]] || fail "a refused vfio-pci bind left $bdf on $(driver)"
        echo "vfio-pci refused without an IOMMU: $msg"
      fi
      out=$("$bind" "$bdf" uio_pci_generic) || fail "pci-bind.sh $bdf uio_pci_generic failed"
      [[ -c $out && $(driver) == uio_pci_generic ]] || fail "uio_pci_generic gave '$out'"
      [[ ! -e $block ]] || fail "$block still exists with $bdf on uio_pci_generic"
      echo "$bdf on uio_pci_generic ($out)"
      uio_regs=$("$probe" bar0 "$bdf") || fail "BAR0 did not map through resource0"
      echo "$uio_regs"
      [[ $uio_regs =~ VS=1\.[0-9]+\.[0-9]+\  && ! $uio_regs =~ MQES=0\  ]] ||
        fail "CAP/VS are not an NVMe controller's"
      setpci -s "$bdf" COMMAND=0x4:0x4
      ((0x$(setpci -s "$bdf" COMMAND) & 0x4)) || fail "bus mastering did not turn on"
      echo "bus mastering on (COMMAND=0x$(setpci -s "$bdf" COMMAND))"
      back_to_nvme
      ;;
    vfio)
      [[ ${HUGEMM_TEST_IOMMU:-} == intel ]] || fail "vfio needs the VM booted with --iommu"
      out=$("$bind" "$bdf" vfio-pci) || fail "pci-bind.sh $bdf vfio-pci failed"
      [[ -c $out && $(driver) == vfio-pci ]] || fail "vfio-pci gave '$out'"
      [[ $out == /dev/vfio/$(basename -- "$(readlink -- "$dev/iommu_group")") ]] ||
        fail "$out is not the device's IOMMU group"
      echo "$bdf on vfio-pci ($out)"
      vfio_out=$("$probe" vfio "$bdf") || fail "the VFIO steps failed"
      echo "$vfio_out"
      grep -q 'IOVA page sizes.* 2M' <<<"$vfio_out" || fail "the IOMMU offers no 2M IOVA pages"
      vfio_regs=$(grep '^nvme ' <<<"$vfio_out")
      [[ $vfio_regs =~ VS=1\.[0-9]+\.[0-9]+\  ]] || fail "CAP/VS read through VFIO are not an NVMe controller's"
      [[ -z $uio_regs || $vfio_regs == "$uio_regs" ]] ||
        fail "CAP/VS differ between resource0 ($uio_regs) and VFIO ($vfio_regs)"
      back_to_nvme
      ;;
    *) fail "unknown mode $mode" ;;
  esac
done
echo "nvme smoke OK ($*)"
