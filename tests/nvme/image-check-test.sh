#!/bin/bash
# image-check-test.sh NVME_IMAGE
# The host check of the nvme_vm test, tested without a VM: it passes on an image holding
# exactly what a right guest writes, and fails, saying where, on one never written, on
# one with a page moved by a page, and on one with a stray block.
set -euo pipefail
tool=$1
img=$(mktemp)
trap 'rm -f -- "$img"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

"$tool" fill "$img" >/dev/null
out=$("$tool" check "$img") && fail "a never-written image passed: $out"
grep -q 'zeros: never written' <<<"$out" || fail "no 'never written' in: $out"
echo "never written: caught"

"$tool" write-cases "$img"
out=$("$tool" check "$img") || fail "a rightly written image failed: $out"
echo "rightly written: passes"

# The first write case of the first setup (offset 128 MiB, one 512-byte block), one page
# off: the block moved 4096 bytes on, its own place zeroed.
block=$((128 << 20))
dd if="$img" of="$img" bs=1 count=512 skip=$block seek=$((block + 4096)) conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1 count=512 seek=$block conv=notrunc status=none
out=$("$tool" check "$img") && fail "a block moved by a page passed: $out"
grep -q 'one block' <<<"$out" || fail "the moved block is not named in: $out"
grep -q 'nothing outside the cases' <<<"$out" || fail "the stray copy is not reported in: $out"
echo "moved by a page: caught"

# The IOVA mode's windows: its own check passes, the physical mode's does not.
rm -f -- "$img"
"$tool" fill "$img" >/dev/null
"$tool" write-cases-iova "$img"
out=$("$tool" check-iova "$img") || fail "a rightly written image failed the IOVA check: $out"
out=$("$tool" check "$img") && fail "the IOVA mode's windows passed the physical check: $out"
echo "IOVA windows: their own"
echo "image check test OK"
