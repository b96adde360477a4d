#!/usr/bin/env bash
# The layer check catches what it exists to catch: an upward #include and an upward call,
# each planted in a copy (the tree itself is not touched).
#   check_layers_test.sh <layers.map> <source dir> <C compiler>
set -euo pipefail
map=$1 root=$2 cc=$3
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# The unplanted tree passes (its known edges allowed), so a failure below is the plant's.
bash "$here/check_layers.sh" --map "$map" --root "$root" --allow "$here/layer_allowlist.txt" \
  >/dev/null || fail "the tree itself does not pass"

# 1. util includes the API's public header.
cp -r "$root/runtime" "$root/include" "$root/perf" "$tmp/"
echo '#include "hugemm/runtime.h"' >>"$tmp/runtime/util/page_size.cc"
if out=$(bash "$here/check_layers.sh" --map "$map" --root "$tmp" \
           --allow "$here/layer_allowlist.txt" --includes-only); then
  fail "an upward include passed: $out"
fi
grep -q "runtime/util/page_size.cc (util) includes hugemm/runtime.h (api)" <<<"$out" ||
  fail "the upward include was not named: $out"

# 2. util's archive calls the C API (api).
util_archive=$(awk '$1 == "util" {print $3}' "$map")
printf 'extern void hugemm_close(void *rt);\nvoid planted(void) { hugemm_close(0); }\n' \
  >"$tmp/planted.c"
"$cc" -c "$tmp/planted.c" -o "$tmp/planted.o"
cp "$util_archive" "$tmp/libhugemm_util.a"
ar rcs "$tmp/libhugemm_util.a" "$tmp/planted.o"
awk -v a="$tmp/libhugemm_util.a" '$1 == "util" {$3 = a} {print}' "$map" >"$tmp/layers.map"
if out=$(bash "$here/check_layers.sh" --map "$tmp/layers.map" --root "$root" \
           --allow "$here/layer_allowlist.txt"); then
  fail "an upward call passed: $out"
fi
grep -q "util's archive needs hugemm_close from api" <<<"$out" ||
  fail "the upward call was not named: $out"
echo "the layer check caught both planted violations"
