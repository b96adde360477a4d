#!/bin/bash
# run-in-vm.sh [OPTIONS] -- COMMAND [ARGS...]
#
# Boot a Debian kernel under qemu with an emulated NVDIMM, make it a device-DAX
# namespace (/dev/dax0.0) at the given alignment, and run COMMAND inside the
# VM, chrooted into this host's root (shared read-only over 9p, with a tmpfs
# overlay for writes, which are lost when the VM stops), with cwd = the current
# directory. Prints COMMAND's output and exits with its status. --rw DIR shares
# the host directory DIR read-write at the same path, for files that must
# outlive the VM (e.g. --gtest_output=xml:DIR/x.xml).
#
# Options (README.md says what COMMAND sees with each):
#   --align 2M|1G          device-DAX alignment (2M)
#   --mem SIZE             guest RAM (2G), split evenly over the NUMA nodes
#   --numa N               N NUMA nodes (2..4), each with a vCPU and a memory backend
#   --hugepages N          2M huge pages reserved at boot, per node with --numa
#                          (0; 128 per node with --numa)
#   --hugepages-1g N       1G huge pages reserved at boot, per node with --numa (0)
#   --dax-node N           NUMA node of the NVDIMM (0)
#   --nvme IMG             an emulated NVMe controller backed by the raw host file IMG,
#                          created sparse when missing
#   --nvme-size SIZE       size of IMG when the harness creates it (1G)
#   --iommu                q35 with an emulated Intel IOMMU, intel_iommu=on
#   --rxe                  soft-RoCE rxe0 on lo
#   --rxe-pair             soft-RoCE rxe_a and rxe_b on the two ends of a veth pair
#   --null-blk GB          /dev/nullb0: a memory-backed null_blk disk of GB GiB (0: none)
#   --timeout SECONDS      the whole run, boot included (240)
#   --log FILE             a copy of the output; the VM console goes to FILE.console
#   --rw DIR               share host directory DIR read-write at the same path
#
# Exit 77 with "SKIP: <reason>" when the VM cannot be built here (or "FAIL:"
# and 1 when HUGEMM_REQUIRE_HUGEPAGES=1). Exit 1 with "FAIL: <reason>" when the
# VM fails (setup error, timeout, crash). Exit 2 on bad usage.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '/^# Options/,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  echo "usage: run-in-vm.sh [OPTIONS] -- COMMAND [ARGS...]" >&2
  exit 2
}
bad() {
  echo "run-in-vm.sh: $*" >&2
  exit 2
}

ALIGN=2M
MEM=
NUMA=0
HUGEPAGES=
HUGEPAGES_1G=0
DAX_NODE=0
NVME=
NVME_SIZE=1G
IOMMU=0
RXE=0
RXE_PAIR=0
NULL_BLK=0
TIMEOUT=240
LOG=
RW=
while (($#)); do
  opt=$1
  case $opt in
    --iommu=* | --rxe=* | --rxe-pair=*) bad "${opt%%=*} takes no value" ;;
    --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
    --align | --mem | --numa | --hugepages | --hugepages-1g | --dax-node | --nvme | --nvme-size | \
      --null-blk | --timeout | --log | --rw)
      if (($# < 2)) || [[ $2 == -- ]]; then bad "$opt needs a value"; fi
      case $opt in
        --align) ALIGN=$2 ;;
        --mem) MEM=$2 ;;
        --numa) NUMA=$2 ;;
        --hugepages) HUGEPAGES=$2 ;;
        --hugepages-1g) HUGEPAGES_1G=$2 ;;
        --dax-node) DAX_NODE=$2 ;;
        --nvme) NVME=$2 ;;
        --nvme-size) NVME_SIZE=$2 ;;
        --null-blk) NULL_BLK=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        --log) LOG=$2 ;;
        --rw) RW=$2 ;;
      esac
      shift 2 ;;
    --iommu) IOMMU=1; shift ;;
    --rxe) RXE=1; shift ;;
    --rxe-pair) RXE_PAIR=1; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "run-in-vm.sh: unknown option $opt" >&2; usage ;;
  esac
