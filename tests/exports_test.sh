#!/usr/bin/env bash
# libhugemm.so exports the public API and nothing else (nm -D): the C API declared in
# hugemm.h, and namespace hugemm's CamelCase types and functions; no *_internal or sys
# symbol, no template instance of another namespace. And its SONAME is libhugemm.so.<major>.
#   exports_test.sh <libhugemm.so> <include/hugemm/hugemm.h> <major version>
set -euo pipefail
lib=$1 header=$2 major=$3
failed=0
fail() { echo "FAIL: $*"; failed=1; }

soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = "libhugemm.so.$major" ] || fail "SONAME is \"$soname\", not libhugemm.so.$major"

# The rule of cmake/libhugemm.map, on mangled names: hugemm_*, or a name of namespace
# hugemm that starts with a capital (or an operator), or its vtable, typeinfo or thunk.
mangled=$(nm -D --defined-only "$lib" | awk '{print $3}')
public='^(hugemm_[a-z0-9_]+$|_Z(T[VIS]|T[hv][^N]*)?NK?6hugemm([0-9]+[A-Z]|[a-z][a-zA-Z]))'
while IFS= read -r sym; do
  [ -n "$sym" ] || continue
  grep -Eq "$public" <<<"$sym" || fail "exports a non-public symbol: $(c++filt "$sym")"
done <<<"$mangled"
exported=$(c++filt <<<"$mangled")

# Every function of the C API, and the C++ facade's entry point.
for fn in $(sed -n 's/^[a-z_ *]*\b\(hugemm_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u); do
  grep -qx "$fn" <<<"$exported" || fail "does not export $fn, declared in hugemm.h"
done
grep -q '^hugemm::Runtime::Open(' <<<"$exported" || fail "does not export hugemm::Runtime::Open"

count=$(wc -l <<<"$exported")
[ "$failed" = 0 ] || exit 1
echo "libhugemm.so ($soname) exports $count symbols, all public"
