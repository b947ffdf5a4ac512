#!/usr/bin/env bash
# test_lora_peft: gale's LoRA against PEFT. Fixtures made by PEFT at test time on random tiny
# Llama, Mistral (rsLoRA) and Mixtral (experts w1/w2/w3) models: gale verify loads the base and
# PEFT's adapters and checks the logits, losses, every adapter gradient and three AdamW steps of
# the adapters within the fp32 tolerances of shared/golden/README.md, and that the base weights
# are unchanged to the bit; the bf16 mode within its derived tolerances.
set -euo pipefail
source "$GALE_SOURCE/tests/lora/peft_env.sh"
$py "$GALE_SOURCE/tests/lora/make_peft_fixtures.py" "$tmp/fx" 2> "$tmp/gen.log" || { cat "$tmp/gen.log" >&2; exit 1; }
fixtures=(--fixture "$tmp/fx/llama-lora" --fixture "$tmp/fx/mistral-lora" --fixture "$tmp/fx/mixtral-lora"
          --fixture "$tmp/fx/mixtral-router")
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

# the same with the routers trained whole (lora.train_router: PEFT's modules_to_save ["gate"]):
# PEFT loads them from gale's adapter_model.safetensors with the adapters
write_lora_config "$tmp/router.yaml" "$tmp/router" 10 "train_router: true"
"$GALE_BIN" train "$tmp/router.yaml" > /dev/null
router="$tmp/router/checkpoints/step_00000010"
grep -q '"gate"' "$router/adapter_config.json"
$py "$GALE_SOURCE/tests/lora/make_peft_fixtures.py" --from-adapter "$base" "$router" "$tmp/fx/gale-router" \
  2> "$tmp/gen.log" || { cat "$tmp/gen.log" >&2; exit 1; }
"$GALE_BIN" verify --fixture "$tmp/fx/gale-router" | grep -E "^  logits|gate.weight|checks|FAIL"

# and trained with expert parallelism (ep=2: each rank holds 2 of the 4 experts' adapters, rank 0
# gathers them into PEFT's one adapter_model.safetensors)
if command -v mpirun > /dev/null; then
  mpi_flags=(--oversubscribe)
  [ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
  write_lora_config "$tmp/router_ep.yaml" "$tmp/router_ep" 10 "train_router: true"
  mpirun "${mpi_flags[@]}" -np 2 "$GALE_BIN" train "$tmp/router_ep.yaml" --set parallel.ep=2 > "$tmp/ep.log" 2>&1 ||
    { cat "$tmp/ep.log"; echo "FAIL: gale train with parallel.ep=2"; exit 1; }
  $py "$GALE_SOURCE/tests/lora/make_peft_fixtures.py" --from-adapter "$base" "$tmp/router_ep/checkpoints/step_00000010" \
    "$tmp/fx/gale-router-ep" 2> "$tmp/gen.log" || { cat "$tmp/gen.log" >&2; exit 1; }
  "$GALE_BIN" verify --fixture "$tmp/fx/gale-router-ep" | grep -E "^  logits|checks|FAIL"
else
  echo "(no mpirun: the adapters trained with expert parallelism are not checked here)"
fi

# gale merge's folder holds the weights of PEFT's merge_and_unload, in the base's dtype (the
# trained routers in place of the base's)
for adapter in "$ckpt" "$router"; do
rm -rf "$tmp/merged"
"$GALE_BIN" merge --base "$base" --adapter "$adapter" --out "$tmp/merged" > /dev/null
$py - "$base" "$adapter" "$tmp/merged" <<'PY'
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
routers = [k for k in got if k.endswith("block_sparse_moe.gate.weight")]
trained = sum(not torch.equal(got[k], load_file(base + "/model.safetensors")[k]) for k in routers)
assert trained == (len(routers) if '"gate"' in open(adapter + "/adapter_config.json").read() else 0), trained
print("gale merge = PEFT merge_and_unload: %d tensors, largest relative difference %.2e" % (len(got), worst))
PY
done

# transformers loads a merged folder sharded by gale merge (--shard-size 20000: an index and
# several files) in the base's dtype, f32, bf16 and f16, and its logits are the adapter run's
# (PEFT's, on the same base in fp32): within 1e-5 (the README's fp32 bound) for f32, and for bf16
# and f16 within 2^-8 and 2^-11, twice the half step a merged weight is rounded by; a bound
# the adapters' own effect on the logits exceeds tenfold, so a merge that lost them fails.
for dtype in float32 bfloat16 float16; do
  $py - "$base" "$tmp/base-$dtype" "$dtype" <<'PY'
import sys, torch
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=getattr(torch, sys.argv[3])).save_pretrained(sys.argv[2])
PY
  "$GALE_BIN" merge --base "$tmp/base-$dtype" --adapter "$ckpt" --out "$tmp/merged-$dtype" --shard-size 20000 > /dev/null
  $py - "$tmp/base-$dtype" "$ckpt" "$tmp/merged-$dtype" "$dtype" <<'PY'
import json, os, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, merged, dtype = sys.argv[1:5]
files = set(json.load(open(merged + "/model.safetensors.index.json"))["weight_map"].values())
assert len(files) > 2 and not os.path.exists(merged + "/model.safetensors"), files
m = AutoModelForCausalLM.from_pretrained(merged, torch_dtype="auto")
assert m.dtype == getattr(torch, dtype), m.dtype
ids = torch.arange(3, 3 + 2 * 12).reshape(2, 12) * 997 % 32000
with torch.no_grad():
    got = m.float()(ids).logits.double()
    plain = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    unadapted = plain(ids).logits.double()
    want = PeftModel.from_pretrained(plain, adapter)(ids).logits.double()
rel = lambda x: ((x - want).norm() / want.norm()).item()
bound = {"float32": 1e-5, "bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}[dtype]
assert rel(got) <= bound and rel(unadapted) > 10 * bound, (rel(got), rel(unadapted), bound)
print("transformers on gale merge's %s folder (%d shards): logits off PEFT's adapter run by %.2e (bound %.1e; "
      "without the adapters %.2e)" % (dtype, len(files), rel(got), bound, rel(unadapted)))
PY
done
