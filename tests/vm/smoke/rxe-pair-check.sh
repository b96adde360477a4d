#!/bin/bash
# Run inside the VM (booted with --rxe-pair and a few 2M huge pages) by
# vm_rxe_pair_smoke: rxe_a and rxe_b are up on the two ends of the veth pair, and
# an RC ping-pong, perftest's ib_write_bw, and ib_write_bw with its buffers in
# hugetlbfs files (--mmap) pass between them; the veth ends' byte counters show
# that the data crossed the link, not lo.
set -euo pipefail
a=${HUGEMM_TEST_RXE_A:?HUGEMM_TEST_RXE_A is not set}
b=${HUGEMM_TEST_RXE_B:?}
a_addr=${HUGEMM_TEST_RXE_A_ADDR:?}
a_net=${HUGEMM_TEST_RXE_A_NETDEV:?}
b_net=${HUGEMM_TEST_RXE_B_NETDEV:?}
gid=${HUGEMM_TEST_RXE_GID:?}
fail() {
  echo "FAIL: $*"
  exit 1
}

rdma link show
devices=$(ibv_devices)
for dev in "$a" "$b"; do
  grep -qw "$dev" <<<"$devices" || fail "ibv_devices does not list $dev"
  info=$(ibv_devinfo -v -d "$dev")
  grep -q 'state:.*PORT_ACTIVE' <<<"$info" || fail "$dev's port is not active"
  echo "$dev: $(grep -m1 "GID\[ *$gid\]" <<<"$info" | tr -s ' \t' ' ')"
done

bytes() { echo $(($(<"/sys/class/net/$1/statistics/$2_bytes"))); }
declare -A before
for c in "$a_net:tx" "$a_net:rx" "$b_net:tx" "$b_net:rx" lo:rx; do before[$c]=$(bytes "${c%:*}" "${c#*:}"); done

# server_client PORT SERVER-COMMAND... -- CLIENT-COMMAND...: the server on rxe_a,
# the client on rxe_b connecting to it over TCP; both must pass.
server_client() {
  local port=$1 server=() client=() pid
  shift
  while [[ $1 != -- ]]; do server+=("$1"); shift; done
  shift
  client=("$@")
  timeout 120 "${server[@]}" &
  pid=$!
  for _ in $(seq 200); do # until the server listens
    ss -ltn | grep -q ":$port " && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  timeout 120 "${client[@]}" || { kill "$pid" 2>/dev/null; fail "client failed: ${client[*]}"; }
  wait "$pid" || fail "server failed: ${server[*]}"
}

echo "=== ibv_rc_pingpong $b -> $a"
server_client 18515 ibv_rc_pingpong -d "$a" -g "$gid" -n 100 -- \
  ibv_rc_pingpong -d "$b" -g "$gid" -n 100 "$a_addr"

iters=200
size=65536
echo "=== ib_write_bw $b -> $a"
server_client 18515 ib_write_bw -d "$a" -x "$gid" -n $iters -s $size -F -- \
  ib_write_bw -d "$b" -x "$gid" -n $iters -s $size -F "$a_addr"

# perftest's buffers in hugetlbfs files, one per side: after the run each file
# holds the huge page it was given, so the pool shows that they were used.
echo "=== ib_write_bw --mmap (hugetlbfs) $b -> $a"
dir=/dev/hugepages
mountpoint -q "$dir" || fail "$dir is not a hugetlbfs mount"
free=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
free_before=$(<"$free")
((free_before >= 2)) || fail "fewer than two free 2M pages: boot with --hugepages N"
truncate -s 2M "$dir/bw_a" "$dir/bw_b"
trap 'rm -f "$dir/bw_a" "$dir/bw_b"' EXIT
server_client 18515 ib_write_bw -d "$a" -x "$gid" -n $iters -s $size -F --mmap="$dir/bw_a" -- \
  ib_write_bw -d "$b" -x "$gid" -n $iters -s $size -F --mmap="$dir/bw_b" "$a_addr"
used=$((free_before - $(<"$free")))
echo "hugetlbfs files: $(du -k "$dir/bw_a" "$dir/bw_b" | tr -s '\t\n' '  ')($used pages from the pool)"
((used == 2)) || fail "the two --mmap files took $used huge pages, want 2"
rm -f "$dir/bw_a" "$dir/bw_b"

# RDMA WRITEs go from rxe_b to rxe_a: out of veth_b, into veth_a, not through lo.
payload=$((2 * iters * size))
for c in "$b_net:tx" "$a_net:rx" "$a_net:tx" "$b_net:rx" lo:rx; do
  delta=$(($(bytes "${c%:*}" "${c#*:}") - ${before[$c]}))
  echo "$c: $delta bytes"
  case $c in
    "$b_net:tx" | "$a_net:rx") ((delta >= payload)) || fail "$c carried $delta bytes, below the $payload written" ;;
    "$a_net:tx" | "$b_net:rx") ((delta > 0)) || fail "$c carried no acknowledgements" ;;
    lo:rx) ((delta < payload / 4)) || fail "lo carried $delta bytes: the traffic did not cross the veth pair" ;;
  esac
done
echo "rxe pair smoke OK"
