# shellcheck shell=bash disable=SC2034 # the variables are for the sourcing scripts
# Shared helpers for the device-DAX VM harness. Sourced, never run.

VM_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
VM_CACHE=${HUGEMM_VM_CACHE:-/var/cache/hugemm-vm}

log() { printf 'hugemm-vm: %s\n' "$*" >&2; }

# The VM cannot be built here (no package, no kernel, no qemu). That is a skip
# for ctest (exit 77) unless the caller insists that the device must be tested.
cannot_build() {
  if [[ ${HUGEMM_REQUIRE_HUGEPAGES:-0} == 1 ]]; then
    echo "FAIL: $*"
    exit 1
  fi
  echo "SKIP: $*"
  exit 77
}

# apt-get without prompts, waiting for a lock other engineers may hold.
apt_quiet() {
  DEBIAN_FRONTEND=noninteractive apt-get -q -y \
    -o DPkg::Lock::Timeout=300 -o APT::Sandbox::User=root "$@"
}

# ensure_packages PKG... : install the Debian packages that are not installed.
# A failed install is retried once after refreshing the package lists.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
      || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || cannot_build "packages missing (${missing[*]}) and not root to install them"
  command -v apt-get >/dev/null || cannot_build "packages missing (${missing[*]}) and no apt-get"
  log "installing ${missing[*]}"
  if ! apt_quiet install --no-install-recommends "${missing[@]}" >"$VM_CACHE/apt.log" 2>&1; then
    apt_quiet update >>"$VM_CACHE/apt.log" 2>&1 || true
    apt_quiet install --no-install-recommends "${missing[@]}" >>"$VM_CACHE/apt.log" 2>&1 \
      || cannot_build "apt-get install ${missing[*]} failed (see $VM_CACHE/apt.log)"
  fi
}

# size_bytes SIZE: print SIZE (a number with an optional K, M or G suffix, powers of two)
# in bytes; fail (status 1, nothing printed) on anything else.
size_bytes() {
  local n=${1%[KkMmGg]} unit=${1##*[0-9]}
  [[ $n =~ ^[0-9]+$ && ${#unit} -le 1 ]] || return 1
  case $unit in
    '') echo "$n" ;;
    K | k) echo $((n << 10)) ;;
    M | m) echo $((n << 20)) ;;
    G | g) echo $((n << 30)) ;;
  esac
}

# Packages the host needs: qemu, the guest's busybox, module tools, and the
# ndctl/daxctl (and RDMA, PCI, NUMA) binaries that the guest runs from the shared host root.
HOST_PACKAGES=(qemu-system-x86 busybox-static kmod cpio xz-utils zstd ndctl daxctl)
RXE_PACKAGES=(rdma-core ibverbs-utils ibverbs-providers iproute2 perftest)
NVME_PACKAGES=(pciutils)
NUMA_PACKAGES=(numactl)
