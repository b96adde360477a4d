#!/bin/bash
# rdma-vm-suite.sh RDMA_VM_TEST RDMA_PAIR SHARE_FILES EXAMPLE HUGEMM_CLI
# Inside the VM booted with --rxe-pair, 2M and 1G huge pages and a 2M device-DAX
# namespace: everything RDMA in one boot.
#   1. the MR cache against the soft-RoCE devices (rdma_vm_test);
#   2. two processes, one per device, moving data with RDMA WRITE, READ and SEND/RECV
#      between hugemm buffers on 2M, 1G and device-DAX memory (rdma_pair);
#   3. perftest's ib_write_bw on hugetlbfs files hugemm made and shares by name, and the
#      same run on its own memory, for reference;
#   4. examples/rdma_write.c, server and client;
#   5. hugemm bench mr --json.
# The veth counters show that the data crossed the link. Fails if any part fails.
set -uo pipefail
vm_test=$1 pair=$2 share=$3 example=$4 cli=$5
a=${HUGEMM_TEST_RXE_A:?run inside tests/vm/run-in-vm.sh --rxe-pair}
b=${HUGEMM_TEST_RXE_B:?}
a_addr=${HUGEMM_TEST_RXE_A_ADDR:?}
gid=${HUGEMM_TEST_RXE_GID:?}
failed=()
port=18600

bytes() { echo $(($(<"/sys/class/net/$1/statistics/$2_bytes"))); }
tx_before=$(bytes "$HUGEMM_TEST_RXE_B_NETDEV" tx)

# server_client NAME SERVER-COMMAND... -- CLIENT-COMMAND...: the server (on rxe_a) in the
# background, listening on $port; once it listens, the client (on rxe_b) in front (some
# clients, ib_write_bw's, do not retry a refused connection); both must pass.
server_client() {
  local name=$1 server=() client=() pid rc=0 i
  shift
  while [[ $1 != -- ]]; do server+=("$1"); shift; done
  shift
  client=("$@")
  echo "=== $name"
  timeout 300 "${server[@]}" &
  pid=$!
  for ((i = 0; i < 600; i++)); do
    [[ -n $(ss -Htln "sport = :$port") ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  timeout 300 "${client[@]}" || rc=$?
  wait "$pid" || rc=$?
  ((rc == 0)) || failed+=("$name")
}

echo "=== rdma_vm_test"
"$vm_test" || failed+=(rdma_vm_test)

# Server memory / client memory: device-DAX only on one end (both would map its start).
for kinds in 2M:2M 1G:1G devdax:2M; do
  port=$((port + 1))
  server_client "rdma_pair ${kinds%:*} <-> ${kinds#*:}" \
    "$pair" server "$a" "$port" "${kinds%:*}" -- \
    "$pair" client "$b" "$a_addr" "$port" "${kinds#*:}"
done

# perftest on hugemm-made memory: share_files holds the two files while ib_write_bw maps
# them; the pool's free count shows the tool took no huge page of its own.
dir=/dev/hugepages
free=/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages
iters=200 size=65536
# share_files reads its go-ahead from a FIFO and writes to a log, so its last lines and
# its exit status outlive it (a coproc's descriptors do not).
share_log=$(mktemp) share_fifo=$(mktemp -u)
mkfifo "$share_fifo"
"$share" "$dir" 2M hugemm_bw_a hugemm_bw_b <"$share_fifo" >"$share_log" &
share_pid=$!
exec {to_share}>"$share_fifo"
for ((i = 0; i < 600; i++)); do
  grep -qx ready "$share_log" && break
  kill -0 "$share_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -qx ready "$share_log"; then
  cat "$share_log"
  failed+=("share_files")
else
  grep -vx ready "$share_log"
  lines=$(wc -l <"$share_log")
  free_before=$(<"$free")
  port=$((port + 1))
  server_client "ib_write_bw --mmap on hugemm's hugetlbfs files" \
    ib_write_bw -d "$a" -x "$gid" -p "$port" -n $iters -s $size -F --mmap="$dir/hugemm_bw_a" -- \
    ib_write_bw -d "$b" -x "$gid" -p "$port" -n $iters -s $size -F --mmap="$dir/hugemm_bw_b" "$a_addr"
  free_after=$(<"$free")
  echo "2M pool free: $free_before before the run, $free_after after"
  ((free_before == free_after)) || failed+=("perftest took huge pages of its own")
  echo done >&"$to_share"
  wait "$share_pid" || failed+=("share_files: the tool's data is not in hugemm's pages")
  tail -n +$((lines + 1)) "$share_log"
fi
exec {to_share}>&-
rm -f "$share_log" "$share_fifo"
rm -f "$dir/hugemm_bw_a" "$dir/hugemm_bw_b"
port=$((port + 1))
server_client "ib_write_bw on its own memory (reference)" \
  ib_write_bw -d "$a" -x "$gid" -p "$port" -n $iters -s $size -F -- \
  ib_write_bw -d "$b" -x "$gid" -p "$port" -n $iters -s $size -F "$a_addr"

port=$((port + 1))
server_client "examples/rdma_write" \
  "$example" server "$a" "$gid" "$port" -- "$example" client "$b" "$gid" "$port" "$a_addr"

echo "=== hugemm bench mr --json"
if out=$("$cli" bench mr --device "$a" --json); then
  echo "$out"
  for key in '"hit_ns"' '"miss_ns"' '"reg_dereg_ns"' '"reg_dereg_over_hit"'; do
    grep -q "$key" <<<"$out" || failed+=("bench mr: no $key")
  done
else
  echo "$out"
  failed+=("bench mr")
fi

tx=$(($(bytes "$HUGEMM_TEST_RXE_B_NETDEV" tx) - tx_before))
echo "$HUGEMM_TEST_RXE_B_NETDEV sent $tx bytes"
((tx > 50 * 1024 * 1024)) || failed+=("little traffic crossed the veth pair")
if ((${#failed[@]})); then
  printf 'rdma suite: FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "rdma suite: all passed"
