#!/usr/bin/env bash
# The README's "Install and link", run as written (test.sh runs it after the tests):
# install from source into a fresh prefix, compile each installed header on its own, and
# build and run examples/ against it, with CMake and with pkg-config; then build the
# Debian packages, install them with apt, do the same against /usr, and remove them. The
# verbs layer's library (libhugemm-verbs) comes along: examples/rdma_write.c is built
# against it both ways (README's "RDMA programs" block), and the examples without RDMA
# must not pull libibverbs in. Needs a Release build (setup.sh).
#   scripts/check-install.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$HUGEMM_ROOT"

work=$(mktemp -d)
prefix="$work/prefix"
packages=(libhugemm0 libhugemm-dev hugemm-tools libhugemm-verbs0 libhugemm-verbs-dev)
cleanup() {
  rm -rf "$work" "$HUGEMM_ROOT/build-examples"
  if dpkg-query -W "${packages[@]}" >/dev/null 2>&1; then
    apt-get remove --purge -y -qq "${packages[@]}" >/dev/null || true
  fi
}
trap cleanup EXIT
# The README's `cmake --build` lines use both cores (their default generator, make, would
# use one).
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

# readme_block NAME: the fenced block after the line "<!-- ci: NAME -->" in README.md.
readme_block() {
  awk -v mark="<!-- ci: $1 -->" '
    $0 == mark { state = 1; next }
    state == 1 && /^```/ { state = 2; next }
    state == 2 && /^```/ { exit }
    state == 2 { print }' README.md
}

# run_block NAME PREFIX: runs the block with the README's prefix replaced by PREFIX.
run_block() {
  local name=$1 to=$2 script="$work/$1.sh"
  readme_block "$name" | sed -e "s|/opt/hugemm|$to|g" -e "s|^prefix=.*|prefix=$to|" >"$script"
  [ -s "$script" ] || die "README.md has no block \"$name\""
  say "install: README block \"$name\" (prefix $to)"
  rm -rf build-examples
  bash -euo pipefail "$script"
}

if dpkg-query -W "${packages[@]}" >/dev/null 2>&1; then
  die "hugemm's Debian packages are installed already: remove them first"
fi
run_block install-source "$prefix"
for f in include/hugemm/hugemm.h include/hugemm/hugemm_io.h include/hugemm/io.h \
         lib/libhugemm.so.0 lib/libhugemm.a bin/hugemm \
         lib/cmake/hugemm/hugemmConfig.cmake lib/pkgconfig/hugemm.pc share/man/man1/hugemm.1.gz \
         include/hugemm/verbs.h include/hugemm/hugemm_verbs.h lib/libhugemm-verbs.so.0 \
         lib/libhugemm-verbs.a lib/cmake/hugemm/hugemmVerbsTargets.cmake lib/pkgconfig/hugemm-verbs.pc; do
  [ -e "$prefix/$f" ] || die "cmake --install did not install $f"
