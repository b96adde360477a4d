#!/bin/bash
# devdax-check.sh EXPECTED_ALIGN_BYTES
# Run inside the VM by the vm_devdax_smoke_* tests: the harness gave us a real
# device-DAX device at the requested alignment.
set -euo pipefail
want=$1
dev=${HUGEMM_TEST_DAX:?HUGEMM_TEST_DAX is not set}
[[ ${HUGEMM_IN_VM:-} == 1 ]] || { echo "HUGEMM_IN_VM is not 1"; exit 1; }
[[ -c $dev ]] || { echo "$dev is not a character device"; exit 1; }
name=$(basename -- "$dev")
align=$(<"/sys/bus/dax/devices/$name/align")
size=$(<"/sys/bus/dax/devices/$name/size")
echo "$dev: align $align, size $size, kernel $(uname -r)"
[[ $align == "$want" ]] || { echo "align is $align, want $want"; exit 1; }
((size >= align)) || { echo "size $size is below one $align page"; exit 1; }
list=$(daxctl list)
echo "$list"
grep -q "\"chardev\":\"$name\"" <<<"$list" || { echo "daxctl list does not show $name"; exit 1; }
echo "devdax smoke OK"
