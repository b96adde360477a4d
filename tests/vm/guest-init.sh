#!/bin/busybox sh
# /init of the guest initramfs (busybox ash, PID 1).
#
# Loads the NVDIMM/DAX/9p modules, mounts the host's / (read-only 9p) under a
# tmpfs overlay so the chroot is writable but the host is never touched, turns
# the emulated NVDIMM into a device-DAX namespace, optionally brings up
# soft-RoCE, then runs the job script written by run-in-vm.sh inside the
# chroot. The job's output and exit status go to the writable 9p share, which
# is mounted at the same path as on the host. Then it powers the VM off.
#
# Kernel command line parameters (set by run-in-vm.sh):
#   hugemm.align=2M|1G   namespace alignment
#   hugemm.rxe=0|1       load rdma_rxe and add rxe0 on lo
#   hugemm.share=PATH    host path of the results share (no spaces)
#   hugemm.rw=PATH       host directory shared read-write at the same path

/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

say() { echo "hugemm-vm[$(cut -d' ' -f1 /proc/uptime)s]: $*"; }

SHARE_DIR=
NEWROOT=/newroot

# Setup failed: tell the host (a marker on the console, a file in the share if
# it is mounted) and power off. The host turns this into a FAIL.
die() {
  echo "HUGEMM-VM-SETUP-FAILED: $*"
  if [ -n "$SHARE_DIR" ] && [ -d "$NEWROOT$SHARE_DIR" ]; then
    echo "$*" >"$NEWROOT$SHARE_DIR/setup-failed"
  fi
  sync
  poweroff -f
  sleep 60
}

ALIGN=2M
RXE=0
RW_DIR=
# shellcheck disable=SC2013 # the command line is words
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    hugemm.align=*) ALIGN=${arg#*=} ;;
    hugemm.rxe=*) RXE=${arg#*=} ;;
    hugemm.share=*) SHARE_DIR=${arg#*=} ;;
    hugemm.rw=*) RW_DIR=${arg#*=} ;;
  esac
done
[ -n "$SHARE_DIR" ] || die "no hugemm.share= on the kernel command line"

KVER=$(uname -r)
load_modules() { # LIST-FILE: one module path (relative to the module dir) a line, in load order
  while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$KVER/$m" || die "insmod $m failed"
  done <"$1"
}
load_modules /etc/hugemm/base.modules
say "modules loaded"

# --- root: host / read-only over 9p, under a writable tmpfs overlay ----------
P9="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /mnt/lower /mnt/rw "$NEWROOT"
mount -t 9p -o "$P9,ro,cache=loose" hostroot /mnt/lower || die "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
if ! mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay "$NEWROOT"; then
  # Without overlayfs the chroot is read-only except for the tmpfs mounts below.
  say "overlayfs failed: the chroot is read-only apart from /tmp, /run and the share"
  mount --bind /mnt/lower "$NEWROOT"
  mount -t tmpfs -o mode=1777 tmp "$NEWROOT/tmp"
fi
mount -t 9p -o "$P9,cache=none" results "$NEWROOT$SHARE_DIR" || die "cannot mount the results share at $SHARE_DIR"
if [ -n "$RW_DIR" ]; then
  mount -t 9p -o "$P9,cache=none" rw "$NEWROOT$RW_DIR" || die "cannot mount --rw $RW_DIR"
fi

mount -t proc proc "$NEWROOT/proc"
mount -t sysfs sysfs "$NEWROOT/sys"
mount -t devtmpfs devtmpfs "$NEWROOT/dev"
mkdir -p "$NEWROOT/dev/pts" "$NEWROOT/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$NEWROOT/dev/pts"
mount -t tmpfs -o mode=1777 shm "$NEWROOT/dev/shm"
mount -t tmpfs -o mode=0755 run "$NEWROOT/run"
# The host's /lib/modules has no modules for this kernel: show the guest's, so
# modprobe/libkmod (which ndctl uses) inside the chroot see the loaded ones.
if mkdir -p "$NEWROOT/lib/modules/$KVER" 2>/dev/null; then
  mount --bind "/lib/modules/$KVER" "$NEWROOT/lib/modules/$KVER"
fi
in_root() { chroot "$NEWROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# --- the device-DAX namespace --------------------------------------------------
# The NVDIMM has no label area, so it shows up as one raw namespace0.0 that
# is reconfigured in place.
in_root ndctl create-namespace -f -e namespace0.0 -m devdax -a "$ALIGN" ||
  die "ndctl create-namespace -m devdax -a $ALIGN failed"
i=0
while [ ! -c "$NEWROOT/dev/dax0.0" ]; do
  i=$((i + 1))
  [ $i -le 100 ] || die "/dev/dax0.0 did not appear"
  sleep 0.1
done
say "/dev/dax0.0 ready (align $(cat /sys/bus/dax/devices/dax0.0/align))"

# --- optional soft-RoCE on loopback ---------------------------------------------
if [ "$RXE" = 1 ]; then
  load_modules /etc/hugemm/rxe.modules
  in_root ip link set lo up || die "ip link set lo up failed"
  in_root rdma link add rxe0 type rxe netdev lo || die "rdma link add rxe0 failed"
  say "rxe0 ready"
fi

# --- the job ---------------------------------------------------------------------
say "running the command"
chroot "$NEWROOT" /usr/bin/env -i /bin/bash "$SHARE_DIR/job.sh" \
  </dev/null >"$NEWROOT$SHARE_DIR/output" 2>&1
rc=$?
echo "$rc" >"$NEWROOT$SHARE_DIR/rc"
say "command exited with status $rc"
echo "HUGEMM-VM-EXIT-STATUS: $rc"
sync
umount "$NEWROOT$SHARE_DIR" 2>/dev/null
poweroff -f
sleep 60
