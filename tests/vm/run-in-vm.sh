#!/bin/bash
# run-in-vm.sh [--align 2M|1G] [--rxe] [--timeout SECONDS] [--log FILE] [--rw DIR] -- COMMAND [ARGS...]
#
# Boot a Debian kernel under qemu with an emulated NVDIMM, make it a device-DAX
# namespace (/dev/dax0.0) at the given alignment, and run COMMAND inside the
# VM, chrooted into this host's root (shared read-only over 9p, with a tmpfs
# overlay for writes, which are lost when the VM stops), with cwd = the current
# directory. Prints COMMAND's output and exits with its status. --rw DIR shares
# the host directory DIR read-write at the same path, for files that must
# outlive the VM (e.g. --gtest_output=xml:DIR/x.xml).
#
# Exit 77 with "SKIP: <reason>" when the VM cannot be built here (or "FAIL:"
# and 1 when HUGEMM_REQUIRE_HUGEPAGES=1). Exit 1 with "FAIL: <reason>" when the
# VM fails (setup error, timeout, crash). See README.md for the environment.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2p' "${BASH_SOURCE[0]}" | sed 's/^# /usage: /' >&2
  exit 2
}

ALIGN=2M
RXE=0
TIMEOUT=240
LOG=
RW=
while (($#)); do
  case $1 in
    --align) ALIGN=${2:-}; shift 2 ;;
    --align=*) ALIGN=${1#*=}; shift ;;
    --rxe) RXE=1; shift ;;
    --timeout) TIMEOUT=${2:-}; shift 2 ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    --log) LOG=${2:-}; shift 2 ;;
    --log=*) LOG=${1#*=}; shift ;;
    --rw) RW=${2:-}; shift 2 ;;
    --rw=*) RW=${1#*=}; shift ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "run-in-vm.sh: unknown option $1" >&2; usage ;;
  esac
done
(($#)) || usage
case $ALIGN in 2M | 1G) ;; *) echo "run-in-vm.sh: --align must be 2M or 1G" >&2; exit 2 ;; esac
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "run-in-vm.sh: --timeout needs seconds" >&2; exit 2; }
if [[ -n $RW ]]; then
  [[ -d $RW ]] || { echo "run-in-vm.sh: --rw $RW is not a directory" >&2; exit 2; }
  RW=$(realpath -- "$RW")
  # It is passed on the kernel command line.
  [[ $RW != *[[:space:]]* ]] || { echo "run-in-vm.sh: --rw path has white space" >&2; exit 2; }
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
((RXE)) && packages+=("${RXE_PACKAGES[@]}")
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

# The job: environment passed through, cwd, then COMMAND. Run by the host's
# bash inside the chroot, under 'env -i'.
{
  echo '# written by run-in-vm.sh'
  for name in $(compgen -e); do
    case $name in
      HUGEMM_* | GTEST_* | PATH | HOME | LANG | LC_ALL | LD_LIBRARY_PATH | TERM | *SAN_OPTIONS)
        printf 'export %s=%q\n' "$name" "${!name}" ;;
    esac
  done
  # shellcheck disable=SC2016 # expanded in the guest
  echo 'export PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin"'
  echo 'export HUGEMM_TEST_DAX=/dev/dax0.0 HUGEMM_IN_VM=1'
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
truncate -s "$DAX_SIZE" "$RUN/nvdimm.img" # sparse: costs only what the guest writes

# KVM only where a real KVM module is loaded: this kind of machine exposes a
# /dev/kvm that cannot run a stock kernel (it hangs), so default to TCG.
ACCEL=${HUGEMM_VM_ACCEL:-}
if [[ -z $ACCEL ]]; then
  ACCEL=tcg
  if [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]] && [[ -w /dev/kvm ]]; then ACCEL=kvm; fi
fi
# TCG's "max" CPU would enable 5-level paging; keep the common 4-level layout.
case $ACCEL in kvm) CPU=${HUGEMM_VM_CPU:-host} ;; *) CPU=${HUGEMM_VM_CPU:-max,la57=off} ;; esac

# shellcheck disable=SC2054 # commas are qemu's
qemu=(
  qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
  -machine "pc,nvdimm=on,accel=$ACCEL" -cpu "$CPU" -smp "${HUGEMM_VM_CPUS:-2}"
  -m 2G,slots=2,maxmem=16G
  # No label area: with one, the region is left misaligned for devdax.
  -object "memory-backend-file,id=mem1,share=on,mem-path=$RUN/nvdimm.img,size=$DAX_SIZE,align=2M"
  -device nvdimm,id=nvdimm1,memdev=mem1
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev "local,id=results,path=$SHARE,security_model=none"
  -device virtio-9p-pci,fsdev=results,mount_tag=results
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "console=ttyS0 quiet panic=-1 i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests hugemm.align=$ALIGN hugemm.rxe=$RXE hugemm.share=$SHARE ${RW:+hugemm.rw=$RW} ${HUGEMM_VM_APPEND:-}"
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
  say "$(tail -n 40 "$RUN/console.log" | tr -d '\r')"
  say "----"
}

# A TCG guest now and then dies while the kernel patches its own code at boot (an int3
# oops in early boot, before /init runs the command). That says nothing about the
# command: boot again, at most twice, when the command never started.
for attempt in 1 2 3; do
  log "booting $KVER (accel $ACCEL, align $ALIGN$( ((RXE)) && echo ', rxe'), timeout ${TIMEOUT}s)"
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
