#!/usr/bin/env bash
# test_lora_peft: gale's LoRA against PEFT. Fixtures made by PEFT at test time on random tiny
# Llama, Mistral (rsLoRA) and Mixtral (experts w1/w2/w3) models: gale verify loads the base and
# PEFT's adapters and checks the logits, losses, every adapter gradient and three AdamW steps of
# the adapters within the fp32 tolerances of shared/golden/README.md, and that the base weights
# are unchanged to the bit; the bf16 mode within its derived tolerances.
set -euo pipefail
source "$GALE_SOURCE/tests/lora/peft_env.sh"
$py "$GALE_SOURCE/tests/lora/make_peft_fixtures.py" "$tmp/fx" 2> "$tmp/gen.log" || { cat "$tmp/gen.log" >&2; exit 1; }
fixtures=(--fixture "$tmp/fx/llama-lora" --fixture "$tmp/fx/mistral-lora" --fixture "$tmp/fx/mixtral-lora")
"$GALE_BIN" verify "${fixtures[@]}" | grep -E "checks|FAIL"
"$GALE_BIN" verify --precision bf16 "${fixtures[@]}" | grep -E "checks|FAIL"

# The checks can fail: one adapter value of PEFT's file nudged by 1e-3 is refused.
$py - "$tmp/fx/llama-lora/adapter_model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
path = sys.argv[1]
t = load_file(path)
name = sorted(k for k in t if "lora_B" in k)[0]
t[name][0, 0] += 1e-3
save_file(t, path)
PY
if "$GALE_BIN" verify --fixture "$tmp/fx/llama-lora" > "$tmp/nudged.txt"; then
  echo "FAIL: an adapter nudged by 1e-3 passed verify" >&2
  exit 1
fi
grep -q FAIL "$tmp/nudged.txt"
echo "a nudged adapter is refused, as it should be"
