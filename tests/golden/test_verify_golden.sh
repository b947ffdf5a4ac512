#!/usr/bin/env bash
# Runs `gale verify` on every fixture folder in $GALE_SHARED/golden: logits, losses, every
# gradient, the router's choices and three AdamW steps against transformers' float64 numbers.
set -euo pipefail
: "${GALE_SHARED:?}" "${GALE_BIN:?}"
fixtures=()
for dir in "$GALE_SHARED"/golden/*/; do
  [ -f "$dir/expected.json" ] && fixtures+=(--fixture "${dir%/}")
done
if [ ${#fixtures[@]} -eq 0 ]; then
  echo "no fixture folders in $GALE_SHARED/golden" >&2
  exit 1
fi
"$GALE_BIN" verify "${fixtures[@]}"

# The check must be able to fail: the same fixture with one weight nudged by 1e-3 is refused.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
first=$(ls -d "$GALE_SHARED"/golden/*/ | head -1)
cp "$first"/* "$tmp"/
chmod u+w "$tmp"/model.safetensors
python3 - "$tmp/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
at = 8 + n + header[name]["data_offsets"][0]
value = struct.unpack("<f", raw[at:at + 4])[0]
raw[at:at + 4] = struct.pack("<f", value + 1e-3)
open(path, "wb").write(raw)
PY
set +e
"$GALE_BIN" verify --fixture "$tmp" > "$tmp/out.txt"
status=$?
set -e
if [ "$status" -ne 1 ] || ! grep -q FAIL "$tmp/out.txt"; then
  echo "a perturbed fixture was not refused (exit $status)" >&2
  exit 1
fi
echo "perturbed fixture refused as it should be"