done
# Every installed header compiles on its own, with the installed include path alone:
# the C API's (hugemm*.h) as C99 and as C++, the others as C++20.
# check_header INCLUDE HEADER: the header compiles on its own (a subshell's status).
check_header() {
  local include=$1 name src flags=(-Wall -Wextra -Werror -pedantic-errors)
  name=$(basename "$2")
  src="$work/header-$name"
  printf '#include "hugemm/%s"\n#include "hugemm/%s"\nint hugemm_header_check;\n' \
    "$name" "$name" >"$src.c"
  cp "$src.c" "$src.cc"
  case $name in
    hugemm*.h) cc -std=c99 "${flags[@]}" -I"$include" -fsyntax-only "$src.c" ||
      die "$name does not compile on its own as C99" ;;
  esac
  c++ -std=c++20 "${flags[@]}" -I"$include" -fsyntax-only "$src.cc" ||
    die "$name does not compile on its own as C++20"
}
# check_headers INCLUDE: every header there, one per core at a time.
check_headers() {
  local include=$1 h count=0 failed=0 pids=()
  for h in "$include"/hugemm/*.h; do
    (check_header "$include" "$h") &
    pids+=($!)
    count=$((count + 1))
    if [ ${#pids[@]} -ge "$(nproc)" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
  for h in "${pids[@]}"; do wait "$h" || failed=1; done
  [ "$failed" = 0 ] || die "headers in $include/hugemm do not compile on their own (above)"
  [ "$count" -gt 0 ] || die "no headers in $include/hugemm"
  say "install: all $count headers in $include/hugemm compile on their own"
}
check_headers "$prefix/include"
# A C program's own CMake project (LANGUAGES C: no C++ compiler, so no C++ linker) links
# hugemm::hugemm and hugemm::hugemm_static.
check_c_project() {
  local prefix=$1 dir="$work/c-project"
  rm -rf "$dir" && mkdir -p "$dir"
  cat >"$dir/CMakeLists.txt" <<EOF
cmake_minimum_required(VERSION 3.25)
project(c_only LANGUAGES C)
find_package(hugemm 0.1 REQUIRED)
add_executable(shared_c "$HUGEMM_ROOT/examples/pin_buffer.c")
target_link_libraries(shared_c PRIVATE hugemm::hugemm)
add_executable(static_c "$HUGEMM_ROOT/examples/pin_buffer.c")
target_link_libraries(static_c PRIVATE hugemm::hugemm_static)
EOF
  say "install: a C-only CMake project against $prefix"
  cmake -S "$dir" -B "$dir/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build "$dir/build" >/dev/null || die "a C-only project does not link hugemm from $prefix"
  "$dir/build/shared_c" && "$dir/build/static_c"
}
check_c_project "$prefix"
# Without a dependency's development files the package is not found and says what is
# missing: find_package(hugemm QUIET) leaves hugemm_FOUND false with the message and the
# project configures, find_package(hugemm) prints the message, find_package(hugemm
# REQUIRED) fails with it. Likewise the verbs component without libibverbs' files, while
# hugemm itself, which does not need them, is found. PKG_CONFIG_LIBDIR hides the
# pkg-config files.
check_missing_dependencies() {
  local prefix=$1 dir="$work/missing-deps" pc="$work/pc-without-ibverbs" out d f status
  rm -rf "$dir" "$pc" && mkdir -p "$dir" "$pc"
  cat >"$dir/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(missing_deps LANGUAGES C)
separate_arguments(how UNIX_COMMAND "${HOW}")
find_package(hugemm ${how})
if(hugemm_FOUND)
  message(STATUS "hugemm found, verbs ${hugemm_verbs_FOUND}")
else()
  message(STATUS "hugemm not found: ${hugemm_NOT_FOUND_MESSAGE}")
endif()
EOF
  # configure_with LIBDIR HOW: cmake's output on one line (CMake wraps a warning's and an
  # error's text); the status is cmake's. pkg-config then searches LIBDIR alone: CMake
  # would add <prefix>/lib/pkgconfig of CMAKE_PREFIX_PATH, which for /usr holds them all.
  configure_with() {
    rm -rf "$dir/build"
    PKG_CONFIG_LIBDIR=$1 cmake -S "$dir" -B "$dir/build" -DCMAKE_PREFIX_PATH="$prefix" \
      -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=OFF -DHOW="$2" >"$dir/out" 2>&1 && status=0 ||
      status=$?
    tr -s ' \n' ' ' <"$dir/out"
    return "$status"
  }
  say "install: find_package(hugemm) against $prefix without its dependencies"
  local want="hugemm needs what is not installed: numa (Debian: libnuma-dev), libdaxctl (Debian:"
  want+=" libdaxctl-dev), liburcu-memb (Debian: liburcu-dev), liburing (Debian: liburing-dev)"
  out=$(configure_with /nonexistent QUIET) ||
    die "find_package(hugemm QUIET) without the dependencies fails the configuration: $out"
  grep -qF -- "-- hugemm not found: $want" <<<"$out" ||
    die "find_package(hugemm QUIET) without the dependencies does not say what is missing:" \
        "$out"
  out=$(configure_with /nonexistent "") ||
    die "find_package(hugemm) without the dependencies fails the configuration: $out"
  grep -qF "Reason given by package: $want" <<<"$out" ||
    die "find_package(hugemm) without the dependencies does not print what is missing: $out"
  if out=$(configure_with /nonexistent REQUIRED); then
    die "find_package(hugemm REQUIRED) without the dependencies configures: $out"
  fi
  grep -qF "Reason given by package: $want" <<<"$out" ||
    die "find_package(hugemm REQUIRED) without the dependencies does not say what is" \
        "missing: $out"

  for d in $(pkg-config --variable pc_path pkg-config | tr : ' '); do
    for f in "$d"/*.pc; do
      if [ -e "$f" ] && [ ! -e "$pc/${f##*/}" ]; then ln -s "$f" "$pc/"; fi
    done
  done
  rm -f "$pc/libibverbs.pc"
  want="hugemm's verbs component needs what is not installed: libibverbs (Debian: libibverbs-dev)"
  out=$(configure_with "$pc" "") ||
    die "find_package(hugemm) without libibverbs fails the configuration: $out"
  grep -qF -- "-- hugemm found, verbs FALSE" <<<"$out" ||
    die "find_package(hugemm) without libibverbs does not find hugemm: $out"
  out=$(configure_with "$pc" "OPTIONAL_COMPONENTS verbs") ||
    die "find_package(hugemm OPTIONAL_COMPONENTS verbs) without libibverbs fails: $out"
  grep -qF -- "-- hugemm found, verbs FALSE" <<<"$out" ||
    die "find_package(hugemm OPTIONAL_COMPONENTS verbs) without libibverbs finds no hugemm," \
        "or the component: $out"
  out=$(configure_with "$pc" "COMPONENTS verbs QUIET") ||
    die "find_package(hugemm COMPONENTS verbs QUIET) without libibverbs fails: $out"
  grep -qF -- "-- hugemm not found: $want" <<<"$out" ||
    die "find_package(hugemm COMPONENTS verbs QUIET) without libibverbs does not say what is" \
        "missing: $out"
  if out=$(configure_with "$pc" "REQUIRED COMPONENTS verbs"); then
    die "find_package(hugemm REQUIRED COMPONENTS verbs) without libibverbs configures: $out"
  fi
  grep -qF "Reason given by package: $want" <<<"$out" ||
    die "find_package(hugemm REQUIRED COMPONENTS verbs) without libibverbs does not say what" \
        "is missing: $out"
}
check_missing_dependencies "$prefix"
run_block link "$prefix"
# (ldd's output is read whole: grep -q would close the pipe on it.)
deps=$(ldd build-examples/pin_buffer_c)
grep -q "$prefix/lib/libhugemm.so.0" <<<"$deps" ||
  die "pin_buffer_c is not linked against $prefix/lib/libhugemm.so.0"
