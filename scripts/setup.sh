#!/usr/bin/env bash
# Prepares this machine for hugemm: Debian packages, a build, hugetlbfs mounts and huge
# page pools. Idempotent. Used by test.sh and bench.sh; run it alone to get a build.
#   scripts/setup.sh [--flavours "release asan tsan"] [--pages-2m N] [--pages-1g N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"

flavours="release"
pages_2m=1024
pages_1g=4
while [ $# -gt 0 ]; do
  case "$1" in
    --flavours) flavours=$2; shift 2 ;;
    --pages-2m) pages_2m=$2; shift 2 ;;
    --pages-1g) pages_1g=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done

need_root "$@"
install_packages
reserve_pages $((1 << 30)) "$pages_1g"   # gigantic pages first, while memory is unfragmented
reserve_pages $((2 << 20)) "$pages_2m"
mount_hugetlbfs $((2 << 20)) /dev/hugepages
mount_hugetlbfs $((1 << 30)) /dev/hugepages1G
case " $flavours " in *" tsan "*) tsan_aslr ;; esac
for f in $flavours; do build "$f"; done
