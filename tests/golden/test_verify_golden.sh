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
# The CPU's bf16 mode, with the tolerances derived from bf16's precision and the depth
"$GALE_BIN" verify --precision bf16 "${fixtures[@]}"

# The checks must be able to fail: the same fixture with one weight nudged by 1e-3 is refused
# in fp32, and nudged by 1 (well past bf16's rounding) in bf16.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
first=$(ls -d "$GALE_SHARED"/golden/*/ | head -1)
cp "$first"/* "$tmp"/
refused() {  # refused NUDGE [verify options]: the fixture with one weight nudged fails
  local nudge=$1
  cp "$first/model.safetensors" "$tmp/model.safetensors"
  chmod u+w "$tmp/model.safetensors"
  python3 - "$tmp/model.safetensors" "$nudge" <<'PY'
import json, struct, sys
path, nudge = sys.argv[1], float(sys.argv[2])
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
at = 8 + n + header[name]["data_offsets"][0]
value = struct.unpack("<f", raw[at:at + 4])[0]
raw[at:at + 4] = struct.pack("<f", value + nudge)
open(path, "wb").write(raw)
PY
  shift
  set +e
  "$GALE_BIN" verify "$@" --fixture "$tmp" > "$tmp/out.txt"
  local status=$?
  set -e
  if [ "$status" -ne 1 ] || ! grep -q FAIL "$tmp/out.txt"; then
    echo "a fixture nudged by $nudge was not refused by verify $* (exit $status)" >&2
    exit 1
  fi
}
refused 1e-3
echo "perturbed fixture refused in fp32 as it should be"
refused 1.0 --precision bf16
echo "perturbed fixture refused in bf16 as it should be"
