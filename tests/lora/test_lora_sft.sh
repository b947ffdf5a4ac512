#!/usr/bin/env bash
# test_lora_sft: a small LoRA SFT run on a chat set prepared by `gale prepare --kind sft` lowers
# the validation loss, and its peak resident memory is below the full fine-tune's of the same
# model and batch by what `gale plan` says the frozen base saves (master weights, gradients and
# moments of every weight: 12 bytes a parameter in fp32) plus the host copies a full checkpoint
# stages (both moments; its weights stream out one tensor at a time), within 15%.
set -euo pipefail
: "${GALE_BIN:?run through ctest}" "${GALE_SHARED:?run through ctest}"
tok="$GALE_SHARED/tokenizers/mistral-v1.model"
[ -f "$tok" ] || { echo "SKIP: $tok missing"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/chat.jsonl" <<'PY'
import json, sys
words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "silver"]
with open(sys.argv[1], "w") as f:
    for i in range(400):
        a, b = words[i % 10], words[(i * 7 + 3) % 10]
        conv = {"messages": [{"role": "user", "content": "Say %s then %s, number %d." % (a, b, i)},
                             {"role": "assistant", "content": "%s %s %d" % (a, b, i)}]}
        f.write(json.dumps(conv) + "\n")
PY
"$GALE_BIN" prepare --input "$tmp/chat.jsonl" --kind sft --chat-template v1 --tokenizer "$tok" --out "$tmp/sft" \
  --seq-len 64 --val-fraction 0.1 --dedup exact --progress off > /dev/null
# a Mistral-shaped model of 19.9M parameters: 12 bytes each are 239 MB, well above the noise
cat > "$tmp/run.yaml" <<YAML
model:
  model_type: mistral
  vocab_size: 32000
  hidden_size: 256
  intermediate_size: 768
  num_hidden_layers: 4
  num_attention_heads: 8
  num_key_value_heads: 4
  max_position_embeddings: 128
data:
  sources: [$tmp/sft]
  seq_len: 64
  micro_batch: 4
optim:
  lr: 2.0e-2
  warmup: 2
  weight_decay: 0.0
run:
  steps: 30
  eval_every: 5
  eval_batches: 4
  checkpoint_every: 0
  dir: $tmp/lora
backend:
  threads: 1
lora:
  rank: 8
  alpha: 16
  targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
YAML
peak_kib() {  # peak_kib COMMAND...: runs it, prints its peak resident set in KiB
  python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$@"
}
lora_kib=$(peak_kib "$GALE_BIN" train "$tmp/run.yaml")
full_kib=$(peak_kib "$GALE_BIN" train "$tmp/run.yaml" --set lora.rank=0 --set run.steps=2 --set run.eval_every=0 \
  --set run.dir="$tmp/full")
"$GALE_BIN" plan "$tmp/run.yaml" > "$tmp/plan-lora.txt"
"$GALE_BIN" plan "$tmp/run.yaml" --set lora.rank=0 > "$tmp/plan-full.txt"
# AddressSanitizer's shadow memory and quarantine of freed blocks make resident memory no
# measure of gale's own (test_engine leaves its plan-against-RSS check out there too)
asan=0
if ldd "$GALE_BIN" | grep libasan > /dev/null; then asan=1; fi  # no -q: an early exit would SIGPIPE ldd under pipefail
python3 - "$tmp" "$lora_kib" "$full_kib" "$asan" <<'PY'
import json, re, sys
tmp, lora_kib, full_kib, asan = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
evals = [json.loads(l)["val_loss"] for l in open(tmp + "/lora/metrics.jsonl") if '"eval"' in l]
print("LoRA SFT val loss at step 0 and every 5 steps:", [round(v, 3) for v in evals])
assert len(evals) == 7 and all(b < a for a, b in zip(evals, evals[1:])) and evals[-1] < evals[0] - 0.1, evals
total = lambda name: int(re.search(r"^  total .*\((\d+) bytes\)", open(f"{tmp}/plan-{name}.txt").read(), re.M).group(1))
planned = (total("full") - total("lora")) / 2**20
# the full run's checkpoint also stages both moments on the host (2 x 4 bytes a parameter: the
# master weights' arena twice; the weights stream out a tensor at a time); a LoRA checkpoint
# holds the adapters only
master = float(re.search(r"^  master weights +([\d.]+)", open(f"{tmp}/plan-full.txt").read(), re.M).group(1)) * 1024
expected = planned + 2 * master
measured = (full_kib - lora_kib) / 1024
print("peak RSS: full fine-tune %.1f MiB, LoRA %.1f MiB: %.1f MiB less; the plan's arenas say %.1f MiB less, "
      "%.1f MiB with the full checkpoint's host staging" % (full_kib / 1024, lora_kib / 1024, measured, planned,
                                                          expected))
if asan:
    print("peak RSS not compared under AddressSanitizer")
else:
    assert abs(measured - expected) <= 0.15 * expected, (measured, expected)
PY
