# The targets table of scripts/bench-report.sh: each row computed from the number beside
# it, and a run whose JSON lacks a number the report needs stops the report.
# shellcheck shell=bash
# Needs lib.sh's die; target writes to the files $targets and $missed.

is_number() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }

# need FILE.json JQ-PATH...: each path is a number in the JSON, or the report stops.
need() {
  local json=$1 path
  shift
  for path in "$@"; do
    jq -e "($path) | numbers" "$json" >/dev/null 2>&1 || die "$json: no number at $path"
  done
}

# target NAME MEASURED OP LIMIT [UNIT]: a row of the targets table; OP is <= or >=. A
# missed target is named in $missed, with the factor it missed by; a measured value that
# is not a number (a key the run did not print) stops the report rather than pass.
target() {
  local name=$1 value=$2 op=$3 limit=$4 unit=${5:-x}
  is_number "$value" || die "target \"$name\": measured \"$value\" is not a number"
  [ "$op" = "<=" ] || [ "$op" = ">=" ] || die "target \"$name\": no operator $op"
  awk -v name="$name" -v v="$value" -v op="$op" -v l="$limit" -v u="$unit" '
    function fmt(x) { return (u == "x") ? sprintf("%.2fx", x) : sprintf("%.1f %s", x, u) }
    BEGIN {
      v += 0; l += 0
      ok = (op == "<=") ? (v <= l) : (v >= l)
      by = (op == "<=") ? v / l : l / v
      printf "| %s | %s %s | %s | %s |\n", name, op, fmt(l), fmt(v),
        ok ? "met" : sprintf("**missed**, by %.2fx", by)
      exit ok ? 0 : 1
    }' >>"$targets" || echo "$name" >>"$missed"
}
