#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: packages, a Release build, huge pages,
# then hugemm info and the demo that maps and checks a 2M and a 1G page. Huge pages
# reserved here are given back at the end.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

nr_2m_before=$(pool_count $((2 << 20)) nr_hugepages)
nr_1g_before=$(pool_count $((1 << 30)) nr_hugepages)
restore() {
  set_pool $((2 << 20)) "$nr_2m_before"
  set_pool $((1 << 30)) "$nr_1g_before"
  say "huge pages given back: 2M pool $(pool_count $((2 << 20)) nr_hugepages), 1G pool $(pool_count $((1 << 30)) nr_hugepages)"
}
trap restore EXIT

"$HUGEMM_ROOT/scripts/setup.sh" --flavours release --pages-2m 16 --pages-1g 2
hugemm="$HUGEMM_ROOT/build/release/runtime/cli/hugemm"
say "running: hugemm info"
"$hugemm" info
say "running: hugemm demo"
"$hugemm" demo
