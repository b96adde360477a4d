#!/usr/bin/env bash
# hugemm(1) documents every command the tool has: each command and benchmark listed by
# `hugemm --help` (and `hugemm bench --help`) has its section in the man page, with every
# option its own --help shows.
#   manpage_test.sh <hugemm binary> <hugemm.1.gz>
set -euo pipefail
hugemm=$1 page=$2
failed=0
fail() { echo "FAIL: $*"; failed=1; }

man=$(zcat "$page")
listed() { "$hugemm" "$@" --help | sed -n '/^Subcommands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p'; }
count=0
for cmd in $(listed); do
  subs=$(listed "$cmd")
  for leaf in ${subs:-""}; do
    words=$cmd${leaf:+ $leaf}
    count=$((count + 1))
    # The section, and what follows it up to the next one.
    section=$(awk -v head=".SS \"hugemm $words\"" '$0 == head { s = 1; next }
                                                   s && /^\.SS / { exit }
                                                   s { print }' <<<"$man")
    if [ -z "$section" ]; then
      fail "no section \"hugemm $words\" in $(basename "$page")"
      continue
    fi
    # shellcheck disable=SC2086  # the command's words
    for opt in $("$hugemm" $words --help | grep -oE '^  +-[-a-zA-Z,]+' | tr -d ' '); do
      # roff escapes a dash as \- in some versions of help2man; either spelling will do.
      grep -qF -e "$opt" -e "${opt//-/\\-}" <<<"$section" ||
        fail "hugemm $words: option $opt is not in its man page section"
    done
  done
done
[ "$count" -ge 5 ] || fail "hugemm --help lists only $count commands"
[ "$failed" = 0 ] || exit 1
echo "hugemm(1) documents all $count commands and their options"
