#!/usr/bin/env bash
# test_train_e2e: from raw text to a fine-tuned chat checkpoint with the real tools.
#   gale prepare (fortunes, pretraining) → gale train (tiny Mixtral from scratch) →
#   gale prepare (chat JSONL, SFT) → gale train (fine-tuning from the pretraining
#   checkpoint via model.from; only assistant tokens are targets) → gale eval, gale sample.
set -euo pipefail
: "${GALE_BIN:?run through ctest}" "${GALE_SHARED:?run through ctest}"
tok="$GALE_SHARED/tokenizers/mistral-v1.model"
text=/usr/share/games/fortunes/science
[ -f "$text" ] || { echo "SKIP: $text missing (the fortunes package, launch/setup.sh)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$GALE_BIN" prepare --input "$text" --tokenizer "$tok" --out "$tmp/pt" --seq-len 64 --text-mode separator \
  --val-fraction 0.1 --progress off > /dev/null
model_yaml() {
  cat <<YAML
  model_type: mixtral
  vocab_size: 32000
  hidden_size: 32
  intermediate_size: 64
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  num_local_experts: 4
  num_experts_per_tok: 2
  max_position_embeddings: 128
YAML
}
cat > "$tmp/pt.yaml" <<YAML
model:
$(model_yaml)
data:
  sources: [$tmp/pt]
  seq_len: 64
  micro_batch: 4
optim:
  lr: 1.0e-2
  warmup: 2
run:
  steps: 12
  eval_every: 6
  eval_batches: 2
  checkpoint_every: 6
  dir: $tmp/pt-run
backend:
  threads: 1
YAML
"$GALE_BIN" train "$tmp/pt.yaml" > "$tmp/pt.log"
python3 - "$tmp/pt-run/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in recs if r["kind"] == "train"]
evals = [r for r in recs if r["kind"] == "eval"]
assert [e["step"] for e in evals] == [0, 6, 12], [e["step"] for e in evals]  # the baseline, then every 6
print("pretraining losses", [round(r["loss"], 3) for r in train], "val", [round(e["val_loss"], 3) for e in evals])
assert train[-1]["loss"] < train[0]["loss"] - 1.0, "FAIL: pretraining loss did not fall"
assert evals[2]["val_loss"] < evals[1]["val_loss"] < evals[0]["val_loss"], "FAIL: val loss did not fall"
assert all(len(r["experts"]) == 2 for r in train)
PY
pt_ckpt="$tmp/pt-run/checkpoints/step_00000012"
[ -f "$pt_ckpt/tokenizer.model" ] && cmp "$pt_ckpt/tokenizer.model" "$tok"

# SFT data: conversations whose answers follow from the question
python3 - "$tmp/chat.jsonl" <<'PY'
import json, sys
words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "garden", "silver"]
with open(sys.argv[1], "w") as f:
    for i in range(120):
        a, b = words[i % 10], words[(i * 7 + 3) % 10]
        conv = {"messages": [{"role": "user", "content": "Say %s then %s, number %d." % (a, b, i)},
                             {"role": "assistant", "content": "%s %s %d" % (a, b, i)}]}
        f.write(json.dumps(conv) + "\n")
PY
"$GALE_BIN" prepare --input "$tmp/chat.jsonl" --kind sft --chat-template v1 --tokenizer "$tok" --out "$tmp/sft" \
  --seq-len 64 --val-fraction 0.1 --dedup exact --progress off > /dev/null
cat > "$tmp/sft.yaml" <<YAML
model:
  from: $pt_ckpt
data:
  sources: [$tmp/sft]
  seq_len: 64
  micro_batch: 4
optim:
  lr: 3.0e-3
  warmup: 1
run:
  steps: 8
  eval_every: 8
  eval_batches: 2
  dir: $tmp/sft-run
backend:
  threads: 1
YAML
"$GALE_BIN" train "$tmp/sft.yaml" > "$tmp/sft.log"
python3 - "$tmp/sft-run/metrics.jsonl" <<'PY'
import json, sys
train = [json.loads(l) for l in open(sys.argv[1]) if '"train"' in l]
assert len(train) == 8
# only the assistant answers (and their </s>) are targets: far fewer than the 4 x 64 positions
assert all(0 < r["targets"] < 4 * 64 // 2 for r in train), [r["targets"] for r in train]
assert train[-1]["loss"] < train[0]["loss"], "FAIL: SFT loss did not fall"
PY
"$GALE_BIN" eval --checkpoint "$tmp/sft-run" --data "$tmp/sft" --batch-rows 4 | grep -q "^perplexity"
"$GALE_BIN" sample --checkpoint "$tmp/sft-run" --chat --prompt "Say apple then river, number 5." --temperature 0 \
  --max-new 8 > "$tmp/answer" 2> "$tmp/sample.err"
grep -q "generated" "$tmp/sample.err"
echo "train_e2e: pretraining and SFT from raw text; answer: $(tail -n 1 "$tmp/answer")"
