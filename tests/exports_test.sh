#!/usr/bin/env bash
# libhugemm.so exports the public API and nothing else (nm -D): the C API declared in
# hugemm.h, and namespace hugemm's CamelCase types and functions that an installed header
# (include/hugemm/) declares; no *_internal or sys symbol, no template instance of another
# namespace. Besides, namespace hugemm::bridge, which no installed header declares: what
# libhugemm.so exports for libhugemm-verbs.so alone, no API. And its SONAME is
# libhugemm.so.<major>. The same holds for libhugemm-verbs.so and hugemm_verbs.h, with its
# own entry point.
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
# hugemm that starts with a capital (or an operator), or its vtable, typeinfo or thunk; or
# a name of namespace hugemm::bridge. A capitalised name must be one an installed header
# declares (a class, struct, union or enum, a using alias, or a function): the map's rule
# would export an internal one too.
headers=("$(dirname "$header")"/*.h)
mangled=$(nm -D --defined-only "$lib" | awk '{print $3}')
public='^(hugemm_[a-z0-9_]+$|_Z(T[VIS]|T[hv][^N]*)?NK?6hugemm([0-9]+[A-Z]|[a-z][a-zA-Z]))'
bridge='^_Z(T[VIS]|T[hv][^N]*)?NK?6hugemm6bridge[0-9]'
declare -A declared=()
bridged=0
while IFS= read -r sym; do
  [ -n "$sym" ] || continue
  if [[ $sym =~ $bridge ]]; then
    bridged=$((bridged + 1))
    continue
  fi
  if ! [[ $sym =~ $public ]]; then
    fail "exports a non-public symbol: $(c++filt "$sym")"
    continue
  fi
  # The name of namespace hugemm the symbol belongs to: <length><name> after 6hugemm.
  [[ ${sym#*6hugemm} =~ ^([0-9]+)(.*) ]] || continue  # an operator
  top=${BASH_REMATCH[2]:0:${BASH_REMATCH[1]}}
  if [ -z "${declared[$top]+set}" ]; then
    declared[$top]=no
    grep -Eq "\<((class|struct|union|enum|using) +$top\>|$top *\()" "${headers[@]}" &&
      declared[$top]=yes
  fi
  [ "${declared[$top]}" = yes ] ||
    fail "exports hugemm::$top, which no installed header declares: $(c++filt "$sym")"
done <<<"$mangled"
exported=$(c++filt <<<"$mangled")

# Every function of the C API, and the C++ facade's entry point.
for fn in $(sed -n 's/^[a-z_ *]*\b\(hugemm_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u); do
  grep -qx "$fn" <<<"$exported" || fail "does not export $fn, declared in $(basename "$header")"
done
grep -q "^$entry(" <<<"$exported" || fail "does not export $entry"

count=$(wc -l <<<"$exported")
[ "$failed" = 0 ] || exit 1
extra=""
[ "$bridged" = 0 ] || extra=" but $bridged of hugemm::bridge, for libhugemm-verbs.so"
echo "$name ($soname) exports $count symbols, all public$extra"
