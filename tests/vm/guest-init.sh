#!/bin/busybox sh
# /init of the guest initramfs (busybox ash, PID 1).
#
# Loads the NVDIMM/DAX/9p modules, mounts the host's / (read-only 9p) under a
# tmpfs overlay so the chroot is writable but the host is never touched, turns
# the emulated NVDIMM into a device-DAX namespace, checks the huge page pools,
# NUMA nodes, NVMe controller and IOMMU it was asked for, optionally brings up
# soft-RoCE, then runs the job script written by run-in-vm.sh inside the
# chroot. The job's output and exit status go to the writable 9p share, which
# is mounted at the same path as on the host. Then it powers the VM off.
#
# Kernel command line parameters (set by run-in-vm.sh):
#   hugemm.align=2M|1G     namespace alignment
#   hugemm.share=PATH      host path of the results share (no spaces)
#   hugemm.rw=PATH         host directory shared read-write at the same path
#   hugemm.numa=N          N NUMA nodes (0: no NUMA topology)
#   hugemm.hugepages=N     2M huge pages reserved by the kernel (per node with NUMA)
#   hugemm.hugepages1g=N   1G huge pages reserved by the kernel (per node with NUMA)
#   hugemm.daxnode=N       NUMA node of the NVDIMM
#   hugemm.nvme=BDF|0      the NVMe controller's PCI address; load its drivers
#   hugemm.iommu=0|1       an Intel IOMMU must be active
#   hugemm.rxe=0|1         load rdma_rxe and add rxe0 on lo
#   hugemm.rxepair=0|1     rxe_a and rxe_b on the two ends of a veth pair
#   hugemm.nullblk=GB|0    /dev/nullb0, a memory-backed null_blk disk of GB GiB
#   hugemm.watchdog=S|0    at S seconds of uptime with the command still running, print
#                          the blocked tasks' stacks (sysrq w) to the console, which the
#                          host shows when it kills the VM at its --timeout

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
RXE_PAIR=0
RW_DIR=
NUMA=0
HUGEPAGES=0
HUGEPAGES_1G=0
DAX_NODE=0
NVME=0
IOMMU=0
NULL_BLK=0
WATCHDOG=0
# shellcheck disable=SC2013 # the command line is words
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    hugemm.align=*) ALIGN=${arg#*=} ;;
    hugemm.rxe=*) RXE=${arg#*=} ;;
    hugemm.rxepair=*) RXE_PAIR=${arg#*=} ;;
    hugemm.share=*) SHARE_DIR=${arg#*=} ;;
    hugemm.rw=*) RW_DIR=${arg#*=} ;;
    hugemm.numa=*) NUMA=${arg#*=} ;;
    hugemm.hugepages=*) HUGEPAGES=${arg#*=} ;;
    hugemm.hugepages1g=*) HUGEPAGES_1G=${arg#*=} ;;
    hugemm.daxnode=*) DAX_NODE=${arg#*=} ;;
    hugemm.nvme=*) NVME=${arg#*=} ;;
    hugemm.iommu=*) IOMMU=${arg#*=} ;;
    hugemm.nullblk=*) NULL_BLK=${arg#*=} ;;
    hugemm.watchdog=*) WATCHDOG=${arg#*=} ;;
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
# Early, so that the kernel's nvme driver probes the controller while 9p mounts.
[ "$NVME" = 0 ] || load_modules /etc/hugemm/nvme.modules
# One memory-backed disk: what is written reads back, and nothing waits on a device.
if [ "$NULL_BLK" != 0 ]; then
  while read -r m; do
    [ -n "$m" ] || continue
    case $m in
      */null_blk.ko) insmod "/lib/modules/$KVER/$m" nr_devices=1 memory_backed=1 gb="$NULL_BLK" bs=4096 ;;
      *) insmod "/lib/modules/$KVER/$m" ;;
    esac || die "insmod $m failed"
  done </etc/hugemm/block.modules
fi
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
# What udev would add: bash's process substitution needs /dev/fd.
ln -sf /proc/self/fd "$NEWROOT/dev/fd"
ln -sf /proc/self/fd/0 "$NEWROOT/dev/stdin"
ln -sf /proc/self/fd/1 "$NEWROOT/dev/stdout"
ln -sf /proc/self/fd/2 "$NEWROOT/dev/stderr"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$NEWROOT/dev/pts"
mount -t tmpfs -o mode=1777 shm "$NEWROOT/dev/shm"
mount -t tmpfs -o mode=0755 run "$NEWROOT/run"
# The host's /lib/modules has no modules for this kernel: show the guest's, so
# modprobe/libkmod (which ndctl uses) inside the chroot see the loaded ones.
if mkdir -p "$NEWROOT/lib/modules/$KVER" 2>/dev/null; then
  mount --bind "/lib/modules/$KVER" "$NEWROOT/lib/modules/$KVER"
