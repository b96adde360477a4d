#!/usr/bin/env bash
# scripts/bench-targets.sh, the targets table of bench-report.sh: a row is met or missed
# as its number says, a miss names the factor, and a value a run did not print (empty,
# "null") stops the report instead of passing as met.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/lib.sh"
source "$root/scripts/bench-targets.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
targets="$work/targets.md"
missed="$work/missed"
: >"$targets"
: >"$missed"
failures=0
check() {  # check DESCRIPTION EXPECTED ACTUAL
  if [ "$2" != "$3" ]; then
    printf 'FAIL: %s\n  expected: %s\n  actual:   %s\n' "$1" "$2" "$3"
    failures=$((failures + 1))
  fi
}

target "small enough" 0.92 "<=" 1.1
target "too slow" 3.24 "<=" 2
target "fast enough" 267.22 ">=" 200
target "too few" 1.5 ">=" 1.8
target "bytes" 280 "<=" 64 B
target "exponent" 1.5e-01 "<=" 1
check "met <=" "| small enough | <= 1.10x | 0.92x | met |" "$(sed -n 1p "$targets")"
check "missed <=" "| too slow | <= 2.00x | 3.24x | **missed**, by 1.62x |" "$(sed -n 2p "$targets")"
check "met >=" "| fast enough | >= 200.00x | 267.22x | met |" "$(sed -n 3p "$targets")"
check "missed >=" "| too few | >= 1.80x | 1.50x | **missed**, by 1.20x |" "$(sed -n 4p "$targets")"
check "unit" "| bytes | <= 64.0 B | 280.0 B | **missed**, by 4.38x |" "$(sed -n 5p "$targets")"
check "exponent" "| exponent | <= 1.00x | 0.15x | met |" "$(sed -n 6p "$targets")"
check "missed list" "too slow,too few,bytes" "$(paste -sd, "$missed")"

# A value the run did not give stops the report: no row, exit 1, a message.
for value in "" null nan "1.2x"; do
  for op in "<=" ">="; do
    err=$( (target "absent" "$value" "$op" 2) 2>&1)
    rc=$?
    check "\"$value\" $op: exit" 1 "$rc"
    check "\"$value\" $op: message" 1 "$(grep -c 'target "absent": measured' <<<"$err")"
  done
done
check "no row for an absent value" 6 "$(wc -l <"$targets")"

printf '{"a":{"median":1.5},"b":null,"c":"text"}\n' >"$work/run.json"
(need "$work/run.json" .a.median) 2>/dev/null
check "need: a number" 0 $?
for path in .b .c .d .a.min; do
  (need "$work/run.json" .a.median "$path") 2>/dev/null
  check "need: $path" 1 $?
done

[ "$failures" = 0 ] && echo "bench targets: all checks passed"
exit $((failures > 0))