done
(($#)) || usage
case $ALIGN in 2M | 1G) ;; *) bad "--align must be 2M or 1G" ;; esac
[[ $TIMEOUT =~ ^[0-9]+$ ]] || bad "--timeout needs seconds"
[[ $NULL_BLK =~ ^[0-9]+$ ]] || bad "--null-blk needs a size in GiB, not '$NULL_BLK'"
case $NUMA in 0 | 2 | 3 | 4) ;; *) bad "--numa needs 2, 3 or 4 nodes, not '$NUMA'" ;; esac
NODES=$((NUMA ? NUMA : 1))
PER_NODE= # set when counts and places are per node
((NUMA == 0)) || PER_NODE=1
[[ -n $HUGEPAGES ]] || HUGEPAGES=$((NUMA ? 128 : 0))
[[ $HUGEPAGES =~ ^[0-9]+$ ]] || bad "--hugepages needs a number of 2M pages"
[[ $HUGEPAGES_1G =~ ^[0-9]+$ ]] || bad "--hugepages-1g needs a number of 1G pages"
if [[ -z $MEM ]]; then
  # 2G, or what the 1G pages need: the kernel takes them at boot from free,
  # aligned gigabytes. A node's first and last gigabytes hold the kernel and the
  # node's own data, and one more may hold the initrd (at the top of the memory
  # below the PCI hole, which on the pc machine leaves a gigabyte of its own).
  MEM=$((HUGEPAGES_1G ? NODES * (HUGEPAGES_1G + 3) * 1024 + NODES * HUGEPAGES * 2 : 2048))M
  (($(size_bytes "$MEM") >= 2 << 30)) || MEM=2G
fi
mem_bytes=$(size_bytes "$MEM") || bad "--mem needs a size (e.g. 4G), not '$MEM'"
MEM_MIB=$((mem_bytes >> 20))
((MEM_MIB >= 512 * NODES && MEM_MIB % (2 * NODES) == 0)) ||
  bad "--mem $MEM: at least 512M per node, and a whole number of 2M pages per node"
((((HUGEPAGES << 1) + (HUGEPAGES_1G << 10)) * NODES < MEM_MIB)) ||
  bad "--hugepages $HUGEPAGES and --hugepages-1g $HUGEPAGES_1G (per node) leave no memory of --mem $MEM"
if ! [[ $DAX_NODE =~ ^[0-9]+$ ]] || ((DAX_NODE >= NODES)); then
  bad "--dax-node $DAX_NODE: no such node$([[ -n $PER_NODE ]] || echo ' (no --numa)')"
fi
if [[ -n $NVME ]]; then
  if ! nvme_bytes=$(size_bytes "$NVME_SIZE") || ((nvme_bytes < 1 << 20 || nvme_bytes % 4096)); then
    bad "--nvme-size needs a size of at least 1M in whole 4K blocks, not '$NVME_SIZE'"
  fi
  [[ $NVME != *,* ]] || bad "--nvme path has a comma (qemu cannot take it)"
  if [[ -e $NVME ]]; then
    [[ -f $NVME && -w $NVME ]] || bad "--nvme $NVME is not a writable regular file"
    NVME=$(realpath -- "$NVME")
    nvme_bytes=$(stat -c %s -- "$NVME")
    ((nvme_bytes >= 1 << 20 && nvme_bytes % 4096 == 0)) ||
      bad "--nvme $NVME: its size $nvme_bytes is not at least 1M in whole 4K blocks"
  else
    [[ -d $(dirname -- "$NVME") ]] || bad "--nvme $NVME: no such directory"
    NVME=$(realpath -- "$NVME")
    truncate -s "$nvme_bytes" -- "$NVME" # sparse: costs only what the guest writes
  fi
fi
if [[ -n $RW ]]; then
  [[ -d $RW ]] || bad "--rw $RW is not a directory"
  RW=$(realpath -- "$RW")
  # It is passed on the kernel command line.
  [[ $RW != *[[:space:]]* ]] || bad "--rw path has white space"
fi

# Everything the caller sees goes to stdout and, with --log, to the log file.
if [[ -n $LOG ]]; then
  mkdir -p -- "$(dirname -- "$LOG")"
  : >"$LOG"
  LOG=$(realpath -- "$LOG")
fi
say() { if [[ -n $LOG ]]; then printf '%s\n' "$*" | tee -a "$LOG"; else printf '%s\n' "$*"; fi; }
fail() { say "FAIL: $*"; exit 1; }
# Keep the build step's SKIP/FAIL line in the log too.
cannot_build() {
  if [[ ${HUGEMM_REQUIRE_HUGEPAGES:-0} == 1 ]]; then fail "$*"; fi
  say "SKIP: $*"
  exit 77
}

