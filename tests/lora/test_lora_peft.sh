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

# PEFT loads what gale trains: adapters trained by gale train on a tiny Mixtral base, loaded by
# PeftModel.from_pretrained, give gale's logits, losses and gradients (a fixture PEFT computes
# from them, checked by gale verify).
source "$GALE_SOURCE/tests/lora/lora_run.sh"
write_lora_config "$tmp/run.yaml" "$tmp/run" 10
"$GALE_BIN" train "$tmp/run.yaml" > /dev/null
ckpt="$tmp/run/checkpoints/step_00000010"
$py "$GALE_SOURCE/tests/lora/make_peft_fixtures.py" --from-adapter "$base" "$ckpt" "$tmp/fx/gale-trained" \
  2> "$tmp/gen.log" || { cat "$tmp/gen.log" >&2; exit 1; }
"$GALE_BIN" verify --fixture "$tmp/fx/gale-trained" | grep -E "^  logits|checks|FAIL"

# gale merge's folder holds the weights of PEFT's merge_and_unload, in the base's dtype
"$GALE_BIN" merge --base "$base" --adapter "$ckpt" --out "$tmp/merged" > /dev/null
$py - "$base" "$ckpt" "$tmp/merged" <<'PY'
import sys, torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
base, adapter, merged = sys.argv[1:4]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32), adapter)
want = model.merge_and_unload().state_dict()
got = load_file(merged + "/model.safetensors")
assert set(got) == set(want), set(got) ^ set(want)
worst = max(((got[k].double() - want[k].double()).norm() / want[k].double().norm()).item() for k in got)
assert all(got[k].dtype == torch.float32 for k in got)
assert worst < 1e-6, worst
print("gale merge = PEFT merge_and_unload: %d tensors, largest relative difference %.2e" % (len(got), worst))
PY
