#!/usr/bin/env bash
# doc/benchmarks.md, regenerated in one run on this machine: the pin benchmark on 2M and
# 1G pages (page array, folio spans, DMA segments, threads), the allocation and
# translation benchmarks, every target met or missed with its ratio, and a profile of the
# pin where a pin target is missed. Every ratio comes from one run of one command: each
# pin command runs HUGEMM_BENCH_RUNS times (3), and the report takes the run with the
# median of the ratio it is there for and lists that ratio for every run.
#
# It uses the huge pages already reserved and changes no pool: it needs MIB/2 free 2M
# pages and two free 1G pages (the 1G rows are left out when they are not free). Run it
# when the machine is otherwise idle (`uptime`): its ratios are only as good as that.
#   scripts/bench-report.sh [OUT.md]        (default doc/benchmarks.md)
#   HUGEMM_BENCH_MIB=4096 HUGEMM_BENCH_REPEATS=30 HUGEMM_BENCH_RUNS=3 scripts/bench-report.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

out=${1:-$HUGEMM_ROOT/doc/benchmarks.md}
mib=${HUGEMM_BENCH_MIB:-4096}
repeats=${HUGEMM_BENCH_REPEATS:-30}
hugemm="$HUGEMM_ROOT/build/release/runtime/cli/hugemm"
[ -x "$hugemm" ] || die "no release build: ./scripts/setup.sh --flavours release"
ninja -C "$HUGEMM_ROOT/build/release" hugemm_cli >/dev/null

free_2m=$(pool_count $((2 << 20)) free_hugepages)
[ "$free_2m" -ge $((mib / 2)) ] || die "$((mib / 2)) free 2M pages needed, $free_2m free"
free_1g=$(pool_count $((1 << 30)) free_hugepages)

