# Shared by setup.sh, test.sh and bench.sh: logging, packages, huge page pools.
# shellcheck shell=bash

HUGEMM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '[hugemm] %s\n' "$*"; }
die() { printf '[hugemm] error: %s\n' "$*" >&2; exit 1; }
# took START: the time since START (a value of $SECONDS), as 3m07s.
took() { local s=$(( SECONDS - $1 )); printf '%dm%02ds' $(( s / 60 )) $(( s % 60 )); }

need_root() {
  [ "$(id -u)" = 0 ] || die "run as root (huge page pools and apt need it): sudo $0 $*"
}

# Debian packages the build, the tests, the benchmarks and the Debian packages use.
HUGEMM_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libhugetlbfs-dev libnuma-dev libdaxctl-dev libndctl-dev
  liburcu-dev liburing-dev libibverbs-dev
  libcli11-dev nlohmann-json3-dev help2man dpkg-dev file
  clang-format numactl gnuplot-nox jq ccache linux-perf fio
  clang-14 libclang-rt-14-dev libfuzzer-14-dev
)

install_packages() {
  local missing=()
  for p in "${HUGEMM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "packages: all ${#HUGEMM_PACKAGES[@]} present"
    return
  fi
  say "packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pool_dir() { echo "/sys/kernel/mm/hugepages/hugepages-$(( $1 / 1024 ))kB"; }

# pool_count SIZE_BYTES FIELD -> value (0 if the size is unsupported)
pool_count() {
  local f
  f="$(pool_dir "$1")/$2"
  [ -r "$f" ] && cat "$f" || echo 0
}

# reserve_pages SIZE_BYTES WANT_FREE: grows the pool until WANT_FREE pages are free
# (never shrinks it). Prints what it did; returns 0 even if the kernel gave fewer.
reserve_pages() {
  local size=$1 want=$2 name dir nr free grow
  name=$(( size >> 20 ))M; [ "$size" -ge $((1 << 30)) ] && name=$(( size >> 30 ))G
  dir=$(pool_dir "$size")
  if [ ! -d "$dir" ]; then
    say "huge pages $name: not supported by this kernel"
    return 0
  fi
  nr=$(cat "$dir/nr_hugepages"); free=$(cat "$dir/free_hugepages")
  if [ "$free" -ge "$want" ]; then
    say "huge pages $name: $free free of $nr (wanted $want free) - unchanged"
    return 0
  fi
  grow=$(( nr + want - free ))
  if [ "$size" -ge $((1 << 30)) ]; then
    # Gigantic pages need 1 GiB of contiguous memory: free the page cache and compact.
    sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory
  fi
  echo "$grow" > "$dir/nr_hugepages" 2>/dev/null || true
  nr=$(cat "$dir/nr_hugepages"); free=$(cat "$dir/free_hugepages")
  say "huge pages $name: pool now $nr, $free free (wanted $want free)"
}

# set_pool SIZE_BYTES NR: sets the pool size exactly (used to give pages back).
set_pool() {
  echo "$2" > "$(pool_dir "$1")/nr_hugepages" 2>/dev/null || true
}

mount_hugetlbfs() {
  local size=$1 path=$2 opt
  opt="pagesize=$(( size >> 20 ))M"
  [ -d "$(pool_dir "$size")" ] || return 0
  if grep -qs " $path hugetlbfs " /proc/mounts; then
    say "hugetlbfs: $path already mounted"
    return 0
  fi
  mkdir -p "$path"
  mount -t hugetlbfs -o "$opt" none "$path" && say "hugetlbfs: mounted $path ($opt)"
}

# ThreadSanitizer in GCC 12 cannot map its shadow with more than 28 bits of mmap ASLR.
tsan_aslr() {
  local bits
  bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)
  if [ "$bits" -gt 28 ]; then
    echo 28 > /proc/sys/vm/mmap_rnd_bits
    say "vm.mmap_rnd_bits: $bits -> 28 (ThreadSanitizer needs it)"
  fi
}

# build FLAVOUR: release | asan | tsan | fuzz, into build/FLAVOUR.
build() {
  local flavour=$1 args=() targets=()
  case "$flavour" in
    release) args=(-DCMAKE_BUILD_TYPE=Release) ;;
    # The sanitizer flavours leave out the VM's tests (HUGEMM_VM_TESTS=OFF): the VM runs
    # once, with the Release binaries, as emulated CPUs make sanitizers too slow.
    # Debug (-O0, assertions on) with line tables only (-g1): reports keep file:line.
    asan) args=(-DCMAKE_BUILD_TYPE=Debug -DHUGEMM_SANITIZE=address -DHUGEMM_VM_TESTS=OFF
                "-DCMAKE_C_FLAGS_DEBUG=-O0 -g1" "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1") ;;
    # -O1 -g1 (line tables): TSan's reports keep their file:line frames, and the build
    # takes about half the time of -O2 -g.
    tsan) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DHUGEMM_SANITIZE=thread -DHUGEMM_VM_TESTS=OFF
                "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
                "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG")
          # What TSan can check: the programs of the tests that start threads or handle
          # signals (tests/CMakeLists.txt), which test.sh runs with ctest -L threads.
          targets=(threaded_tests) ;;
    # libFuzzer binaries with ASan and UBSan (clang); only the fuzzers are built.
    fuzz) args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DHUGEMM_SANITIZE=address -DHUGEMM_FUZZ=ON
                -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14)
          targets=(fuzzers) ;;
    *) die "unknown flavour $flavour" ;;
  esac
  # Rebuilds of an unchanged file come from the cache when ccache is installed; the
  # sloppiness lets it cache what includes the tests' precompiled header.
  command -v ccache >/dev/null && args+=(
    "-DCMAKE_C_COMPILER_LAUNCHER=ccache"
    "-DCMAKE_CXX_COMPILER_LAUNCHER=env;CCACHE_SLOPPINESS=pch_defines,time_macros;ccache")
  local started=$SECONDS
  say "build: $flavour -> build/$flavour"
  cmake -S "$HUGEMM_ROOT" -B "$HUGEMM_ROOT/build/$flavour" -G Ninja "${args[@]}" >/dev/null
  ninja -C "$HUGEMM_ROOT/build/$flavour" "${targets[@]}" >/dev/null || {
    ninja -C "$HUGEMM_ROOT/build/$flavour" "${targets[@]}" | tail -40
    die "build $flavour failed"
  }
  say "build: $flavour took $(took "$started")"
}
