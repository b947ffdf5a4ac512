#!/usr/bin/env bash
# Damaged shards are refused with a message, never crash or hang gale, and are never read
# as if whole. 300 copies of a small shard with one random metadata byte changed, and every
# byte of the first global heap objects changed (the variable-length string attributes:
# HDF5 trusts their sizes), go through `gale inspect`: each must end with exit status 0 or
# 1, never a signal or a hang. 200 bytes XORed inside a shard's chunk data are a read error
# (Fletcher-32 on every chunk) naming the shard, the dataset and the rows.
set -euo pipefail
: "${GALE_BIN:?}" "${GALE_SHARED:?}" "${GALE_SOURCE:?}"
gale="$GALE_BIN"
work=$(mktemp -d "${TMPDIR:-/tmp}/gale-damaged-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
fail=0

python3 - <<'PY'
import random
rng = random.Random(11)
words = "river stone cloud ember lantern quiet orbit meadow copper signal winter thread".split()
with open("docs.txt", "w") as f:
    for i in range(900):
        f.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) + f" end{i}\n%\n")
PY
"$gale" prepare --input docs.txt --tokenizer "$GALE_SHARED/tokenizers/mistral-v1.model" --out pre --seq-len 64 \
  --text-mode separator --shard-rows 600 --val-fraction 0.05 > /dev/null 2>&1

# a lone shard (no manifest beside it to check it against): HDF5 parses whatever it holds
mkdir lone
cp pre/val-00000.h5 lone/val.h5
python3 "$GALE_SOURCE/tests/shard/mutate_shard.py" lone/val.h5 "$work" 20 random 300 8 -- \
  "$gale" inspect MUTANT --ids 3 || fail=1
python3 "$GALE_SOURCE/tests/shard/mutate_shard.py" lone/val.h5 "$work" 20 heap -- \
  "$gale" inspect MUTANT --ids 3 || fail=1

# 200 bytes XORed in the middle of the chunk data: a read error naming shard, dataset, rows
cp pre/train-00000.h5 lone/train.h5
python3 - lone/train.h5 <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
mid = len(b) // 2
for i in range(mid, mid + 200):
    b[i] ^= 0x5A
open(p, "wb").write(b)
PY
errors=0
for row in 0 255 256 511 512 599; do
  rc=0
  "$gale" inspect lone/train.h5 --ids "$row" > out.txt 2> err.txt || rc=$?
  if [ "$rc" = 1 ]; then
    errors=$((errors + 1))
    if ! grep -qE "lone/train.h5: cannot read rows [0-9]+\.\.[0-9]+ of /(tokens|segments)" err.txt; then
      echo "FAIL: row $row of the damaged shard: $(cat err.txt)"; fail=1
    fi
  elif [ "$rc" != 0 ]; then
    echo "FAIL: row $row of the damaged shard: exit $rc"; fail=1
  fi
done
if [ "$errors" = 0 ]; then
  echo "FAIL: 200 changed bytes in the chunk data were read without an error"; fail=1
fi

exit $fail