# --- build (or reuse) the VM pieces, one harness at a time -------------------
mkdir -p "$VM_CACHE" 2>/dev/null || cannot_build "cannot create the cache $VM_CACHE"
[[ $VM_CACHE != *[[:space:]]* ]] || cannot_build "the cache path '$VM_CACHE' has white space"
VM_CACHE=$(realpath -- "$VM_CACHE")
export HUGEMM_VM_CACHE=$VM_CACHE
# One VM at a time on this machine (2 cores, shared with compiles); this lock
# also keeps two harnesses from building the cache at once.
exec 9>"$VM_CACHE/lock"
if ! flock -n 9; then
  log "waiting for another VM to finish"
  flock 9
fi

packages=("${HOST_PACKAGES[@]}")
((RXE || RXE_PAIR)) && packages+=("${RXE_PACKAGES[@]}")
[[ -n $NVME ]] && packages+=("${NVME_PACKAGES[@]}")
((NUMA)) && packages+=("${NUMA_PACKAGES[@]}")
ensure_packages "${packages[@]}"
command -v qemu-system-x86_64 >/dev/null || cannot_build "qemu-system-x86_64 not found"

# step VAR CMD... : run a build step and set VAR to the last line it prints;
# on failure repeat its SKIP/FAIL reason as our own.
step() {
  local var=$1 out rc=0 reason
  shift
  out=$("$@") || rc=$?
  if ((rc)); then
    reason=$(sed -n 's/^\(SKIP\|FAIL\): //p' <<<"$out" | head -n1)
    cannot_build "${reason:-$(basename -- "$1") failed (status $rc)}"
  fi
  printf -v "$var" '%s' "$(tail -n1 <<<"$out")"
}
step KVER "$VM_DIR/fetch.sh"
step INITRD "$VM_DIR/build-initramfs.sh" "$KVER"
KERNEL=$VM_CACHE/kernel/$KVER/boot/vmlinuz-$KVER

# --- the run directory: results share (9p, writable) + NVDIMM backing file -----
# Runs left by a killed harness (or kept with HUGEMM_VM_KEEP=1): we hold the
# lock, so none of them is live.
rm -rf "$VM_CACHE/runs"
mkdir -p "$VM_CACHE/runs"
RUN=$(mktemp -d "$VM_CACHE/runs/run.XXXXXX")
SHARE=$RUN/share
mkdir "$SHARE"
QEMU_PID=
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  [[ ${HUGEMM_VM_KEEP:-0} == 1 ]] || rm -rf -- "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What COMMAND is told about the guest (README.md, "What COMMAND sees"). /init checks
# each device before the job starts, so these are facts when COMMAND runs.
NVME_BDF=0000:00:04.0
NVME_SERIAL=hugemm-nvme0
facts=(HUGEMM_IN_VM=1 HUGEMM_TEST_DAX=/dev/dax0.0 "HUGEMM_TEST_DAX_NODE=$DAX_NODE"
  "HUGEMM_TEST_NUMA_NODES=$NODES" "HUGEMM_TEST_HUGEPAGES_2M=$HUGEPAGES"
  "HUGEMM_TEST_HUGEPAGES_1G=$HUGEPAGES_1G")
if [[ -n $NVME ]]; then
  facts+=("HUGEMM_TEST_NVME_BDF=$NVME_BDF" "HUGEMM_TEST_NVME_SERIAL=$NVME_SERIAL"
    HUGEMM_TEST_NVME_BLOCK=/dev/nvme0n1 "HUGEMM_TEST_NVME_IMAGE=$NVME"
    "HUGEMM_TEST_NVME_SIZE=$(stat -c %s -- "$NVME")" "HUGEMM_TEST_PCI_BIND=$VM_DIR/pci-bind.sh")
