#!/bin/bash
# numa-check.sh PROBE
# Run inside the VM (booted with --numa 2) by vm_numa_smoke: two nodes, each with
# a CPU, memory and its reserved 2M pool; a node's pool can grow at run time;
# `numactl --membind=N` places a huge page on node N (move_pages and numa_maps
# say so, for both nodes); with node 1's pool empty, a huge page bound to node 1
# is refused and node 0's pool is untouched. PROBE is the vm_probe binary.
set -euo pipefail
probe=$1
nodes=${HUGEMM_TEST_NUMA_NODES:?HUGEMM_TEST_NUMA_NODES is not set}
per_node=${HUGEMM_TEST_HUGEPAGES_2M:?HUGEMM_TEST_HUGEPAGES_2M is not set}
fail() {
  echo "FAIL: $*"
  exit 1
}
((nodes >= 2)) || fail "HUGEMM_TEST_NUMA_NODES=$nodes: boot with --numa 2"
((per_node >= 1)) || fail "no 2M pages reserved per node: boot with --hugepages N"
pool() { echo "/sys/devices/system/node/node$1/hugepages/hugepages-2048kB/$2"; }

numactl --hardware
[[ $(</sys/devices/system/node/online) == "0-$((nodes - 1))" ]] ||
  fail "nodes online: $(</sys/devices/system/node/online), want 0-$((nodes - 1))"
numactl --hardware | grep -q "^available: $nodes nodes" || fail "numactl does not see $nodes nodes"
for ((n = 0; n < nodes; n++)); do
  cpus=$(<"/sys/devices/system/node/node$n/cpulist")
  total=$(<"$(pool "$n" nr_hugepages)")
  free=$(<"$(pool "$n" free_hugepages)")
  echo "node $n: cpus $cpus, 2M pool $total ($free free)"
  [[ -n $cpus ]] || fail "node $n has no CPU"
  ((total == per_node && free == per_node)) || fail "node $n's pool is $total ($free free), want $per_node"
done

# Reservable at run time, per node, without touching the other node.
echo $((per_node + 4)) >"$(pool 1 nr_hugepages)"
grown=$(<"$(pool 1 nr_hugepages)")
((grown == per_node + 4)) || fail "node 1's pool grew to $grown, want $((per_node + 4))"
(($(<"$(pool 0 nr_hugepages)") == per_node)) || fail "growing node 1's pool changed node 0's"
echo "$per_node" >"$(pool 1 nr_hugepages)"
echo "node 1's pool grew to $grown and shrank back"

# Placement: the kernel's own answer (move_pages, numa_maps) for each node.
for n in 0 1; do
  out=$(numactl --membind="$n" "$probe" hugepage-node) || fail "no huge page bound to node $n"
  echo "--membind=$n: $out"
  grep -qx "node $n" <<<"$out" || fail "move_pages puts the page bound to node $n elsewhere"
  grep -q "^numa_maps .*huge.* N$n=1" <<<"$out" || fail "numa_maps does not show one huge page on node $n"
done

# Node 1 empty: refused, and node 0 keeps its pages.
echo 0 >"$(pool 1 nr_hugepages)"
before=$(<"$(pool 0 free_hugepages)")
if out=$(numactl --membind=1 "$probe" hugepage-node 2>&1); then
  echo "$per_node" >"$(pool 1 nr_hugepages)"
  fail "a huge page bound to node 1 was given with node 1's pool empty: $out"
fi
after=$(<"$(pool 0 free_hugepages)")
echo "$per_node" >"$(pool 1 nr_hugepages)"
echo "--membind=1 with node 1's pool empty: $out"
grep -q 'Cannot allocate memory' <<<"$out" || fail "the refusal is not ENOMEM"
((before == after)) || fail "node 0's free pages went from $before to $after"
(($(<"$(pool 1 nr_hugepages)") == per_node)) || fail "node 1's pool did not come back"
echo "numa smoke OK"
