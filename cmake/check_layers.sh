#!/usr/bin/env bash
# The layer check: fails when a layer reaches upward.
#
#   check_layers.sh --map build/<flavour>/layers.map --root <source dir>
#                   [--allow cmake/layer_allowlist.txt] [--includes-only]
#
# The map (written by CMake, cmake/HugemmLayers.cmake) has one line per layer:
#   <name> <folder> <archive or -> deps=<a,b> headers=<x.h,y.h>
# A layer may use itself and what it links, directly or through the layers it links.
#
# 1. Includes. Every file under a layer's folder and every public header the layer
#    implements belongs to the layer; each `#include "runtime/<layer>/..."`,
#    `#include "perf/..."` or `#include "hugemm/x.h"` in it must name a header of a layer
#    it may use. (The include roots already make an internal header of another layer
#    impossible to compile; public headers are visible to all, so this is where they are
#    held to the rule.) A public header that no layer claims is an error too.
# 2. Symbols. Every hugemm symbol a layer's archive leaves undefined must be defined by
#    the layer itself or by a layer it may use.
#
# The allowlist tolerates named upward edges: `include <file> <header>` and
# `symbols <from layer> <to layer>`, one per line, # comments.
set -euo pipefail

map="" root="" allow="" includes_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --map) map=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --allow) allow=$2; shift 2 ;;
    --includes-only) includes_only=1; shift ;;
    *) echo "check_layers.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -r "$map" ] && [ -d "$root" ] || { echo "usage: check_layers.sh --map FILE --root DIR" >&2; exit 2; }

declare -A dir_of archive_of deps_of layer_of_dir layer_of_header allowed_include allowed_symbols
layers=()
while read -r name dir archive deps headers; do
  [ -n "$name" ] || continue
  layers+=("$name")
  dir_of[$name]=$dir
  archive_of[$name]=$archive
  deps_of[$name]=${deps#deps=}
  layer_of_dir[$dir]=$name
  IFS=, read -ra hs <<<"${headers#headers=}"
  for h in "${hs[@]}"; do
    [ -n "$h" ] && layer_of_header[hugemm/$h]=$name
  done
done <"$map"

if [ -n "$allow" ]; then
  while read -r kind a b; do
    case "$kind" in
      include) allowed_include["$a $b"]=1 ;;
      symbols) allowed_symbols["$a $b"]=1 ;;
      "" | \#*) ;;
      *) echo "check_layers.sh: $allow: unknown entry \"$kind\"" >&2; exit 2 ;;
    esac
  done < <(sed 's/#.*//' "$allow")
fi

# uses[L] = " L dep dep-of-dep ... ": the layers L may use.
declare -A uses
closure() {
  local l=$1 out=" $1 " d
  IFS=, read -ra ds <<<"${deps_of[$l]}"
  for d in "${ds[@]}"; do
    [ -n "$d" ] || continue
    [ -n "${uses[$d]:-}" ] || closure "$d"
    out+="${uses[$d]} "
  done
  uses[$l]=$out
}
for l in "${layers[@]}"; do closure "$l"; done

violations=0
report() {
  echo "layer violation: $*"
  violations=$((violations + 1))
}

# The layer of an included path, or "" for a header outside the layers (absl, tests).
owner_of_include() {
  local inc=$1
  case "$inc" in
    hugemm/*) echo "${layer_of_header[$inc]:-?}" ;;
    runtime/* | perf/*)
      local d=${inc%/*}
      while [ -n "$d" ] && [ -z "${layer_of_dir[$d]:-}" ] && [ "$d" != "${d%/*}" ]; do d=${d%/*}; done
      echo "${layer_of_dir[$d]:-?}" ;;
    *) echo "" ;;
  esac
}

check_file() {
  local layer=$1 file=$2 inc owner
  while read -r inc; do
    owner=$(owner_of_include "$inc")
    [ -n "$owner" ] || continue
    if [ "$owner" = "?" ]; then
      report "$file includes $inc, which belongs to no layer"
    elif [[ "${uses[$layer]}" != *" $owner "* ]] && [ -z "${allowed_include["$file $inc"]:-}" ]; then
      report "$file ($layer) includes $inc ($owner), which $layer does not link"
    fi
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$root/$file")
}

cd "$root"
for l in "${layers[@]}"; do
  while read -r f; do
    check_file "$l" "$f"
  done < <(find "${dir_of[$l]}" -type f \( -name '*.h' -o -name '*.cc' -o -name '*.c' \) | sort)
done
for f in include/hugemm/*.h; do
  h=hugemm/${f#include/hugemm/}
  if [ -z "${layer_of_header[$h]:-}" ]; then
    report "$f belongs to no layer (add it to PUBLIC_HEADERS in its layer's CMakeLists.txt)"
  else
    check_file "${layer_of_header[$h]}" "$f"
  fi
done

if [ "$includes_only" = 0 ]; then
  # hugemm's own symbols, mangled: in namespace hugemm (functions, members, vtables,
  # typeinfo, thunks) or the C API. Template instances of other namespaces over hugemm
  # types are left out: any layer may instantiate them.
  own='^(hugemm_|_Z(TV|TI|TS|Th[n0-9_]*)?NK?6hugemm)'
  declare -A definer
  for l in "${layers[@]}"; do
    a=${archive_of[$l]}
    [ "$a" != - ] || continue
    [ -r "$a" ] || { echo "check_layers.sh: $a is missing (build first)" >&2; exit 2; }
    while read -r sym; do
      [ -n "${definer[$sym]:-}" ] || definer[$sym]=$l
    done < <(nm -g --defined-only --format=posix "$a" 2>/dev/null | awk '$2 != "U" {print $1}' |
             grep -E "$own" | sort -u)
  done
  for l in "${layers[@]}"; do
    a=${archive_of[$l]}
    [ "$a" != - ] || continue
    while read -r sym; do
      d=${definer[$sym]:-}
      [ -n "$d" ] || continue  # defined by no layer: the linker will say so
      if [[ "${uses[$l]}" != *" $d "* ]] && [ -z "${allowed_symbols["$l $d"]:-}" ]; then
        report "$l's archive needs $(c++filt "$sym") from $d, which $l does not link"
      fi
    done < <(nm -g --undefined-only --format=posix "$a" 2>/dev/null | awk '{print $1}' |
             grep -E "$own" | sort -u)
  done
fi

if [ "$violations" -gt 0 ]; then
  echo "$violations layer violation(s): a layer may use only itself and the layers it links"
  exit 1
fi
echo "layers: ${#layers[@]} checked (${layers[*]}), no layer reaches upward"