fi
((IOMMU)) && facts+=(HUGEMM_TEST_IOMMU=intel)
((NULL_BLK)) && facts+=(HUGEMM_TEST_NULL_BLK=/dev/nullb0)
((RXE)) && facts+=(HUGEMM_TEST_RXE=rxe0)
if ((RXE_PAIR)); then
  facts+=(HUGEMM_TEST_RXE_A=rxe_a HUGEMM_TEST_RXE_B=rxe_b HUGEMM_TEST_RXE_A_ADDR=10.99.0.1
    HUGEMM_TEST_RXE_B_ADDR=10.99.0.2 HUGEMM_TEST_RXE_A_NETDEV=veth_a
    HUGEMM_TEST_RXE_B_NETDEV=veth_b HUGEMM_TEST_RXE_GID=1)
fi

# The job: environment passed through, cwd, then COMMAND. Run by the host's
# bash inside the chroot, under 'env -i'. The caller's values of the facts' names
# are not passed: a fact this boot does not have must be unset, not stale.
{
  echo '# written by run-in-vm.sh'
  for name in $(compgen -e); do
    case $name in
      HUGEMM_IN_VM | HUGEMM_TEST_DAX | HUGEMM_TEST_DAX_NODE | HUGEMM_TEST_NUMA_* | \
        HUGEMM_TEST_HUGEPAGES_* | HUGEMM_TEST_NVME_* | HUGEMM_TEST_PCI_BIND | HUGEMM_TEST_IOMMU | \
        HUGEMM_TEST_RXE* | HUGEMM_TEST_NULL_BLK) ;;
      HUGEMM_* | GTEST_* | PATH | HOME | LANG | LC_ALL | LD_LIBRARY_PATH | TERM | *SAN_OPTIONS)
        printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done
  # shellcheck disable=SC2016 # expanded in the guest
  echo 'export PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"'
  printf 'export'
  printf ' %q' "${facts[@]}"
  echo
  printf 'cd -- %q || exit 125\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  echo
} >"$SHARE/job.sh"

# 1G alignment needs room for the memmap and padding before the first 1G page.
case $ALIGN in
  2M) DAX_SIZE=${HUGEMM_VM_DAX_SIZE:-2G} ;;
  1G) DAX_SIZE=${HUGEMM_VM_DAX_SIZE:-4G} ;;
esac
dax_bytes=$(size_bytes "$DAX_SIZE") || cannot_build "HUGEMM_VM_DAX_SIZE=$DAX_SIZE is not a size"
truncate -s "$dax_bytes" "$RUN/nvdimm.img" # sparse: costs only what the guest writes

# KVM only where a real KVM module is loaded: this kind of machine exposes a
# /dev/kvm that cannot run a stock kernel (it hangs), so default to TCG.
ACCEL=${HUGEMM_VM_ACCEL:-}
if [[ -z $ACCEL ]]; then
  ACCEL=tcg
  if [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]] && [[ -w /dev/kvm ]]; then ACCEL=kvm; fi
fi
# TCG's "max" CPU would enable 5-level paging; keep the common 4-level layout.
case $ACCEL in kvm) CPU=${HUGEMM_VM_CPU:-host} ;; *) CPU=${HUGEMM_VM_CPU:-max,la57=off} ;; esac

# The kernel command line: the guest's /init reads the hugemm.* words.
# no_timer_check: a TCG guest on a busy host can miss the timer ticks the kernel
# counts at boot, and with interrupt remapping (--iommu) it panics over that.
append="console=ttyS0 quiet panic=-1 no_timer_check i8042.noaux i8042.nokbd i8042.nopnp"
append+=" cryptomgr.notests"
# nokaslr: the kernel at the same physical place every boot, not in a gigabyte a 1G
# page needs one boot in a few.
append+=" nokaslr"
append+=" hugemm.align=$ALIGN hugemm.share=$SHARE ${RW:+hugemm.rw=$RW} hugemm.numa=$NUMA"
append+=" hugemm.hugepages=$HUGEPAGES hugemm.hugepages1g=$HUGEPAGES_1G hugemm.daxnode=$DAX_NODE"
append+=" hugemm.nvme=$([[ -n $NVME ]] && echo "$NVME_BDF" || echo 0) hugemm.iommu=$IOMMU"
append+=" hugemm.rxe=$RXE hugemm.rxepair=$RXE_PAIR hugemm.nullblk=$NULL_BLK"
# The guest dumps its blocked tasks 20 s before the host kills it (guest uptime runs
# about as long as the host's wait: its clock starts within seconds of qemu's).
append+=" hugemm.watchdog=$((TIMEOUT > 60 ? TIMEOUT - 20 : 0))"
# Huge pages are reserved at boot, while memory is unfragmented (a 1G page could
# rarely be found later); "N0:C,N1:C" asks each node for its own count.
per_node() { # COUNT -> the hugepages= value
  if ((NUMA)); then
    local i out=
    for ((i = 0; i < NUMA; i++)); do out+="${out:+,}$i:$1"; done
    echo "$out"
  else
    echo "$1"
  fi
}
((HUGEPAGES)) && append+=" hugepagesz=2M hugepages=$(per_node "$HUGEPAGES")"
((HUGEPAGES_1G)) && append+=" hugepagesz=1G hugepages=$(per_node "$HUGEPAGES_1G")"
((IOMMU)) && append+=" intel_iommu=on"
append+=" ${HUGEMM_VM_APPEND:-}"

