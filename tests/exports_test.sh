#!/usr/bin/env bash
# libhugemm.so exports the public API and nothing else (nm -D): the C API declared in
# hugemm.h, and namespace hugemm's CamelCase types and functions; no *_internal or sys
# symbol, no template instance of another namespace. And its SONAME is libhugemm.so.<major>.
# The same holds for libhugemm-verbs.so and hugemm_verbs.h, with its own entry point.
#   exports_test.sh <libNAME.so> <C header> <major version> [<C++ entry point>]
set -euo pipefail
lib=$1 header=$2 major=$3 entry=${4:-hugemm::Runtime::Open}
failed=0
fail() { echo "FAIL: $*"; failed=1; }

name=$(basename "$lib")
want="${name%%.so*}.so.$major"
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = "$want" ] || fail "SONAME is \"$soname\", not $want"

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
  grep -qx "$fn" <<<"$exported" || fail "does not export $fn, declared in $(basename "$header")"
done
grep -q "^$entry(" <<<"$exported" || fail "does not export $entry"

count=$(wc -l <<<"$exported")
[ "$failed" = 0 ] || exit 1
echo "$name ($soname) exports $count symbols, all public"
