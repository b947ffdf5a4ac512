#!/usr/bin/env bash
# test_plan_rss: `gale plan` against the memory a real `gale train` holds. Two runs of a few steps
# on the CPU, a tiny model (what the process holds whatever the model: libraries, MPI, OpenBLAS,
# the data loader) and a Mistral-shaped one of 43M parameters whose arenas dominate (~0.7 GB);
# the growth of the peak resident memory from one to the other, as the last step's metrics
# record it (peak_rss_mib, before the final checkpoint stages its copies), is within 10% of the
# growth of their plans. Peak RSS is no measure under AddressSanitizer (its shadow memory and
# quarantine are resident too): there only the runs are checked. And gale train's refusal of a
# run too large for the machine comes from the same plan.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
run() {  # run NAME HIDDEN INTERMEDIATE LAYERS HEADS: 3 steps of a dense model into $tmp/NAME
  cat > "$tmp/$1.yaml" <<YAML
model:
  model_type: mistral
  vocab_size: 32000
  hidden_size: $2
  intermediate_size: $3
  num_hidden_layers: $4
  num_attention_heads: $5
  num_key_value_heads: $5
  max_position_embeddings: 64
data:
  sources:
    - path: $tmp/data
  seq_len: 16
  micro_batch: 4
run:
  steps: 3
  eval_every: 0
  checkpoint_every: 0
  dir: $tmp/$1
backend:
  threads: 1
YAML
  "$GALE_BIN" train "$tmp/$1.yaml" > "$tmp/$1.log"
  "$GALE_BIN" plan "$tmp/$1.yaml" > "$tmp/$1.plan"
}
run tiny 32 48 2 4
run big 512 1024 4 8
asan=0
if ldd "$GALE_BIN" | grep libasan > /dev/null; then asan=1; fi  # no -q: an early exit would SIGPIPE ldd under pipefail
python3 - "$tmp" "$asan" <<'PY'
import json, re, sys
tmp, asan = sys.argv[1], sys.argv[2] == "1"
def peak_mib(name):
    recs = [json.loads(l) for l in open(f"{tmp}/{name}/metrics.jsonl")]
    return [r for r in recs if r.get("kind") == "train"][-1]["peak_rss_mib"]
def plan_mib(name):
    text = open(f"{tmp}/{name}.plan").read()
    return int(re.search(r"^  total .*\((\d+) bytes\)", text, re.M).group(1)) / 2**20
planned = plan_mib("big") - plan_mib("tiny")
measured = peak_mib("big") - peak_mib("tiny")
print(f"gale train peak RSS: tiny {peak_mib('tiny'):.1f} MiB, big {peak_mib('big'):.1f} MiB: "
      f"{measured:.1f} MiB more; gale plan: {plan_mib('tiny'):.1f} and {plan_mib('big'):.1f} MiB: "
      f"{planned:.1f} MiB more ({100 * (measured - planned) / planned:+.1f}%)")
if asan:
    print("peak RSS not compared under AddressSanitizer")
else:
    assert abs(measured - planned) <= 0.1 * planned, (measured, planned)
PY
# gale train refuses, before allocating, a run whose plan exceeds this machine's memory (294B
# parameters: 4.7 TB of fp32 weights, gradients and moments)
sed -e 's/hidden_size: 512/hidden_size: 16384/' -e 's/intermediate_size: 1024/intermediate_size: 53248/' \
  -e 's/num_hidden_layers: 4/num_hidden_layers: 80/' -e "s|dir: .*|dir: $tmp/huge|" "$tmp/big.yaml" > "$tmp/huge.yaml"
if "$GALE_BIN" train "$tmp/huge.yaml" > "$tmp/huge.log" 2>&1; then
  echo "FAIL: gale train accepted a run of 4.7 TB"; exit 1
fi
grep -q "the run's memory plan needs .* GiB on each rank .*more than this machine's" "$tmp/huge.log" ||
  { echo "FAIL: the refusal does not come from the plan: $(cat "$tmp/huge.log")"; exit 1; }
echo "gale train refused a run whose plan exceeds the machine: $(grep -o "needs [0-9.e+]* GiB" "$tmp/huge.log")"
