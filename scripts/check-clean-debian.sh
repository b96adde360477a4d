#!/usr/bin/env bash
# The Debian packages on a machine that has never seen hugemm's build: bootstraps a
# minimal Debian 12 (bookworm) into a directory, installs the three packages there with
# apt (which must pull every dependency by itself), then builds examples/pin_buffer.c with
# pkg-config both ways and runs it and `hugemm info` against this machine's huge pages.
# Not part of test.sh: it downloads about 100 MB. Needs a Release build (setup.sh).
#   scripts/check-clean-debian.sh [DIR]     (default build/clean-debian; reused if present)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$HUGEMM_ROOT"

root=$(realpath -m "${1:-build/clean-debian}")
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
if [ ! -x "$root/usr/bin/apt-get" ]; then
  say "clean-debian: bootstrapping bookworm into $root"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
fi

say "clean-debian: building the packages"
(cd build/release && rm -f ./*.deb && cpack -G DEB >/dev/null)
rm -rf "$root/hugemm-check" && mkdir -p "$root/hugemm-check"
cp build/release/{libhugemm0,libhugemm-dev,hugemm-tools}_*.deb examples/pin_buffer.c \
  "$root/hugemm-check/"

mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" || true; done
  # Leave the bootstrapped system for the next run, without hugemm in it.
  chroot "$root" apt-get remove --purge -y -qq libhugemm0 libhugemm-dev hugemm-tools \
    >/dev/null 2>&1 || true
}
trap cleanup EXIT
for m in proc sys dev; do
  mount --bind "/$m" "$root/$m"
  mounts+=("$root/$m")
done

chroot "$root" bash -euo pipefail -c '
  export DEBIAN_FRONTEND=noninteractive
  cd /hugemm-check
  apt-get update -qq
  apt-get install -y -qq ./libhugemm0_*.deb ./libhugemm-dev_*.deb ./hugemm-tools_*.deb >/dev/null
  hugemm --version
  apt-get install -y -qq gcc pkg-config >/dev/null
  cc pin_buffer.c $(pkg-config --cflags --libs hugemm) -o pin_buffer_c
  cc pin_buffer.c $(pkg-config --cflags --libs hugemm-static) -o pin_buffer_c_static
  ./pin_buffer_c
  ./pin_buffer_c_static
  hugemm info >/dev/null
'
say "clean-debian: the packages install on a fresh bookworm with apt, link both ways and run"
