#!/usr/bin/env bash
# Pin time vs size, 1 MiB to 16 GiB of 2M pages, four ways, one PNG:
#   refcount per 4K page (page array), per folio (page array), folio spans, and the
#   kernel (io_uring fixed-buffer registration of the same buffer).
# Each size is two `hugemm bench pin` runs (page array with per-page references and
# the kernel beside it; folio spans with the kernel beside them), so every ratio comes
# from one run. It sets up what it needs (packages, a Release build, 16 GiB of 2M pages,
# given back at the end) and prints the times and ratios as a table.
#   scripts/plot-pin.sh [OUT.png] [MAX_MIB]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

out=${1:-$HUGEMM_ROOT/build/pin-vs-size.png}
max_mib=${2:-16384}
nr_2m_before=$(pool_count $((2 << 20)) nr_hugepages)
data=$(mktemp)
restore() {
  rm -f "$data"
  set_pool $((2 << 20)) "$nr_2m_before"
}
trap restore EXIT
"$HUGEMM_ROOT/scripts/setup.sh" --flavours release --pages-2m $(( (max_mib + 1) / 2 )) --pages-1g 0
hugemm="$HUGEMM_ROOT/build/release/runtime/cli/hugemm"

json_get() { jq -r ".$1"; }  # json_get KEY.SUB < json

mib=1
printf '# MiB per_page_us per_folio_pages_us folio_spans_us kernel_us pages_floor_us spans_floor_us kernel_spans_run_us\n' >"$data"
while [ "$mib" -le "$max_mib" ]; do
  repeats=5
  [ "$mib" -le 64 ] && repeats=20
  pages_json=$("$hugemm" bench pin -m "$mib" -r "$repeats" -n 512 --output=pages \
    --compare=kernel,page --json)
  spans_json=$("$hugemm" bench pin -m "$mib" -r "$repeats" -n 512 --output=folios \
    --compare=kernel --json)
  per_page=$(json_get per_page_pin_us.median <<<"$pages_json")
  per_folio=$(json_get pin_us.median <<<"$pages_json")
  spans=$(json_get pin_us.median <<<"$spans_json")
  kernel=$(json_get kernel_pin_us.median <<<"$pages_json")
  pages_floor=$(json_get floor_us <<<"$pages_json")
  spans_floor=$(json_get floor_us <<<"$spans_json")
  kernel_spans=$(json_get kernel_pin_us.median <<<"$spans_json")  # kernel / spans: one run
  printf '%s %s %s %s %s %s %s %s\n' "$mib" "$per_page" "$per_folio" "$spans" "$kernel" \
    "$pages_floor" "$spans_floor" "$kernel_spans" | tee -a "$data"
  mib=$((mib * 4))
done

say "pin time (us, median) by size; ratios from the same run:"
printf '| MiB | per 4K page | per folio, page array | folio spans | kernel | per page / per folio | page array / floor | spans / floor | kernel / page array | kernel / spans |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
awk '!/^#/ { printf "| %s | %.1f | %.1f | %.2f | %.1f | %.1fx | %.2fx | %.1fx | %.1fx | %.0fx |\n", $1, $2, $3, $4, $5, $2 / $3, $3 / $6, $4 / $7, $5 / $3, $8 / $4 }' "$data"

gnuplot <<GP
set terminal pngcairo size 1000,650 noenhanced font ",11"
set output "$out"
set title "hugemm pin of 2M hugetlb pages, -n 512, median of repeats ($(date -u +%Y-%m-%d), $(nproc) cores)"
set xlabel "pinned size (MiB)"
set ylabel "pin time (us)"
set logscale xy
set grid
set key top left
plot "$data" using 1:5 with linespoints title "kernel: io_uring fixed-buffer registration", \
     "$data" using 1:2 with linespoints title "hugemm, refcount per 4K page, page array", \
     "$data" using 1:3 with linespoints title "hugemm, refcount per folio, page array", \
     "$data" using 1:4 with linespoints title "hugemm, folio spans"
GP
say "plot: $out"
