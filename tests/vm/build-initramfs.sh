#!/bin/bash
# build-initramfs.sh KERNEL_VERSION
# Build (or reuse) the guest initramfs for an unpacked kernel in the cache and
# print its path. It holds only busybox, /init and the modules the guest loads
# before it can reach the host's root over 9p (and the soft-RoCE, NVMe, UIO and
# VFIO ones); every other tool (ndctl, daxctl, ip, rdma, setpci, numactl, the
# tests) runs from the host root.
#
# The output is named by a hash of its inputs, so it is rebuilt exactly when
# the kernel, busybox, the init script or this script change.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

KVER=$1
KDIR=$VM_CACHE/kernel/$KVER
OUT_DIR=$VM_CACHE/initramfs

# Loaded in this order (with their dependencies first) by /init.
BASE_MODULES=(virtio_pci 9pnet_virtio 9p overlay nfit nd_pmem dax_pmem device_dax)
# rdma_rxe; crc32 providers first, since rxe computes ICRCs with crc32. veth for
# the linked pair.
RXE_MODULES=(crc32_generic crc32_pclmul veth ib_uverbs rdma_rxe)
# The kernel's NVMe driver, and the two a userspace driver binds instead; vfio's
# IOMMU backend is loaded on demand by the kernel, so it is named here.
NVME_MODULES=(nvme uio_pci_generic vfio_iommu_type1 vfio-pci)
# A memory-backed disk for storage benchmarks: no device time, so CPU-bound.
BLOCK_MODULES=(null_blk)
# Missing from some kernels (built in, or renamed): not an error.
OPTIONAL_MODULES=" crc32_generic crc32_pclmul "

inputs_hash() {
  {
    echo "$KVER ${BASE_MODULES[*]} / ${RXE_MODULES[*]} / ${NVME_MODULES[*]} / ${BLOCK_MODULES[*]}"
    cat "$VM_DIR/guest-init.sh" "$VM_DIR/build-initramfs.sh" "$KDIR/lib/modules/$KVER/modules.dep"
    sha256sum </bin/busybox
  } | sha256sum | cut -c1-16
}

# Print, in load order, the module files (relative to the kernel's module dir)
# that MODULE needs, itself last. Ignores the host's modprobe.d: its install
# rules (ndctl's for libnvdimm) would hide the real dependencies.
module_files() {
  modprobe -C /dev/null -d "$KDIR" -S "$KVER" --show-depends "$1" |
    sed -n "s|^insmod $KDIR/lib/modules/$KVER/\([^ ]*\) *.*|\1|p"
}

# Copy one module into the tree decompressed: busybox insmod reads plain .ko.
install_module() { # REL-PATH TREE -> prints the path of the copy
  local rel=$1 tree=$2 dst
  dst=${rel%.xz}
  dst=${dst%.zst}
  dst=${dst%.gz}
  mkdir -p "$tree/lib/modules/$KVER/$(dirname -- "$dst")"
  case $rel in
    *.xz) xz -dc "$KDIR/lib/modules/$KVER/$rel" ;;
    *.zst) zstd -q -dc "$KDIR/lib/modules/$KVER/$rel" ;;
    *.gz) gzip -dc "$KDIR/lib/modules/$KVER/$rel" ;;
    *) cat "$KDIR/lib/modules/$KVER/$rel" ;;
  esac >"$tree/lib/modules/$KVER/$dst"
  echo "$dst"
}

# add_modules LIST-FILE MODULE... : append the modules not yet listed anywhere.
declare -A LISTED=()
add_modules() {
  local list=$1 mod files f
  shift
  for mod in "$@"; do
    files=$(module_files "$mod") || true
    if [[ -z $files ]]; then
      if modprobe -C /dev/null -d "$KDIR" -S "$KVER" --show-depends "$mod" 2>/dev/null | grep -q '^builtin'; then
        continue
      fi
      [[ $OPTIONAL_MODULES == *" $mod "* ]] && continue
      echo "FAIL: kernel $KVER has no module $mod" >&2
      exit 1
    fi
    for f in $files; do
      [[ -z ${LISTED[$f]:-} ]] || continue
      LISTED[$f]=1
      install_module "$f" "$TREE" >>"$list"
    done
  done
}

main() {
  mkdir -p "$OUT_DIR"
  local hash out
  hash=$(inputs_hash)
  out=$OUT_DIR/initramfs-$KVER-$hash.cpio.gz
  if [[ -f $out ]]; then
    echo "$out"
    return 0
  fi
  log "building $(basename -- "$out")"

  TREE=$(mktemp -d "$OUT_DIR/tree.XXXXXX")
  trap 'rm -rf "$TREE"' EXIT
  mkdir -p "$TREE"/{bin,dev,proc,sys,mnt,newroot,etc/hugemm,lib/modules/"$KVER"}
  cp /bin/busybox "$TREE/bin/busybox"
  install -m 0755 "$VM_DIR/guest-init.sh" "$TREE/init"
  # The kernel opens /dev/console for /init before anything is mounted.
  mknod -m 0600 "$TREE/dev/console" c 5 1

  : >"$TREE/etc/hugemm/base.modules"
  : >"$TREE/etc/hugemm/rxe.modules"
  : >"$TREE/etc/hugemm/nvme.modules"
  : >"$TREE/etc/hugemm/block.modules"
  add_modules "$TREE/etc/hugemm/base.modules" "${BASE_MODULES[@]}"
  add_modules "$TREE/etc/hugemm/rxe.modules" "${RXE_MODULES[@]}"
  add_modules "$TREE/etc/hugemm/nvme.modules" "${NVME_MODULES[@]}"
  add_modules "$TREE/etc/hugemm/block.modules" "${BLOCK_MODULES[@]}"
  # A modules.dep for the copies, so modprobe inside the chroot knows them.
  cp "$KDIR/lib/modules/$KVER"/modules.builtin* "$TREE/lib/modules/$KVER/"
  cat "$TREE"/etc/hugemm/{base,rxe,nvme,block}.modules >"$TREE/lib/modules/$KVER/modules.order"
  depmod -b "$TREE" "$KVER"

  (cd "$TREE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
    gzip -1 >"$out.tmp"
  mv "$out.tmp" "$out"
  # Older builds for this cache are of no further use.
  find "$OUT_DIR" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$out" -delete
  echo "$out"
}

main "$@"
