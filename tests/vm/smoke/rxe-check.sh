#!/bin/bash
# Run inside the VM (booted with --rxe) by vm_rxe_smoke: libibverbs sees rxe0
# and its port is up.
set -euo pipefail
rdma link show
devices=$(ibv_devices)
echo "$devices"
grep -qw rxe0 <<<"$devices" || { echo "ibv_devices does not list rxe0"; exit 1; }
info=$(ibv_devinfo -d rxe0)
echo "$info"
grep -q 'state:.*PORT_ACTIVE' <<<"$info" || { echo "rxe0 port is not active"; exit 1; }
echo "rxe smoke OK"