machine=pc
((IOMMU)) && machine=q35 # intel-iommu needs q35
machine+=",nvdimm=on,accel=$ACCEL"
# Interrupt remapping under KVM needs the split irqchip; TCG has it anyway.
((IOMMU)) && [[ $ACCEL == kvm ]] && machine+=",kernel-irqchip=split"
CPUS=${HUGEMM_VM_CPUS:-2}
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || cannot_build "HUGEMM_VM_CPUS=$CPUS is not a count"
CPUS_PER_NODE=$(((CPUS + NODES - 1) / NODES))
CPUS=$((CPUS_PER_NODE * NODES))

# shellcheck disable=SC2054 # commas are qemu's
qemu=(
  qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
  -machine "$machine" -cpu "$CPU" -smp "$CPUS"
  -m "${MEM_MIB}M,slots=2,maxmem=$((MEM_MIB + (dax_bytes >> 20) + 1024))M"
)
for ((i = 0; i < NUMA; i++)); do
  # shellcheck disable=SC2054 # commas are qemu's
  qemu+=(-object "memory-backend-ram,id=node$i,size=$((MEM_MIB / NUMA))M"
    -numa "node,nodeid=$i,cpus=$((i * CPUS_PER_NODE))-$(((i + 1) * CPUS_PER_NODE - 1)),memdev=node$i")
done
# shellcheck disable=SC2054 # commas are qemu's
qemu+=(
  # No label area: with one, the region is left misaligned for devdax.
  -object "memory-backend-file,id=mem1,share=on,mem-path=$RUN/nvdimm.img,size=$dax_bytes,align=2M"
  -device "nvdimm,id=nvdimm1,memdev=mem1${PER_NODE:+,node=$DAX_NODE}"
)
# The IOMMU must exist before the devices it translates for.
# shellcheck disable=SC2054 # commas are qemu's
((IOMMU)) && qemu+=(-device intel-iommu,intremap=on,caching-mode=on)
if [[ -n $NVME ]]; then
  # At a fixed slot, before the 9p devices take the first free ones.
  # shellcheck disable=SC2054 # commas are qemu's
  qemu+=(-drive "file=$NVME,if=none,id=nvm,format=raw"
    -device "nvme,serial=$NVME_SERIAL,drive=nvm,addr=${NVME_BDF#0000:00:}")
fi
# shellcheck disable=SC2054 # commas are qemu's
qemu+=(
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev "local,id=results,path=$SHARE,security_model=none"
  -device virtio-9p-pci,fsdev=results,mount_tag=results
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "$append"
  -serial "file:$RUN/console.log"
)
if [[ -n $RW ]]; then
  # shellcheck disable=SC2054 # commas are qemu's
  qemu+=(-fsdev "local,id=rw,path=$RW,security_model=none" -device virtio-9p-pci,fsdev=rw,mount_tag=rw)
fi

# Print the job's output as the guest writes it (the share is uncached 9p),
# until qemu is gone; then once more to catch the tail.
stream_output() {
  local f=$SHARE/output off=0 size alive
  while :; do
    alive=0
    kill -0 "$QEMU_PID" 2>/dev/null && alive=1
    if [[ -f $f ]]; then
      size=$(stat -c %s "$f")
      if ((size > off)); then
        if [[ -n $LOG ]]; then
          tail -c "+$((off + 1))" "$f" | head -c "$((size - off))" | tee -a "$LOG"
        else
          tail -c "+$((off + 1))" "$f" | head -c "$((size - off))"
        fi
        off=$size
      fi
    fi
    ((alive)) || break
    sleep 0.5
  done
}