deps=$(ldd build-examples/pin_buffer_c_static)
if grep -q libhugemm <<<"$deps"; then die "pin_buffer_c_static is linked against libhugemm.so"; fi
# The storage example reads a file it writes in the current directory (disk, not tmpfs).
(cd "$work" && "$HUGEMM_ROOT/build-examples/example_read_direct")
check_verbs() {
  local prefix=$1 deps want
  # A program without RDMA does not pull rdma-core in.
  deps=$(ldd build-examples/pin_buffer_c)
  if grep -q libibverbs <<<"$deps"; then die "pin_buffer_c is linked against libibverbs"; fi
  run_block link-verbs "$prefix"
  want="libhugemm-verbs.so.0 => $prefix/lib/libhugemm-verbs.so.0"
  [ "$prefix" = /usr ] && want="libhugemm-verbs.so.0 => /"
  for exe in example_rdma_write rdma_write_c; do
    deps=$(ldd "build-examples/$exe")
    grep -qF "$want" <<<"$deps" || die "$exe is not linked against $prefix's libhugemm-verbs.so.0"
  done
}
check_verbs "$prefix"

run_block install-deb /usr
hugemm --version
[ -e /usr/share/man/man1/hugemm.1.gz ] || die "hugemm-tools has no man page"
run_block link /usr
apt-get install -y -qq ./build/release/libhugemm-verbs0_*.deb \
  ./build/release/libhugemm-verbs-dev_*.deb >/dev/null
check_headers /usr/include
check_c_project /usr
check_missing_dependencies /usr
check_verbs /usr
(cd "$work" && "$HUGEMM_ROOT/build-examples/example_read_direct")
say "install: from source and from the Debian packages, examples built and run both ways"
