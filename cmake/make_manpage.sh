#!/usr/bin/env bash
# hugemm(1) from the command's own help: help2man reads `hugemm --help` and `--version`;
# each command's and benchmark's --help becomes a section of its own.
#   make_manpage.sh <hugemm binary> <out.1.gz>
set -euo pipefail
hugemm=$1 out=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Help text as roff: backslashes escaped, no line read as a request.
roff() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"; }
# subcommands [WORDS...]: the names under "Subcommands:" in `hugemm WORDS --help`.
subcommands() {
  "$hugemm" "$@" --help | awk '/^Subcommands:/ { s = 1; next }
                             s && /^  [a-z]/ { print $1; next }
                             s && !/^    / { s = 0 }'
}
# Every command the tool has, leaves only ("bench pin", not "bench"): taken from its own
# help, so that a new command or benchmark gets its section without anyone listing it.
commands=()
for cmd in $(subcommands); do
  nested=$(subcommands "$cmd")
  if [ -z "$nested" ]; then commands+=("$cmd"); fi
  for sub in $nested; do commands+=("$cmd $sub"); done
done
[ ${#commands[@]} -gt 0 ] || { echo "make_manpage.sh: $hugemm --help lists no commands" >&2; exit 1; }
{
  printf '[NAME]\nhugemm \\- inspect, verify and benchmark DMA buffers on real huge pages\n'
  printf '[COMMANDS]\n'
  for cmd in "${commands[@]}"; do
    printf '.SS "hugemm %s"\n.nf\n' "$cmd"
    # shellcheck disable=SC2086  # cmd is the command's words
    "$hugemm" $cmd --help | roff
    printf '.fi\n'
  done
  printf '[EXIT STATUS]\n0 ok; 1 a check failed or the run could not be done; 2 usage error '
  printf '(an unknown flag, a bad value).\n'
  printf '.PP\nWith \\-\\-json, a command that fails with exit status 1 still prints one JSON '
  printf 'object on stdout: {"command": the command line, "ok": false, "error": {"code": the '
  printf 'name of the status code, "errno": the errno where a system call gave one, "message": '
  printf 'the message stderr also gets}}; verify and stress, which ran and found something '
  printf 'wrong, print their own object with "ok": false. A usage error prints nothing on '
  printf 'stdout.\n'
  printf '[SEE ALSO]\nThe README and doc/ of the hugemm sources; the headers in include/hugemm/.\n'
} >"$tmp/include.h2m"
help2man --no-info --no-discard-stderr --include="$tmp/include.h2m" \
  --name="inspect, verify and benchmark DMA buffers on real huge pages" \
  --output="$tmp/hugemm.1" "$hugemm"
gzip -9n <"$tmp/hugemm.1" >"$out"