console_tail() {
  if [[ ! -s $RUN/console.log ]]; then
    say "(the VM console is empty: the kernel hung before /init; accel was $ACCEL," \
      "try HUGEMM_VM_ACCEL=tcg, or HUGEMM_VM_APPEND=loglevel=7 to see the boot)"
    return
  fi
  say "---- last lines of the VM console ($KVER, accel $ACCEL) ----"
  # From the watchdog's report on, when there is one (the blocked tasks' stacks).
  if grep -q '^HUGEMM-VM-WATCHDOG' "$RUN/console.log"; then
    say "$(sed -n '/^HUGEMM-VM-WATCHDOG/,$p' "$RUN/console.log" | head -n 200 | tr -d '\r')"
  else
    say "$(tail -n 40 "$RUN/console.log" | tr -d '\r')"
  fi
  say "----"
}

features="${machine%%,*}, ${CPUS} vCPUs, ${MEM_MIB}M, align $ALIGN"
((NUMA)) && features+=", $NUMA nodes"
((HUGEPAGES)) && features+=", $HUGEPAGES x 2M${PER_NODE:+ per node}"
((HUGEPAGES_1G)) && features+=", $HUGEPAGES_1G x 1G${PER_NODE:+ per node}"
((IOMMU)) && features+=", intel-iommu"
[[ -n $NVME ]] && features+=", nvme"
((RXE)) && features+=", rxe"
((RXE_PAIR)) && features+=", rxe pair"
((NULL_BLK)) && features+=", null_blk ${NULL_BLK}G"

# A TCG guest now and then dies while the kernel patches its own code at boot (an int3
# oops in early boot, before /init runs the command). That says nothing about the
# command: boot again, at most twice, when the command never started.
for attempt in 1 2 3; do
  log "booting $KVER (accel $ACCEL, $features, timeout ${TIMEOUT}s)"
  start=$(date +%s.%N)
  timeout -k 10 "$TIMEOUT" "${qemu[@]}" </dev/null >"$RUN/qemu.out" 2>&1 &
  QEMU_PID=$!
  stream_output
  qemu_rc=0
  wait "$QEMU_PID" || qemu_rc=$?
  QEMU_PID=
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  [[ -n $LOG ]] && cp "$RUN/console.log" "$LOG.console" 2>/dev/null

  boot=$(sed -n 's/^hugemm-vm\[\([0-9.]*\)s\]: running the command.*/\1/p' "$RUN/console.log" | head -n1)
  log "VM finished in ${elapsed}s${boot:+ (command started at ${boot}s of guest uptime)}"
  if [[ -f $SHARE/rc || -n $boot || -f $SHARE/setup-failed ]] || ((qemu_rc == 124 || qemu_rc == 137)); then
    break
  fi
  if grep -q '^HUGEMM-VM-SETUP-FAILED' "$RUN/console.log" 2>/dev/null || ((attempt == 3)); then
    break
  fi
  log "the guest kernel stopped before the command started (attempt $attempt): $(grep -m1 -E 'Oops|panic|BUG' "$RUN/console.log" | tr -d '\r')"
  mv "$RUN/console.log" "$RUN/console.$attempt.log"
  rm -f "$SHARE/output"
done

if [[ -f $SHARE/rc ]]; then
  exit "$(<"$SHARE/rc")"
fi
if [[ -f $SHARE/setup-failed ]] || grep -q '^HUGEMM-VM-SETUP-FAILED' "$RUN/console.log" 2>/dev/null; then
  reason=$(cat "$SHARE/setup-failed" 2>/dev/null ||
    sed -n 's/^HUGEMM-VM-SETUP-FAILED: //p' "$RUN/console.log" | head -n1)
  console_tail
  fail "VM setup failed: $reason"
fi
if ((qemu_rc == 124 || qemu_rc == 137)); then
  console_tail
  if [[ -n $boot ]]; then
    fail "the command did not finish within --timeout ${TIMEOUT}s (VM killed)"
  fi
  fail "the VM did not boot within --timeout ${TIMEOUT}s (killed)"
fi
console_tail
[[ -s $RUN/qemu.out ]] && say "qemu: $(head -c 2000 "$RUN/qemu.out")"
fail "the VM stopped without a result (qemu exit status $qemu_rc)"
