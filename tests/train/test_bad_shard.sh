#!/usr/bin/env bash
# A shard changed after prepare (200 bytes XORed, same size) is never trained on: `gale train`
# ends with an error naming the shard (its SHA-256 no longer matches manifest.json), for the
# training split and for the val split it evaluates on; with data.on_bad_shard: skip the bad
# val shard is left out with a warning and training runs on.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
fail=0
damage() {  # damage FILE: XOR 200 bytes in the middle, size unchanged
  python3 - "$1" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
for i in range(len(b) // 2, len(b) // 2 + 200):
    b[i] ^= 0x5A
open(sys.argv[1], "wb").write(b)
PY
}
for split in train val; do
  cp -r "$tmp/data" "$tmp/bad-$split"
  damage "$tmp/bad-$split/$split-00000.h5"
  write_config "$tmp/$split.yaml" "$tmp/run-$split" 4 2
  sed -i "s|path: $tmp/data|path: $tmp/bad-$split|; s|eval_every: 0|eval_every: 2|" "$tmp/$split.yaml"
  rc=0
  "$GALE_BIN" train "$tmp/$split.yaml" > "$tmp/$split.log" 2>&1 || rc=$?
  if [ "$rc" != 1 ] || ! grep -qF "bad-$split/$split-00000.h5: SHA-256" "$tmp/$split.log"; then
    echo "FAIL: damaged $split shard: exit $rc: $(tail -3 "$tmp/$split.log")"; fail=1
  fi
done
rc=0
"$GALE_BIN" train "$tmp/val.yaml" --set data.on_bad_shard=skip --set run.dir="$tmp/run-skip" > "$tmp/skip.log" 2>&1 || rc=$?
if [ "$rc" != 0 ] || ! grep -qF "warning: leaving out a bad shard (data.on_bad_shard: skip): $tmp/bad-val/val-00000.h5" "$tmp/skip.log"; then
  echo "FAIL: on_bad_shard skip: exit $rc: $(tail -5 "$tmp/skip.log")"; fail=1
fi
exit $fail
