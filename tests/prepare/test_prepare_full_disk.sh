#!/usr/bin/env bash
# A full disk during `gale prepare` is an error naming the shard and "No space left on
# device", exit status 1 (not a crash at exit inside HDF5), and leaves nothing behind.
# Needs to mount a small tmpfs (root); skipped otherwise.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-full-XXXXXX")
mkdir "$work/small"
if ! mount -t tmpfs -o size=48k tmpfs "$work/small" 2>/dev/null; then
  rm -rf "$work"
  echo "SKIP: cannot mount a tmpfs (needs root)"; exit 77
fi
trap 'umount "$work/small"; rm -rf "$work"' EXIT
cd "$work"
python3 - <<'PY'
import random
r = random.Random(1)
with open("big.txt", "w") as f:
    for i in range(3000):
        f.write(" ".join(str(r.randrange(10**9)) for _ in range(30)) + "\n%\n")
PY
fail=0
# the disk fills at a different step for each size: a chunk write, a shard's completion
for size in 48k 64k 128k 200k; do
  mount -o remount,size=$size "$work/small"
  rc=0
  "$GALE_BIN" prepare --input big.txt --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out small/out \
    --seq-len 64 --text-mode separator --shard-rows 200 --val-fraction 0.1 --dedup none > out.txt 2> err.txt || rc=$?
  if [ "$rc" != 1 ]; then echo "FAIL: $size disk: exit $rc (want 1): $(grep error: err.txt)"; fail=1; fi
  if ! grep -qE "small/out.partial/(train|val)-[0-9]+\.h5: .*No space left on device" err.txt; then
    echo "FAIL: $size disk: no 'No space left on device' naming the shard: $(cat err.txt)"; fail=1
  fi
  left=$(ls -A small)
  if [ -n "$left" ]; then echo "FAIL: $size disk: left behind: $left"; fail=1; rm -rf small/*; fi
done
exit $fail
