#!/bin/bash
# with-image.sh RUN-IN-VM [OPTIONS] --nvme IMG [OPTIONS] -- COMMAND [ARGS...]
#
# The host side of the nvme_vm test, wrapped around the harness (its WRAPPER): before
# the boot, IMG is made afresh with the read region's pattern (nvme_image fill); after
# the VM has stopped, every write case must be at its offset in IMG, nothing else
# written (nvme_image check). $HUGEMM_NVME_IMAGE_TOOL is the nvme_image binary.
# Exits with the harness's status, or 1 when the image is not what the guest was to
# leave. $HUGEMM_NVME_IMAGE_CHECK names the check (check, or check-iova for the
# driver's IOVA mode, which writes windows of its own).
set -euo pipefail
tool=${HUGEMM_NVME_IMAGE_TOOL:?HUGEMM_NVME_IMAGE_TOOL names the nvme_image binary}
img=
prev=
for arg in "$@"; do
  [[ $arg == -- ]] && break
  [[ $prev == --nvme ]] && img=$arg
  [[ $arg == --nvme=* ]] && img=${arg#*=}
  prev=$arg
done
[[ -n $img ]] || { echo "with-image.sh: no --nvme IMG among the harness options" >&2; exit 2; }

mkdir -p -- "$(dirname -- "$img")"
rm -f -- "$img"
trap 'rm -f -- "$img"' EXIT
"$tool" fill "$img"

rc=0
"$@" || rc=$?
((rc == 0)) || exit "$rc"
"$tool" "${HUGEMM_NVME_IMAGE_CHECK:-check}" "$img"