source "$HUGEMM_ROOT/scripts/bench-targets.sh"  # need, target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What follows the "kept" marker in the report (the other benchmarks' sections, written
# by hand) is carried over as it is.
kept="$work/kept.md"
if [ -f "$out" ]; then sed -n '/^<!-- kept: /,$p' "$out" >"$kept"; else : >"$kept"; fi
run() {  # run NAME ARGS...: one JSON result in $work/NAME.json
  local name=$1
  shift
  say "hugemm $*"
  "$hugemm" "$@" --json >"$work/$name.json" 2>"$work/$name.err" ||
    die "hugemm $* failed: $(cat "$work/$name.err")"
  printf '%s\n' "hugemm $*" >"$work/$name.cmd"
}
get() { jq -r "$2" "$work/$1.json"; }  # get NAME JQ-PATH
cmd() { cat "$work/$1.cmd"; }
# run_median KEY NAME ARGS...: the command $runs times; NAME is the run whose KEY (a jq
# path to the ratio the command is there for) is the median, so that every number the
# report takes from NAME comes from one run, and one bad stretch of a shared machine
# neither makes nor breaks a target. $work/NAME.runs lists the runs' KEYs, in order.
runs=${HUGEMM_BENCH_RUNS:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "HUGEMM_BENCH_RUNS: a count of runs, not \"$runs\""
run_median() {
  local key=$1 name=$2 i values=() median
  shift 2
  for ((i = 1; i <= runs; i++)); do
    run "$name.$i" "$@"
    need "$work/$name.$i.json" "$key"
    values+=("$(get "$name.$i" "$key") $i")
  done
  median=$(printf '%s\n' "${values[@]}" | sort -g | sed -n "$(((runs + 1) / 2))p" | cut -d' ' -f2)
  cp "$work/$name.$median.json" "$work/$name.json"
  cp "$work/$name.$median.cmd" "$work/$name.cmd"
  for ((i = 1; i <= runs; i++)); do
    awk -v x="$(get "$name.$i" "$key")" 'BEGIN { printf "%.2fx\n", x }'
  done | paste -sd' ' >"$work/$name.runs"
  printf '%s\n' "$key" >"$work/$name.key"
}

pin=(bench pin -m "$mib" -r "$repeats")
# The page array's per-page comparison runs on its own: on an Intel Xeon (2 cores, a VM)
# its passes (about 15 ms of locked adds on the same folios, and an 8 MiB array of their
# own) slowed the page-array pin timed after them in the same repeat by up to 1.5x, and
# not the floor, which writes the same array.
run_median .pin_over_floor pages "${pin[@]}" -n 512 --output pages --compare kernel
run_median .per_page_over_per_folio pages_per_page "${pin[@]}" -n 512 --output pages \
  --compare page
run_median .pin_over_floor spans "${pin[@]}" -n 512 --output folios --compare kernel
run_median .pin_over_floor spans_all "${pin[@]}" -n -1 --output folios
run_median .pin_over_floor segments "${pin[@]}" -n 512 --output segments
run_median .threads_over_one_pin disjoint "${pin[@]}" -n 512 --output pages -j 2 --disjoint
run_median .threads_over_one_pin disjoint_spans "${pin[@]}" -n 512 --output folios -j 2 \
  --disjoint
run_median .threads_over_one_pin same "${pin[@]}" -n 512 --output pages -j 2
run_median .threads_over_one_pin same_spans "${pin[@]}" -n 512 --output folios -j 2
have_1g=0
if [ "$free_1g" -ge 2 ]; then
  have_1g=1
  pin_1g=(bench pin --page-size 1G -m 2048 -r "$repeats")
  run_median .pin_over_floor pages_1g "${pin_1g[@]}" -n 512 --output pages --compare kernel
  run_median .per_page_over_per_folio pages_per_page_1g "${pin_1g[@]}" -n 512 --output pages \
    --compare page
  run_median .pin_over_floor spans_1g "${pin_1g[@]}" -n -1 --output folios
fi
run alloc bench alloc
run translate bench translate

# --- targets -----------------------------------------------------------------------------
# Every number the report prints is in its run's JSON, and each pin run ran the size the
# report names (the benchmark runs a smaller buffer when the pool has become short).
pin_keys=(.size_mib .pin_us.median .unpin_us.median .floor_us .pin_over_floor)
for name in pages pages_per_page spans spans_all segments disjoint disjoint_spans same \
  same_spans; do
  need "$work/$name.json" "${pin_keys[@]}"
  [ "$(get "$name" .size_mib)" = "$mib" ] ||
    die "$(cmd "$name") ran $(get "$name" .size_mib) MiB, not $mib: fewer 2M pages were free"
done
need "$work/pages.json" .kernel_pin_us.median .kernel_unpin_us.median .kernel_pin_over_pin \
  .kernel_unpin_over_unpin
need "$work/pages_per_page.json" .per_page_pin_us.median .per_page_unpin_us.median \
  .per_page_over_per_folio
need "$work/spans.json" .kernel_pin_over_pin .call_floor_us .call_floor_over_floor \
  .pin_over_call_floor
need "$work/spans_all.json" .call_floor_us .call_floor_over_floor .pin_over_call_floor
for name in disjoint disjoint_spans same same_spans; do
  need "$work/$name.json" .one_thread_pin_us.median .wall_pin_us.median \
    .threads_over_one_pin .threads_over_one_unpin .threads_over_one_pin_best .cpu_scaling
done
need "$work/disjoint.json" .write_scaling
need "$work/disjoint_spans.json" .atomic_scaling
if [ "$have_1g" = 1 ]; then
  for name in pages_1g pages_per_page_1g spans_1g; do
    need "$work/$name.json" "${pin_keys[@]}"
    [ "$(get "$name" .size_mib)" = 2048 ] ||
      die "$(cmd "$name") ran $(get "$name" .size_mib) MiB, not 2048: fewer 1G pages were free"
  done
  need "$work/pages_1g.json" .kernel_pin_us.median .kernel_unpin_us.median .kernel_pin_over_pin
  need "$work/pages_per_page_1g.json" .per_page_pin_us.median .per_page_over_per_folio
fi
need "$work/alloc.json" .alloc_free_ns .mmap_fault_munmap_ns .speedup \
  '.metadata_bytes_per_gib["4K"].measured' '.metadata_bytes_per_gib["2M"].measured' \
  '.metadata_bytes_per_gib["1G"].model'
need "$work/translate.json" .translate_ns .pagemap_over_translate .translate_over_flat_array
# The 1G metadata is measured in a pool of one 1G page when one was free, else modelled.
meta_1g=$(get alloc '.metadata_bytes_per_gib["1G"].measured // .metadata_bytes_per_gib["1G"].model')
if [ "$(get alloc '.metadata_bytes_per_gib["1G"] | has("measured")')" = true ]; then
  meta_1g_how="a pool of one 1G page"
else
  meta_1g_how="the model: no 1G page was free to measure"
fi
targets="$work/targets.md"
missed="$work/missed"
: >"$missed"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
med() { get "$1" ".$2.median"; }

printf '| target | wanted | measured | met? |\n|---|---|---|---|\n' >"$targets"
target "folio spans / floor, -n 512" "$(get spans .pin_over_floor)" "<=" 2
target "folio spans / floor, -n -1" "$(get spans_all .pin_over_floor)" "<=" 2
target "kernel pin / folio-span pin" "$(get spans .kernel_pin_over_pin)" ">=" 200
target "page-array pin / floor" "$(get pages .pin_over_floor)" "<=" 1.1
target "page-array unpin / pin" "$(ratio "$(med pages unpin_us)" "$(med pages pin_us)")" "<=" 1
target "folio-span unpin / pin" "$(ratio "$(med spans unpin_us)" "$(med spans pin_us)")" "<=" 1
target "segment unpin / pin" "$(ratio "$(med segments unpin_us)" "$(med segments pin_us)")" "<=" 1
if [ "$have_1g" = 1 ]; then
  target "1G page-array unpin / pin" \
    "$(ratio "$(med pages_1g unpin_us)" "$(med pages_1g pin_us)")" "<=" 1
fi
target "2 threads / 1, disjoint folios, page array" "$(get disjoint .threads_over_one_pin)" ">=" 1.8
target "2 threads / 1, disjoint folios, folio spans" \
  "$(get disjoint_spans .threads_over_one_pin)" ">=" 1.8
target "metadata per 2M folio, all-in" "$(get alloc '.metadata_bytes_per_gib["2M"].measured / 512')" \
  "<=" 64 B
target "metadata per 1G folio, all-in" "$meta_1g" "<=" 64 B
target "metadata per 4K folio, all-in" \
  "$(get alloc '.metadata_bytes_per_gib["4K"].measured / 262144')" "<=" 64 B
target "allocate+free vs mmap+fault+munmap, 2M" "$(get alloc .speedup)" ">=" 100
target "pagemap read / batched translation" "$(get translate .pagemap_over_translate)" ">=" 100
target "batched translation / flat folio array" "$(get translate .translate_over_flat_array)" \
  "<=" 2

# A profile of the folio-span pin when one of its targets is missed: user time only, and
# enough repeats that the pins outweigh starting up; software clock samples (a VM may have
# no PMU). The symbols by self time, then the pin loop's hottest instructions.
profile="$work/profile.txt"
if grep -q "^folio spans" "$missed"; then
  say "profiling the folio-span pin (perf record)"
  perf record -q -e cpu-clock:u -F 4999 -o "$work/perf.data" -- \
    "$hugemm" bench pin -m "$mib" -r 3000 -n 512 --output folios >/dev/null 2>&1
  { perf report -q -i "$work/perf.data" --stdio --no-children -F overhead,sym 2>/dev/null || true; } |
    grep -v '^$' | head -6 | cut -c1-100 >"$profile" || true
  printf '\nhottest instructions of Pinner::PinFolios (%% of its samples):\n' >>"$profile"
  { perf annotate -i "$work/perf.data" --stdio -s hugemm::Pinner::PinFolios 2>/dev/null || true; } |
    grep -E '^ +[0-9]+\.[0-9]+ :' | sort -rn | head -6 | cut -c1-60 >>"$profile" || true
fi

# --- the document --------------------------------------------------------------------------
us() { awk -v x="$1" 'BEGIN { printf (x < 10 ? "%.2f" : "%.0f"), x }'; }
x() { awk -v x="$1" 'BEGIN { printf "%.2fx", x }'; }
pin_row() {  # pin_row LABEL NAME: one row of the pin table
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(us "$(med "$2" pin_us)")" \
    "$(us "$(med "$2" unpin_us)")" "$(us "$(get "$2" .floor_us)")" "$(x "$(get "$2" .pin_over_floor)")" \
    "$(x "$(ratio "$(med "$2" unpin_us)" "$(med "$2" pin_us)")")"
}
thread_row() {  # thread_row LABEL NAME
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(us "$(med "$2" one_thread_pin_us)")" \
    "$(us "$(med "$2" pin_us)")" "$(us "$(med "$2" wall_pin_us)")" "$(x "$(get "$2" .threads_over_one_pin)")" \
    "$(x "$(get "$2" .threads_over_one_pin_best)")" "$(x "$(get "$2" .threads_over_one_unpin)")"
}
why() {  # why NAME-PREFIX TEXT: a paragraph for a missed target
  if grep -q "^$1" "$missed"; then printf -- '- %s\n' "$2"; fi
}
commit=$(git -C "$HUGEMM_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
os=$(. /etc/os-release && echo "$PRETTY_NAME")

{
  cat <<EOF
# hugemm performance

Generated by \`scripts/bench-report.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit.
Machine: $(nproc) cores ($cpu), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $os, kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) when it started.
Every number is from one run of the command beside it. Absolute times on a shared machine
drift; ratios within one run hold better. Times are medians of the repeats, in µs. Each pin
command ran $runs times, and its numbers are from the run with the median of the ratio it
is there for (the ratios of all the runs are listed after the targets).

## The pin benchmark

\`\`\`
hugemm bench pin [gup_test flags] [hugemm flags]
  -m MiB  -r repeats  -n pages per call (-1 = all)  -a PIN | -u GET | -L PIN LONGTERM
  -w write | -W read-only  -S shared | -P private  -H hugetlb  -f /dev/daxX.Y or a hugetlbfs file
  -j threads  --disjoint  --backing=hugetlb|hugetlbfs|devdax|anon  --page-size=4K|2M|1G
  --refcount=folio|page  --output=pages|folios|segments  --compare=kernel[,page]  --json
\`\`\`

Each repeat times the following in turn, each after an untimed warm-up, so that a noisy neighbour slows them all alike:
- "get": pin the whole range in calls of \`-n\` pages; "put": unpin it all;
- the floor: for a page array, writing the same entries into the pin's own array; for folio spans and DMA segments, one atomic add per folio each call reaches;
- for folio spans, the call floor: the same atomic adds made by as many calls as the pin makes, each out of line as a pin is, writing its spans and returning a StatusOr the caller checks (what any pin with this signature costs at least);
- with \`--compare=page\`, the same pin with one reference per 4K page;
- with \`--compare=kernel\`, the kernel pinning the same buffer: io_uring fixed-buffer registration (\`pin_user_pages\` with \`FOLL_LONGTERM\`), register and unregister timed separately;
- with \`-j N\`, N threads pin at once, each the whole range (as gup_test), or with \`--disjoint\` each its own whole folios; one thread over the whole range is timed in the same repeat, and the threads' wall time against it is their aggregate throughput.

When fewer huge pages are free than \`-m\` asks for, it runs the largest size they hold, and with \`--backing anon\` at most half of the available memory, and says so on stderr (exit status 0; \`size_mib\` and the text's second line, after the command line, say what ran). It prints gup_test's line per repeat and thread (\`PIN_FAST_BENCHMARK: Time: get:N put:N us\`), then medians and ratios. \`--json\` prints one object with these keys:
- \`command\`, \`size_mib\`, \`page_size\`, \`backing\`, \`refcount\`, \`output\`, \`flags\`, \`pages_per_call\`, \`threads\`, \`disjoint\`, \`repeats\`;
- \`pin_us\` and \`unpin_us\`, each with \`min\` and \`median\`; \`floor_us\`, \`floor\` and \`pin_over_floor\`;
- folio spans: \`call_floor_us\`, \`call_floor_over_floor\` and \`pin_over_call_floor\`;
- \`per_page_pin_us\`, \`per_page_unpin_us\` and \`per_page_over_per_folio\`;
- \`kernel\` (what the kernel's pin is: io_uring fixed-buffer registration), \`kernel_pin_us\`, \`kernel_unpin_us\`, \`kernel_pin_over_pin\` and \`kernel_unpin_over_unpin\`;
- with threads (the floor's, the call floor's and the kernel's ratios are then against \`one_thread_pin_us\` and \`one_thread_unpin_us\`, the whole range as they cover it; \`pin_us\` is each thread's own): \`wall_pin_us\`, \`wall_unpin_us\`, \`one_thread_pin_us\`, \`one_thread_unpin_us\`, \`threads_over_one_pin\`, \`threads_over_one_unpin\` (medians), \`threads_over_one_pin_best\` and \`threads_over_one_unpin_best\` (the fastest repeat of each), \`cpu_scaling\` (the same threads running a compute loop, against one: the control), \`write_scaling\` (the same threads writing a page array's worth of entries, each its part, against one writing it all: the memory's control) and \`atomic_scaling\` (the same threads each making the floor's atomic add per folio, a few sweeps, on its own folios, against one thread on all of them: the locked instructions' control).

\`scripts/plot-pin.sh\` plots pin time against size from 1 MiB to 16 GiB (it grows the 2M pool for that, and gives the pages back). The benchmark also runs on a device in the VM: \`tests/vm/run-in-vm.sh --align 2M -- build/release/runtime/cli/hugemm bench pin -f /dev/dax0.0 -m 1024\` (under TCG its times say little, but it runs). Google Benchmark microbenchmarks (\`build/release/perf/hugemm_micro\`) time translate, folio get/put, allocate/free, and pin/unpin of one folio and of a range, each beside its baseline.

### $mib MiB of 2M hugetlb pages, PIN|WRITE, 512 pages per call

| output | pin | unpin | floor | pin / floor | unpin / pin |
|---|---|---|---|---|---|
$(pin_row "page array" pages)
$(pin_row "folio spans" spans)
$(pin_row "folio spans, \`-n -1\`" spans_all)
$(pin_row "DMA segments" segments)

- One reference per 4K page (page array, its own run: the fifth command below): pin $(us "$(med pages_per_page per_page_pin_us)"), unpin $(us "$(med pages_per_page per_page_unpin_us)"); per page / per folio = $(x "$(get pages_per_page .per_page_over_per_folio)"). It runs apart from the page-array row: on this kind of machine its passes have slowed the page-array pin timed after them in the same repeat by up to 1.5x (not the floor, which writes the same array).
- The kernel, io_uring registration of the same buffer: register $(us "$(med pages kernel_pin_us)"), unregister $(us "$(med pages kernel_unpin_us)"); kernel / hugemm page array = $(x "$(get pages .kernel_pin_over_pin)") pin, $(x "$(get pages .kernel_unpin_over_unpin)") unpin; kernel / folio spans = $(x "$(get spans .kernel_pin_over_pin)") pin (its own run).
- One folio per call against the whole range in one call (folio spans), the pin medians of two runs (the second and third commands below): $(x "$(ratio "$(med spans pin_us)" "$(med spans_all pin_us)")").
- The call floor of folio spans (the floor's atomic adds made by as many out-of-line calls as the pin makes, each writing its spans and returning a StatusOr): \`-n 512\` $(us "$(get spans .call_floor_us)") us, $(x "$(get spans .call_floor_over_floor)") the floor, pin / call floor $(x "$(get spans .pin_over_call_floor)"); \`-n -1\` $(us "$(get spans_all .call_floor_us)") us, $(x "$(get spans_all .call_floor_over_floor)") the floor, pin / call floor $(x "$(get spans_all .pin_over_call_floor)").

Commands: \`$(cmd pages)\`, \`$(cmd spans)\`, \`$(cmd spans_all)\`, \`$(cmd segments)\`, \`$(cmd pages_per_page)\`.

### Two threads

| run | one thread, pin | each thread, pin | two threads, wall pin | throughput, pin | pin, fastest repeats | throughput, unpin |
|---|---|---|---|---|---|---|
$(thread_row "page array, disjoint folios" disjoint)
$(thread_row "folio spans, disjoint folios" disjoint_spans)
$(thread_row "page array, the same folios" same)
$(thread_row "folio spans, the same folios" same_spans)

Control, in each of these runs: a compute loop that touches no memory, on two threads against one, runs $(x "$(get disjoint .cpu_scaling)"), $(x "$(get disjoint_spans .cpu_scaling)"), $(x "$(get same .cpu_scaling)") and $(x "$(get same_spans .cpu_scaling)") of one thread's throughput: what this machine gave two threads at all while the runs lasted. A second control, two threads each writing half of an array as large as the page array (8 bytes per 4K page) against one thread writing it all, runs $(x "$(get disjoint .write_scaling)") in the page-array disjoint run: what the memory gave the page array's own writes. A third, two threads each making the floor's atomic add on every folio of its own half (four sweeps, so that it lasts about as long as a pin) against one thread on all of them, runs $(x "$(get disjoint_spans .atomic_scaling)") in the folio-span disjoint run: what the machine gave two threads' locked instructions, which is all a folio-span pin does to memory that is not in its thread's cache.

On disjoint folios the threads share no line they write: a pin writes its folio's descriptor (56 bytes, packed: neighbours share a line only where the threads' parts meet) and thread-local state only. On the same folios both threads' atomics hit the same descriptors, and a grab's compare-and-swap retries when the other thread changed the word: that is the contention the last two rows show.
Commands: \`$(cmd disjoint)\`, \`$(cmd disjoint_spans)\`, \`$(cmd same)\`, \`$(cmd same_spans)\`.
EOF
  if [ "$have_1g" = 1 ]; then
    cat <<EOF

### 2048 MiB of 1G hugetlb pages

| output | pin | unpin | floor | pin / floor | unpin / pin |
|---|---|---|---|---|---|
$(pin_row "page array, \`-n 512\`" pages_1g)
$(pin_row "folio spans, \`-n -1\`" spans_1g)

- One reference per 4K page (its own run): pin $(us "$(med pages_per_page_1g per_page_pin_us)"); per page / per folio = $(x "$(get pages_per_page_1g .per_page_over_per_folio)"). The kernel: register $(us "$(med pages_1g kernel_pin_us)"), unregister $(us "$(med pages_1g kernel_unpin_us)"); kernel / hugemm = $(x "$(get pages_1g .kernel_pin_over_pin)") pin.

Commands: \`$(cmd pages_1g)\`, \`$(cmd spans_1g)\`, \`$(cmd pages_per_page_1g)\`.
EOF
  else
    printf '\n(1G pages: not run, %s free 1G pages where 2 are needed.)\n' "$free_1g"
  fi
  cat <<EOF

## Allocation, metadata and translation

\`hugemm bench alloc [--iterations N] [--json]\` times N allocate+free pairs (default 200000). Its \`--json\` keys: \`alloc_free_ns\`, \`mmap_fault_munmap_ns\`, \`speedup\`, \`alloc_free_zeroed_ns\`, \`metadata_bytes_per_folio\` (2M folios, all-in), \`descriptor_bytes\`, \`zero_2m_memset_ns\`, \`zero_2m_nontemporal_ns\`, \`zero_2m_cold_memset_ns\`, \`zero_2m_cold_nontemporal_ns\`, \`zero_1g_memset_ns\` and \`zero_1g_nontemporal_ns\` (only when a 1G page was free), \`metadata_bytes_per_gib\` (per folio size: \`model\`, \`measured\`, \`kernel\`, \`kernel_hvo\`), \`iterations\`.
\`hugemm bench translate --json\` keys: \`geometry\`, \`translate_ns\`, \`translate_full_ns\`, \`translate_single_ns\`, \`batch\`, \`translate_real_ns\`, \`pagemap_ns\`, \`flat_array_ns\`, \`flat_pfn_array_ns\`, \`pagemap_over_translate\`, \`translate_over_flat_array\`, \`translate_over_flat_pfn_array\`, \`lookups\`, \`address_pool\`, \`pagemap_buffer\`.

- \`$(cmd alloc)\`: allocate+free of a cached 2M folio $(awk -v x="$(get alloc .alloc_free_ns)" 'BEGIN { printf "%.1f", x }') ns, mmap(MAP_HUGETLB)+touch+munmap of 2M $(awk -v x="$(get alloc .mmap_fault_munmap_ns)" 'BEGIN { printf "%.0f", x }') ns: $(x "$(get alloc .speedup)").
- Metadata per folio, all-in (everything \`PoolStats::metadata_bytes\` counts: descriptors, extent records, index entries, split records; \`metadata_bytes_per_folio\` is the 2M figure, in a 1 GiB pool grown from empty): 4K $(get alloc '.metadata_bytes_per_gib["4K"].measured / 262144 | . * 10 | round / 10') B, 2M $(get alloc '.metadata_bytes_per_gib["2M"].measured / 512 | . * 100 | round / 100') B, 1G $meta_1g B ($meta_1g_how); the kernel's \`struct page\` is 64 B per 4K page (with HVO, 4 KiB per 2M and per 1G folio).
- \`$(cmd translate)\`: batched translation $(awk -v x="$(get translate .translate_ns)" 'BEGIN { printf "%.2f", x }') ns per address; pagemap / translation $(x "$(get translate .pagemap_over_translate)"); translation / flat folio array $(x "$(get translate .translate_over_flat_array)").

## Targets

EOF
  cat "$targets"
  printf '\nEach pin command ran %s times; the report shows the run with the median ratio. The ratio in each run, in order:\n\n| command | ratio | runs |\n|---|---|---|\n' "$runs"
  for name in pages pages_per_page spans spans_all segments disjoint disjoint_spans same \
    same_spans pages_1g pages_per_page_1g spans_1g; do
    [ -f "$work/$name.runs" ] || continue
    printf '| `%s` | `%s` | %s |\n' "$(cmd "$name")" "$(cat "$work/$name.key")" "$(cat "$work/$name.runs")"
  done
  if [ -s "$missed" ]; then
    printf '\nWhy the misses:\n'
    why "folio spans / floor, -n 512" "**Folio spans, -n 512.** Each call pins one 2M folio. The call's shape is not what costs: the call floor (the same atomic adds made by as many out-of-line calls, each writing its span and returning a StatusOr) runs $(x "$(get spans .call_floor_over_floor)") the floor. The pin's own work runs $(x "$(get spans .pin_over_call_floor)") the call floor: the read section that keeps the table and the folio alive (liburcu's reader counter, written on entry and on exit), the walk hint checked against the table's generation, the entry's read, the grab's checks (a load and a compare-and-swap that refuses a free folio or an overflow, where the floor adds blindly), the re-check of the entry and the folio check. A pin that stays inside the leaf this thread's last pin reached is one straight line (\`PinOneLeaf\`) that never descends, but it does store before its grab: the six registers the call saves on entry, the reader counter, and the grab's delta that the compiler keeps on the stack. A locked instruction waits for every store still queued before it, about 0.15 to 0.2 ns each (measured on an Intel Xeon). That is about $(awk -v a="$(med spans pin_us)" -v n="$mib" 'BEGIN { printf "%.0f", a * 1000 / (n / 2) }') ns per call here against about $(awk -v a="$(get spans .floor_us)" -v n="$mib" 'BEGIN { printf "%.0f", a * 1000 / (n / 2) }') ns for the floor's atomic add; 2x would leave about $(awk -v a="$(get spans .floor_us)" -v c="$(get spans .call_floor_us)" -v n="$mib" 'BEGIN { printf "%.1f", (2 * a - c) * 1000 / (n / 2) }') ns per call for all of the above. Throwaway builds bound what the parts are worth, each beside the code as it is in one sitting. On an AMD EPYC (main at 3.16x to 3.65x): a blind fetch-and-add in place of the compare-and-swap (unsafe: it can revive a free folio) ran 2.97x to 3.09x, and the same with no read section either (unsafe again: a table freed under the pin) 2.62x to 2.69x. On an Intel Xeon (main at 2.45x to 2.66x): the blind add alone 2.40x to 2.42x; no read section alone 2.22x to 2.33x; the one-leaf pin called straight from the benchmark's loop, with no StatusOr and no PinFolios frame around it, 2.25x to 2.37x. None reaches 2x: the rest is the chain of dependent loads (hint, entry, descriptor) that every call walks before and after its one atomic. The same pin of the whole range in one call is the \`-n -1\` row."
    why "page-array pin / floor" "**Page array, pin / floor.** The floor writes the same entries (8 bytes per 4K page) into the same array, and nothing else; the pin adds, per call (one 2M folio at \`-n 512\`), the read section, the lookup from the walk hint, the grab and the re-check: about $(awk -v a="$(med pages pin_us)" -v b="$(get pages .floor_us)" -v n="$mib" 'BEGIN { printf "%.0f", (a - b) * 1000 / (n / 2) }') ns per call here, against $(awk -v b="$(get pages .floor_us)" -v n="$mib" 'BEGIN { printf "%.0f", b * 1000 / (n / 2) }') ns for the floor's 512 entries. Most of it is the grab's locked instruction, which waits until the entries the previous call wrote (4 KiB: 64 lines of an array larger than the L2) are in the cache, where the floor's stores stream with nothing waiting on them: the pin follows the memory's latency under the machine's load, the floor its bandwidth, and the ratio moves with the load (the runs listed above). On an Intel Xeon (2 cores, a VM), a throwaway floor that made the same one atomic add per folio before writing its entries ran as long as the pin (pin / that floor 0.99x to 1.01x, three runs), and the command itself gave 0.88x to 1.01x (three runs) on a quiet stretch."
    why "page-array unpin / pin" "**Page array, unpin / pin.** The unpin reads the entries back and drops one reference per run of entries of one folio, each drop a locked instruction like the pin's grab; both wait on the same 8 MiB array, so on a loaded machine both follow its latency and their ratio comes near 1."
    why "folio spans / floor, -n -1" "**Folio spans, -n -1.** Per folio the pin does the leaf lookup (from the walk hint), the grab (a load and a compare-and-swap where the floor does one locked add), the re-check of the entry, the folio check and the span write."
    why "kernel pin / folio-span pin" "**Against the kernel.** The kernel's side is io_uring's registration of the same buffer (pin_user_pages with FOLL_LONGTERM, kernel $(uname -r)), which also takes one reference per folio, but fills the array of one entry per 4K page that pin_user_pages returns, then accounts the memory and builds the buffer's bvec table. In the folio-span run it took $(us "$(med spans kernel_pin_us)") us, about $(awk -v a="$(med spans kernel_pin_us)" -v n="$mib" 'BEGIN { printf "%.0f", a * 1000 / (n / 2) }') ns per 2M folio, and hugemm's pin about $(awk -v a="$(med spans pin_us)" -v n="$mib" 'BEGIN { printf "%.0f", a * 1000 / (n / 2) }') ns per call of one folio; 200x would need about $(awk -v a="$(med spans kernel_pin_us)" -v n="$mib" 'BEGIN { printf "%.1f", a * 1000 / (n / 2) / 200 }') ns per call, where the call floor alone (the floor's atomic add in an out-of-line call) takes $(awk -v c="$(get spans .call_floor_us)" -v n="$mib" 'BEGIN { printf "%.1f", c * 1000 / (n / 2) }') ns. The pin's own cost is the -n 512 paragraph above; the kernel's varies between runs with what else the machine does (the page-array run's registration of the same buffer took $(us "$(med pages kernel_pin_us)") us)."
    why "2 threads" "**Two threads.** The machine has $(nproc) cores shared with other work, and two threads get two cores only when nothing else runs. The control row under the threads table says how many they got: the pins scale as far as a loop that touches no memory does. A page-array pin writes 8 bytes per 4K page (8 MiB per pass of 4 GiB), so its threads also share the memory's write bandwidth: the second control, the same writes without the pins, bounds what the page array can scale to. The third control, the floor's atomic adds on each thread's own folios, bounds the folio spans alike: in the folio-span disjoint run it gave two threads $(x "$(get disjoint_spans .atomic_scaling)") of one thread's throughput, and the pins $(x "$(get disjoint_spans .threads_over_one_pin)"). The \"each thread, pin\" column shows it too: when the wall time is near the sum of the two threads' own times rather than near one of them, they ran one after the other. A repeat lasts tens to hundreds of microseconds, so one preemption of either thread costs the whole repeat, and the wall time also counts how far apart the two threads start and end: the folio-span run's threads pinned for $(us "$(med disjoint_spans pin_us)") us each (one thread over the whole range: $(us "$(med disjoint_spans one_thread_pin_us)") us: their own times alone make $(x "$(ratio "$(med disjoint_spans one_thread_pin_us)" "$(med disjoint_spans pin_us)")") one thread's throughput), in a wall time of $(us "$(med disjoint_spans wall_pin_us)") us. The \"fastest repeats\" column sets the fastest repeat of the threads against the fastest of one thread: what the pins scale to when the machine gives both threads their cores for a whole repeat."
    why "metadata per 1G" "**Metadata, 1G.** A descriptor is 56 bytes, and an unsplit huge folio needs nothing else of its own: its extent's descriptors sit in one array found from the extent. On top comes the extent's record (the mapping, its index entry, its head-array entry: about 224 B), shared by the extent's pages. A pool grows from one page by what it holds, so a 1G folio in a pool of one page carries a whole record; 64 B per 1G folio needs extents of 28 pages or more, which a machine with a few 1G pages never maps."
    why "metadata per 2M" "**Metadata, 2M.** The 56-byte descriptor plus the extents' records shared by their folios (1 GiB of 2M pages is 10 extents)."
    why "metadata per 4K" "**Metadata, 4K.** The 56-byte descriptor in its run, a live bit, and the region's record and run records shared by its 512 pages."
    if [ -s "$profile" ]; then
      printf '\nWhere the folio-span pin spends its time (`perf record -e cpu-clock:u` of `hugemm bench pin -m %s -r 3000 -n 512 --output folios`; the pin loop is inlined into `Pinner::PinFolios`, the floor is `Floor::RunOnce`, unpin is `UnpinSpans`, `Pass::Pin` is the calls):\n\n```\n' "$mib"
      cat "$profile"
      printf '```\n'
    fi
  fi
} >"$out"
if [ -s "$kept" ]; then
  printf '\n' >>"$out"
  cat "$kept" >>"$out"
fi
say "wrote $out"
