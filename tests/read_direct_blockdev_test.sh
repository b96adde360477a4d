#!/usr/bin/env bash
# examples/read_direct.c on a block device, a loop device over a file: the size comes from
# the device (a device's st_size is 0), and the bytes read and their checksum are the
# file's. Run in the build tree: example_read_direct is $1.
set -uo pipefail
example=$1
skip() {
  if [ "${HUGEMM_REQUIRE_HUGEPAGES:-0}" = 1 ]; then
    echo "FAIL: $1"
    exit 1
  fi
  echo "SKIP: $1"
  exit 77
}
[ "$(id -u)" = 0 ] || skip "a loop device needs root"
img=$(mktemp -p "$PWD" read-direct-XXXXXX.img)
dev=""
cleanup() {
  [ -n "$dev" ] && losetup -d "$dev"
  rm -f "$img"
}
trap cleanup EXIT
head -c $((5 << 20)) /dev/urandom >"$img"
if ! dev=$(losetup --find --show "$img" 2>&1); then
  why=$dev
  dev=""
  skip "no loop device: $why"
fi
file_out=$("$example" "$img") || { echo "FAIL: the example on $img"; exit 1; }
dev_out=$("$example" "$dev") || { echo "FAIL: the example on $dev"; exit 1; }
echo "$file_out"
echo "$dev_out"
# "<path>: N bytes read ... checksum C": the same N and C from the file and the device.
if [ "${file_out#*: }" != "${dev_out#*: }" ]; then
  echo "FAIL: the device read differs from the file's"
  exit 1
fi
case "$dev_out" in
  *": $((5 << 20)) bytes read"*) ;;
  *) echo "FAIL: the device's $((5 << 20)) bytes were not all read"; exit 1 ;;
esac
