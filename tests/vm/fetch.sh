#!/bin/bash
# Make sure a Debian kernel is downloaded and unpacked in the cache, and print
# its version on stdout. Exits 77 ("SKIP: ...") when it cannot be had.
#
#   $VM_CACHE/debs/linux-image-*.deb        the downloaded package
#   $VM_CACHE/kernel/<version>/             dpkg-deb -x of it, with modules.dep
#   $VM_CACHE/kernel/current                the version in use (text file)
#
# The first kernel fetched stays in use until the cache is removed or
# HUGEMM_VM_KERNEL=<version> (e.g. 6.12.117+deb12-amd64) names another one:
# tests should not change kernel behind the developer's back.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

kernel_ready() { # VERSION
  [[ -f $VM_CACHE/kernel/$1/boot/vmlinuz-$1 && -f $VM_CACHE/kernel/$1/lib/modules/$1/modules.dep ]]
}

# The kernel is looked up and downloaded through package lists of the cache's own,
# not the host's: Debian publishes bookworm's 6.12 kernel in bookworm-security only, and
# a host whose sources do not name that suite (a debootstrapped root names bookworm
# alone) would otherwise boot 6.1, whose io_uring refuses to register device-DAX memory.
KAPT_DIR=$VM_CACHE/apt
KAPT=(-o "Dir::Etc::SourceList=$KAPT_DIR/sources.list" -o "Dir::Etc::SourceParts=$KAPT_DIR/none"
  -o "Dir::State::Lists=$KAPT_DIR/lists" -o "Dir::Cache=$KAPT_DIR/cache")

kernel_apt_setup() {
  local codename keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
  codename=${codename:-bookworm}
  mkdir -p "$KAPT_DIR/lists/partial" "$KAPT_DIR/cache/archives/partial" "$KAPT_DIR/none"
  {
    echo "deb [arch=amd64 signed-by=$keyring] http://deb.debian.org/debian $codename main"
    echo "deb [arch=amd64 signed-by=$keyring] http://deb.debian.org/debian-security $codename-security main"
  } >"$KAPT_DIR/sources.list"
}

# Which linux-image package to use: the newest 6.12 (bookworm's backport, a
# kernel close to the ones users run), else the distribution's default. The
# meta-packages name the newest build, so no version list is scanned. -cloud
# flavours lack 9p and rdma_rxe, so only the generic amd64 flavour is used.
pick_version() {
  local meta dep
  for meta in linux-image-6.12-amd64 linux-image-amd64; do
    dep=$(apt-cache "${KAPT[@]}" depends "$meta" 2>/dev/null |
      sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1)
    if [[ -n $dep ]]; then
      echo "$dep"
      return 0
    fi
  done
  return 1
}

main() {
  mkdir -p "$VM_CACHE/debs" "$VM_CACHE/kernel"
  local ver=${HUGEMM_VM_KERNEL:-}
  if [[ -z $ver && -f $VM_CACHE/kernel/current ]]; then
    ver=$(<"$VM_CACHE/kernel/current")
  fi
  if [[ -n $ver ]] && kernel_ready "$ver"; then
    echo "$ver" >"$VM_CACHE/kernel/current"
    echo "$ver"
    return 0
  fi

  kernel_apt_setup
  if [[ -z $ver ]]; then
    # The cache's lists are empty before their first 'apt-get update'.
    ver=$(pick_version) || { apt_quiet "${KAPT[@]}" update >"$VM_CACHE/apt.log" 2>&1 || true; ver=$(pick_version); } ||
      cannot_build "no linux-image-*-amd64 package known to apt"
  fi

  local debs deb
  debs=("$VM_CACHE/debs/linux-image-${ver}_"*.deb)
  deb=${debs[0]}
  if [[ ! -f $deb ]]; then
    log "downloading linux-image-$ver"
    if ! (cd "$VM_CACHE/debs" && apt_quiet "${KAPT[@]}" download "linux-image-$ver") >"$VM_CACHE/apt.log" 2>&1; then
      # The lists may name a build the mirror no longer has, or none yet (HUGEMM_VM_KERNEL).
      apt_quiet "${KAPT[@]}" update >>"$VM_CACHE/apt.log" 2>&1 || true
      (cd "$VM_CACHE/debs" && apt_quiet "${KAPT[@]}" download "linux-image-$ver") >>"$VM_CACHE/apt.log" 2>&1 ||
        cannot_build "cannot download linux-image-$ver (see $VM_CACHE/apt.log)"
    fi
    debs=("$VM_CACHE/debs/linux-image-${ver}_"*.deb)
    deb=${debs[0]}
    [[ -f $deb ]] || cannot_build "apt-get download left no linux-image-$ver .deb"
  fi

  log "unpacking $(basename -- "$deb")"
  local dir=$VM_CACHE/kernel/$ver
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp"
  # The package leaves modules.dep to its postinst: make it for this tree.
  depmod -b "$dir.tmp" "$ver"
  mv "$dir.tmp" "$dir"
  kernel_ready "$ver" || cannot_build "linux-image-$ver has no vmlinuz or modules"
  echo "$ver" >"$VM_CACHE/kernel/current"
  echo "$ver"
}

main "$@"
