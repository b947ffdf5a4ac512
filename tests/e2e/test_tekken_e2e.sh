#!/usr/bin/env bash
# test_tekken_e2e: a Tekken tokenizer (131,072 ids) from raw text to a trained checkpoint.
#   gale prepare (fortunes, Tekken) → shards hold uint32 tokens, ids equal to mistral-common's
#   over each document → gale inspect --decode gives the text back → gale train (a tiny Mistral
#   with the whole 131k vocabulary, a few steps; the loss falls) → gale sample decodes.
# Skipped (77) without mistral-common, which ships the Tekken files.
set -euo pipefail
: "${GALE_BIN:?run through ctest}" "${GALE_SOURCE:?run through ctest}"
text=/usr/share/games/fortunes/science
[ -f "$text" ] || { echo "SKIP: $text missing (the fortunes package, launch/setup.sh)"; exit 77; }
tekken=$(/usr/bin/python3 "$GALE_SOURCE/tests/tok/tekken_reference.py" files | tail -1) || exit $?
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$GALE_BIN" prepare --input "$text" --tokenizer "$tekken" --out "$tmp/pt" --seq-len 64 --text-mode separator \
  --val-fraction 0.1 --progress off > /dev/null
/usr/bin/python3 -c "import h5py, hdf5plugin" || { echo "SKIP: h5py or hdf5plugin missing (launch/setup.sh)"; exit 77; }
"$GALE_BIN" inspect "$tmp/pt" --decode 0 > "$tmp/row0.txt"
grep -q "vocab 131072" <("$GALE_BIN" inspect "$tmp/pt") || { echo "FAIL: inspect does not show the 131k vocabulary"; exit 1; }

# the ids in the shards (uint32) are mistral-common's, document by document (BOS ... EOS)
/usr/bin/python3 - "$tekken" "$tmp/pt" "$text" "$tmp/row0.txt" <<'PY'
import sys, os
import h5py, hdf5plugin  # noqa: F401 (the zstd filter)
tekken, out, text, row0 = sys.argv[1:5]
import logging; logging.disable(logging.WARNING)
from mistral_common.tokens.tokenizers.tekken import Tekkenizer
tek = Tekkenizer.from_file(tekken)
docs = [d.strip("\n") for d in open(text, encoding="utf-8").read().split("\n%\n")]
want = {tuple(tek.encode(d, bos=True, eos=True)) for d in docs if d.strip()}
with h5py.File(os.path.join(out, "train-00000.h5"), "r") as f:
    assert str(f["tokens"].dtype) == "uint32", f["tokens"].dtype
    ids = [int(x) for x in f["tokens"][:].reshape(-1)]
assert max(ids) > 65535, "FAIL: no id above 65535 in the train shard"
# the documents inside the packed stream: runs from BOS to EOS
docs_found, cur = 0, None
for i in ids:
    if i == tek.bos_id:
        cur = [i]
    elif cur is not None:
        cur.append(i)
        if i == tek.eos_id:
            assert tuple(cur) in want, "FAIL: a document's ids differ from mistral-common's: %r" % cur[:20]
            docs_found += 1
            cur = None
assert docs_found > 100, docs_found
print("shards: uint32 tokens, max id %d, %d whole documents equal to mistral-common's" % (max(ids), docs_found))
row = open(row0, encoding="utf-8", errors="replace").read()
assert any(w in row for w in ("the", "The")), "FAIL: inspect --decode shows no text: %r" % row[:200]
PY

cat > "$tmp/run.yaml" <<YAML
model:
  model_type: mistral
  vocab_size: 131072
  hidden_size: 16
  intermediate_size: 32
  num_hidden_layers: 1
  num_attention_heads: 2
  num_key_value_heads: 1
  max_position_embeddings: 128
data:
  sources: [$tmp/pt]
  seq_len: 64
  micro_batch: 4
optim:
  lr: 3.0e-2
  warmup: 1
run:
  steps: 6
  eval_every: 6
  eval_batches: 1
  checkpoint_every: 6
  dir: $tmp/run
backend:
  threads: 1
YAML
"$GALE_BIN" train "$tmp/run.yaml" > "$tmp/train.log"
python3 - "$tmp/run/metrics.jsonl" <<'PY'
import json, math, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"]
assert len(train) == 6, len(train)
print("losses", [round(r["loss"], 3) for r in train], "uniform", round(math.log(131072), 3))
assert abs(train[0]["loss"] - math.log(131072)) < 0.5, "FAIL: the first loss is not near log(131072)"
assert train[-1]["loss"] < train[0]["loss"] - 0.5, "FAIL: the loss did not fall"
PY
ckpt="$tmp/run/checkpoints/step_00000006"
cmp "$ckpt/tekken.json" "$tekken"
[ ! -e "$ckpt/tokenizer_config.json" ] || { echo "FAIL: a Tekken checkpoint claims a LlamaTokenizer"; exit 1; }
"$GALE_BIN" sample --checkpoint "$ckpt" --prompt "The" --max-new 8 --seed 1 > "$tmp/sample.txt"
grep -q "^The" "$tmp/sample.txt" || { echo "FAIL: the sample does not start with its prompt"; cat "$tmp/sample.txt"; exit 1; }
echo "tekken end to end: ok"