fi
in_root() { chroot "$NEWROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
# wait_for TENTHS TEST...: poll until the test command succeeds; fail after TENTHS/10 s.
wait_for() {
  n=$1
  shift
  until "$@"; do
    n=$((n - 1))
    [ $n -gt 0 ] || return 1
    sleep 0.1
  done
}

# --- huge pages and NUMA nodes ---------------------------------------------------
# The kernel reserved the pools at boot (hugepagesz=/hugepages= on the command
# line); a short pool means --mem was too small for what was asked.
[ "$NUMA" = 0 ] || [ "$(cat /sys/devices/system/node/online)" = "0-$((NUMA - 1))" ] ||
  die "NUMA nodes online are $(cat /sys/devices/system/node/online), want 0-$((NUMA - 1))"
pool_log() { dmesg | sed -n 's/^\[[ 0-9.]*\] \(HugeTLB: allocating.*\)/\1/p' | head -n 2 | tr '\n' ' '; }
check_pool() { # KB WANT LABEL
  if [ "$NUMA" = 0 ]; then
    have=$(cat "/sys/kernel/mm/hugepages/hugepages-$1kB/nr_hugepages" 2>/dev/null || echo 0)
    [ "$have" -ge "$2" ] || die "the kernel reserved $have of $2 $3 huge pages; raise --mem. $(pool_log)"
  else
    node=0
    while [ $node -lt "$NUMA" ]; do
      have=$(cat "/sys/devices/system/node/node$node/hugepages/hugepages-$1kB/nr_hugepages" 2>/dev/null || echo 0)
      [ "$have" -ge "$2" ] || die "node $node has $have of $2 $3 huge pages; raise --mem. $(pool_log)"
      node=$((node + 1))
    done
  fi
}
check_pool 2048 "$HUGEPAGES" 2M
check_pool 1048576 "$HUGEPAGES_1G" 1G
# hugetlbfs where the host has it (the guest's devtmpfs hides the host's mounts).
mkdir -p "$NEWROOT/dev/hugepages"
mount -t hugetlbfs -o pagesize=2M hugetlbfs "$NEWROOT/dev/hugepages" || die "cannot mount hugetlbfs (2M)"
if [ -d /sys/kernel/mm/hugepages/hugepages-1048576kB ]; then
  mkdir -p "$NEWROOT/dev/hugepages1G"
  mount -t hugetlbfs -o pagesize=1G hugetlbfs "$NEWROOT/dev/hugepages1G" || die "cannot mount hugetlbfs (1G)"
fi
[ "$NUMA" = 0 ] || say "$NUMA NUMA nodes, $HUGEPAGES x 2M and $HUGEPAGES_1G x 1G huge pages on each"

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
if [ "$NUMA" != 0 ]; then
  node=$(cat /sys/bus/dax/devices/dax0.0/numa_node)
  [ "$node" = "$DAX_NODE" ] || die "/dev/dax0.0 is on node $node, want $DAX_NODE"
fi

# --- the IOMMU and the NVMe controller ---------------------------------------------
if [ "$IOMMU" = 1 ]; then
  [ -e /sys/class/iommu/dmar0 ] || die "no Intel IOMMU (no /sys/class/iommu/dmar0)"
fi
if [ "$NVME" != 0 ]; then
  pci=/sys/bus/pci/devices/$NVME
  [ "$(cat "$pci/vendor" 2>/dev/null):$(cat "$pci/device" 2>/dev/null)" = 0x1b36:0x0010 ] ||
    die "no NVMe controller (1b36:0010) at $NVME"
  if [ "$IOMMU" = 1 ]; then
    [ -e "$pci/iommu_group" ] || die "the NVMe controller $NVME is in no IOMMU group"
  fi
  # The kernel's driver owns it when COMMAND starts; the namespace shows that.
  wait_for 100 [ -b "$NEWROOT/dev/nvme0n1" ] ||
    die "the nvme driver did not bring up /dev/nvme0n1 (driver: $(basename "$(readlink "$pci/driver")"))"
  say "NVMe $NVME ready ($(basename "$(readlink "$pci/driver")"), /dev/nvme0n1$([ "$IOMMU" = 1 ] &&
    echo ", IOMMU group $(basename "$(readlink "$pci/iommu_group")")"))"
