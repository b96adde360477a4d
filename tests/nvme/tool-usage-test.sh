#!/bin/bash
# tool-usage-test.sh HUGEMM_NVME
# hugemm-nvme's command line without a device: --help prints the usage on stdout and
# exits 0; an unknown option, or one missing its value, is named on stderr, with the
# usage, and exits 2.
set -uo pipefail
tool=$1
fail() {
  echo "FAIL: $*"
  exit 1
}

out=$("$tool" --help 2>/dev/null)
rc=$?
[ "$rc" -eq 0 ] || fail "--help exited $rc"
grep -q '^usage: hugemm-nvme' <<<"$out" || fail "--help printed no usage on stdout"

err=$("$tool" 0000:00:04.0 identify --bogus 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 2 ] || fail "--bogus exited $rc"
grep -q 'unknown option --bogus' <<<"$err" || fail "--bogus not named: $err"
grep -q '^usage: hugemm-nvme' <<<"$err" || fail "--bogus printed no usage"
err=$("$tool" 0000:00:04.0 identify --memory 2>&1 >/dev/null)
rc=$?
[ "$rc" -eq 2 ] || fail "--memory without a value exited $rc"
grep -q -- '--memory needs a value' <<<"$err" || fail "--memory without a value not named: $err"
echo "ok"
