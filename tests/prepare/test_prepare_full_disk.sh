#!/usr/bin/env bash
# A full disk during `gale prepare` is an error naming the shard and "No space left on
# device", exit status 1 (not a crash at exit inside HDF5), and leaves nothing behind.
# Needs to mount a small tmpfs (root); skipped otherwise.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}"
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-full-XXXXXX")
mkdir "$work/small"
if ! mount -t tmpfs -o size=64k tmpfs "$work/small" 2>/dev/null; then
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
rc=0
"$GALE_BIN" prepare --input big.txt --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out small/out \
  --seq-len 64 --text-mode separator --shard-rows 200 --val-fraction 0.1 > out.txt 2> err.txt || rc=$?
fail=0
if [ "$rc" != 1 ]; then echo "FAIL: exit $rc (want 1): $(tail -5 err.txt)"; fail=1; fi
if ! grep -qE "small/out.partial/(train|val)-[0-9]+\.h5: .*No space left on device" err.txt; then
  echo "FAIL: no 'No space left on device' naming the shard: $(cat err.txt)"; fail=1
fi
left=$(ls -A small)
if [ -n "$left" ]; then echo "FAIL: left behind on the full disk: $left"; fail=1; fi
exit $fail
