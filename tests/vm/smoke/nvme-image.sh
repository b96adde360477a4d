#!/bin/bash
# nvme-image.sh RUN-IN-VM [OPTIONS] --nvme IMG [OPTIONS] -- COMMAND [ARGS...]
#
# The host side of the NVMe smoke tests, wrapped around the harness: before the
# VM boots, IMG is made afresh (sparse, --nvme-size or 64M) with 64 KiB of random
# bytes at offset 0; COMMAND (nvme-check.sh) reads them through the controller and
# copies them to offset 1 MiB; after the VM stops, the copy must be in IMG. So
# data crosses the emulated controller both ways, checked outside the guest.
# Exits with the harness's status, or 1 when the image lacks the copy.
set -euo pipefail
img=
size=64M
prev=
for arg in "$@"; do
  [[ $arg == -- ]] && break
  case $prev in --nvme) img=$arg ;; --nvme-size) size=$arg ;; esac
  case $arg in --nvme=*) img=${arg#*=} ;; --nvme-size=*) size=${arg#*=} ;; esac
  prev=$arg
done
[[ -n $img ]] || { echo "nvme-image.sh: no --nvme IMG among the harness options" >&2; exit 2; }

mkdir -p -- "$(dirname -- "$img")"
rm -f -- "$img"
truncate -s "$size" -- "$img"
head -c 65536 /dev/urandom | dd of="$img" conv=notrunc status=none
trap 'rm -f -- "$img"' EXIT

rc=0
"$@" || rc=$?
((rc == 0)) || exit "$rc"
if cmp -s <(head -c 65536 -- "$img") <(tail -c +$((1048576 + 1)) -- "$img" | head -c 65536); then
  echo "nvme image: the guest's copy is at offset 1 MiB of $img"
else
  echo "FAIL: nvme image: offset 1 MiB of $img does not hold the 64 KiB the guest was to copy there"
  exit 1
fi
