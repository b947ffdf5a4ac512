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