fi

if [ "$NULL_BLK" != 0 ]; then
  wait_for 50 [ -b "$NEWROOT/dev/nullb0" ] || die "null_blk did not bring up /dev/nullb0"
  say "null_blk ready (/dev/nullb0, $NULL_BLK GiB, memory-backed)"
fi

# --- optional soft-RoCE ---------------------------------------------------------------
if [ "$RXE" = 1 ] || [ "$RXE_PAIR" = 1 ]; then
  load_modules /etc/hugemm/rxe.modules
  in_root ip link set lo up || die "ip link set lo up failed"
fi
port_active() { grep -q ACTIVE "/sys/class/infiniband/$1/ports/1/state" 2>/dev/null; }
if [ "$RXE" = 1 ]; then
  in_root rdma link add rxe0 type rxe netdev lo || die "rdma link add rxe0 failed"
  say "rxe0 ready"
fi
# Two devices on the ends of one veth pair, both in this namespace (rxe on 6.12
# carries no traffic across network namespaces). The kernel would deliver
# packets between two local addresses through lo: per-direction rules for
# locally sent packets, ahead of the local table, send them out of the sender's
# own end, and accept_local/rp_filter let the other end take them in.
if [ "$RXE_PAIR" = 1 ]; then
  rxe_pair() {
    # The veth ends take these from "default" when they are made.
    for conf in all default; do
      echo 1 >"/proc/sys/net/ipv4/conf/$conf/accept_local" || return 1
      echo 0 >"/proc/sys/net/ipv4/conf/$conf/rp_filter" || return 1
    done
    # One ip for all of it: every program start costs under TCG.
    in_root ip -batch - <<'EOF' || return 1
link add veth_a type veth peer name veth_b
address add 10.99.0.1/24 dev veth_a
address add 10.99.0.2/24 dev veth_b
link set veth_a up
link set veth_b up
rule add pref 1000 lookup local
rule del pref 0
rule add pref 100 from 10.99.0.1 to 10.99.0.2 iif lo lookup 100
route add 10.99.0.2/32 dev veth_a src 10.99.0.1 table 100
rule add pref 101 from 10.99.0.2 to 10.99.0.1 iif lo lookup 101
route add 10.99.0.1/32 dev veth_b src 10.99.0.2 table 101
EOF
    in_root rdma -b - <<'EOF' || return 1
link add rxe_a type rxe netdev veth_a
link add rxe_b type rxe netdev veth_b
EOF
  }
  rxe_pair || die "setting up the veth pair with rxe_a and rxe_b failed"
  wait_for 100 port_active rxe_a || die "rxe_a's port did not become active"
  wait_for 100 port_active rxe_b || die "rxe_b's port did not become active"
  # GID 1 is the IPv4-mapped RoCE v2 entry the tests use.
  for end in a:0001 b:0002; do
    gid=$(cat "/sys/class/infiniband/rxe_${end%:*}/ports/1/gids/1" 2>/dev/null)
    [ "$gid" = "0000:0000:0000:0000:0000:ffff:0a63:${end#*:}" ] ||
      die "rxe_${end%:*} GID 1 is '$gid', not 10.99.0.${end#*:000}"
  done
  say "rxe_a (veth_a, 10.99.0.1) and rxe_b (veth_b, 10.99.0.2) ready"
fi

# --- the job ---------------------------------------------------------------------
# A command that hangs (a driver's unbind, an I/O that never completes) is killed by the
# host at its --timeout; just before, the watchdog says where the guest's tasks wait.
watchdog=
if [ "$WATCHDOG" -gt 0 ]; then
  (
    until [ "$(cut -d. -f1 /proc/uptime)" -ge "$WATCHDOG" ]; do sleep 1; done
    echo "HUGEMM-VM-WATCHDOG: the command still runs at ${WATCHDOG}s of uptime; blocked tasks:"
    echo 1 >/proc/sys/kernel/sysrq
    echo w >/proc/sysrq-trigger
  ) &
  watchdog=$!
fi
say "running the command"
chroot "$NEWROOT" /usr/bin/env -i /bin/bash "$SHARE_DIR/job.sh" \
  </dev/null >"$NEWROOT$SHARE_DIR/output" 2>&1
rc=$?
[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
echo "$rc" >"$NEWROOT$SHARE_DIR/rc"
say "command exited with status $rc"
echo "HUGEMM-VM-EXIT-STATUS: $rc"
sync
umount "$NEWROOT$SHARE_DIR" 2>/dev/null
poweroff -f
sleep 60
