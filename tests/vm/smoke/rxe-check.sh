#!/bin/bash
# Run inside the VM (booted with --rxe) by vm_rxe_smoke: libibverbs sees rxe0
# and its port is up, and an RC queue pair passes traffic over it.
set -euo pipefail
rdma link show
devices=$(ibv_devices)
echo "$devices"
grep -qw rxe0 <<<"$devices" || { echo "ibv_devices does not list rxe0"; exit 1; }
info=$(ibv_devinfo -d rxe0)
echo "$info"
grep -q 'state:.*PORT_ACTIVE' <<<"$info" || { echo "rxe0 port is not active"; exit 1; }

# One RC QP exchange over rxe0 on loopback (registers memory, sends, receives). The
# client names 127.0.0.1, not localhost: the guest runs from the host's root, whose
# /etc/hosts may not exist (a debootstrapped root has none).
gid=$(ibv_devinfo -v -d rxe0 | sed -n 's/.*GID\[ *\([0-9]*\)\]:.*::ffff:127\.0\.0\.1.*/\1/p' | head -n1)
[[ -n $gid ]] || { echo "rxe0 has no GID for 127.0.0.1"; exit 1; }
timeout 60 ibv_rc_pingpong -d rxe0 -g "$gid" -n 100 &
server=$!
for _ in $(seq 100); do # until the server listens on its TCP port (18515)
  ss -ltn | grep -q ':18515 ' && break
  sleep 0.1
done
timeout 60 ibv_rc_pingpong -d rxe0 -g "$gid" -n 100 127.0.0.1 || {
  # The server would hold port 18515 for the checks that run after this one.
  kill "$server" 2>/dev/null || true
  echo "ibv_rc_pingpong client failed"
  exit 1
}
wait "$server" || { echo "ibv_rc_pingpong server failed"; exit 1; }
echo "rxe smoke OK"
