#!/usr/bin/env bash
# Bounded work on any input: /dev/zero is skipped (not a regular file) instead of read until
# memory runs out; a line or record past max_record_bytes is an error naming file:line; a
# FIFO in a folder is skipped with a warning (reading it hung); a symlink loop is walked
# once; a dangling symlink and an unwritable --removed fail before any work. (A file that
# cannot be read further is reported and its remaining records skipped, as for corrupt gzip.)
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-bounded-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
tok="$GALE_SHARED/tokenizers/mistral-v1.model"
fail=0
# expect STATUS TEXT ARGS...: gale prepare ARGS exits with STATUS (within 60 s), stderr holds TEXT
expect() {
  local status="$1" text="$2"; shift 2
  local rc=0
  timeout 60 "$GALE_BIN" prepare --tokenizer "$tok" --seq-len 32 --text-mode separator "$@" > out.txt 2> err.txt || rc=$?
  if [ "$rc" != "$status" ] || ! grep -qF -- "$text" err.txt; then
    echo "FAIL: gale prepare $*: exit $rc (want $status), stderr: $(head -c 600 err.txt) (want '$text')"; fail=1
  fi
}

expect 1 "skipping '/dev/zero': not a regular file (a device)" --input /dev/zero --out o1
grep -qF "input '/dev/zero' names no file" err.txt || { echo "FAIL: /dev/zero: $(cat err.txt)"; fail=1; }

# a 2 MiB line, and a JSONL file whose third record is 2 MiB
python3 - <<'PY'
import json
with open("long.txt", "w") as f:
    f.write("short document\n%\n" + "x" * (2 << 20) + "\n%\n")
with open("long.jsonl", "w") as f:
    for t in ["one", "two", "y" * (2 << 20), "four"]:
        f.write(json.dumps({"text": t}) + "\n")
PY
expect 0 "long.txt:3: a record longer than 1048576 bytes (max_record_bytes)" --input long.txt --out o2 \
  --max-record-bytes 1048576
expect 0 "long.jsonl:3: a record longer than 1048576 bytes (max_record_bytes)" --input long.jsonl --out o3 \
  --max-record-bytes 1048576
# documents in one text_mode document file are records too
expect 0 "a record longer than 1048576 bytes" --input long.txt --out o4 --max-record-bytes 1048576 --text-mode document
# the default (64 MiB) takes the 2 MiB document
expect 0 "" --input long.txt --out o5

# a folder with a FIFO (nobody writes it) and a symlink back to itself
mkdir -p tree/sub
printf 'first doc\n%%\nsecond doc\n' > tree/a.txt
printf 'third doc\n' > tree/sub/b.txt
mkfifo tree/pipe
ln -s .. tree/sub/loop
expect 0 "skipping 'tree/pipe': not a regular file (a FIFO)" --input tree --out o6
grep -qF "skipping 'tree/sub/loop': a folder already read (a symlink loop?)" err.txt ||
  { echo "FAIL: the symlink loop: $(cat err.txt)"; fail=1; }
read=$(python3 -c 'import json; print(json.load(open("o6/report.json"))["documents"]["read"])')
[ "$read" = 3 ] || { echo "FAIL: the tree with a loop read $read documents, want 3"; fail=1; }

# a dangling symlink fails before the work: no progress line, no output
ln -s nowhere.txt tree/dangling.txt
expect 1 "input 'tree/dangling.txt': a symlink to nothing (dangling)" --input tree --out o7
rm tree/dangling.txt
# an unwritable --removed fails before the work too
expect 1 "--removed $work/no/such/dir/removed.jsonl: cannot be written" --input tree --out o8 \
  --removed "$work/no/such/dir/removed.jsonl"
for o in o7 o8; do
  if grep -q "^read" err.txt || [ -e "$o" ] || [ -e "$o.partial" ]; then
    echo "FAIL: $o: work was done before the error"; fail=1
  fi
done
exit $fail
