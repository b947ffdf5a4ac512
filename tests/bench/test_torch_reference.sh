#!/usr/bin/env bash
# The PyTorch peer of the CPU training-step benchmark must compute the golden math: its logits,
# losses, gradients and weights after three AdamW steps match every fixture in
# $GALE_SHARED/golden within the README's tolerances, in float64 and in float32 (the precision
# the benchmark runs in). Needs Debian's python3-torch (tests/bench/setup_bench.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${GALE_SHARED:?GALE_SHARED must name the shared folder}"
if ! /usr/bin/python3 -c "import torch" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 has no torch (tests/bench/setup_bench.sh installs it)"
  exit 77
fi
fixtures=("$GALE_SHARED"/golden/*/)
[ -d "${fixtures[0]}" ] || { echo "no fixtures under $GALE_SHARED/golden" >&2; exit 1; }
log="$(mktemp "${TMPDIR:-/tmp}/torch_reference.XXXXXX")"
trap 'rm -f "$log"' EXIT
for dtype in float64 float32; do
  if ! /usr/bin/python3 "$here/check_torch_reference.py" --dtype "$dtype" "${fixtures[@]}" > "$log"; then
    grep -v '^ok' "$log" >&2
    exit 1
  fi
  tail -n 1 "$log"
done
