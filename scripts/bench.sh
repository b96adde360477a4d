#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: packages, a Release build, 16 GiB of 2M
# huge pages, then the pin benchmark with the seed's defaults (gup_test -m 16384 -r 10
# -n 512 -a -w -S), the kernel's own pin of the same buffer and the floor beside it:
# once with a page array (and refcount per 4K page for the before/after), once with
# folio spans. The huge pages reserved here are given back at the end.
#   scripts/bench.sh [extra hugemm bench pin flags, e.g. -m 4096]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

nr_2m_before=$(pool_count $((2 << 20)) nr_hugepages)
restore() {
  set_pool $((2 << 20)) "$nr_2m_before"
  say "huge pages given back: 2M pool at $(pool_count $((2 << 20)) nr_hugepages) again"
}
trap restore EXIT

"$HUGEMM_ROOT/scripts/setup.sh" --flavours release --pages-2m 8192 --pages-1g 0
hugemm="$HUGEMM_ROOT/build/release/runtime/cli/hugemm"
say "running: hugemm info"
"$hugemm" info
say "running: hugemm bench pin --compare=kernel,page $*"
"$hugemm" bench pin --compare=kernel,page "$@"
say "running: hugemm bench pin --output=folios --compare=kernel $*"
"$hugemm" bench pin --output=folios --compare=kernel "$@"
