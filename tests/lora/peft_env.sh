# Sourced by the LoRA tests: a scratch folder, and a skip (exit 77) when /usr/bin/python3 lacks
# the PEFT peer (tests/bench/setup_bench.sh installs torch, transformers 4.40.2 and peft).
: "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE and GALE_BIN}" "${GALE_BIN:?}"
py=/usr/bin/python3
if ! $py -c "import torch, transformers, peft" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 lacks torch, transformers or peft (tests/bench/setup_bench.sh)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
