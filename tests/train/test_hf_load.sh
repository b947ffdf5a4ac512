#!/usr/bin/env bash
# test_hf_load: a gale checkpoint is a Hugging Face folder that transformers loads as it is
# (no missing or unexpected weights), and transformers' cross-entropy over the val shard
# equals `gale eval` on it; `gale eval` of the folder transformers saves back (a plain Hugging
# Face folder: no trainer state) gives the same loss. Needs torch, transformers, h5py and hdf5plugin for
# /usr/bin/python3 (pip install transformers; tests/bench/setup_bench.sh for torch).
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
py=/usr/bin/python3
if ! $py -c "import torch, transformers, h5py, hdf5plugin" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 lacks torch, transformers, h5py or hdf5plugin"
  exit 77
fi
write_config "$tmp/run.yaml" "$tmp/run" 6 4
"$GALE_BIN" train "$tmp/run.yaml" > /dev/null
ckpt="$tmp/run/checkpoints/step_00000006"
# plain causal attention within each row, as transformers computes it
"$GALE_BIN" eval --checkpoint "$tmp/run" --data "$tmp/data" --batch-rows 4 --no-doc-mask > "$tmp/eval.txt"
gale_loss=$(sed -n 's/^loss *//p' "$tmp/eval.txt")
$py - "$ckpt" "$tmp/data/val-00000.h5" "$gale_loss" "$tmp/hf" <<'PY'
import sys, json
import h5py, hdf5plugin, numpy as np, torch
from transformers import AutoModelForCausalLM
ckpt, shard, gale_loss, saved = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
model, info = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32, output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
assert not bad, "FAIL: transformers reports %s" % bad
assert type(model).__name__ == "MixtralForCausalLM", type(model).__name__
rows = np.asarray(h5py.File(shard, "r")["tokens"][:], dtype=np.int64)
x = torch.from_numpy(rows[:, :-1]); y = torch.from_numpy(rows[:, 1:])
with torch.no_grad():
    logits = model(input_ids=x).logits.double()
ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="mean").item()
rel = abs(ce - gale_loss) / ce
print("transformers %.8f, gale eval %.8f, relative difference %.1e" % (ce, gale_loss, rel))
assert rel < 1e-5, "FAIL: gale eval and transformers disagree"
model.save_pretrained(saved, safe_serialization=True)
PY
[ ! -e "$tmp/hf/trainer_state.json" ]
"$GALE_BIN" eval --checkpoint "$tmp/hf" --data "$tmp/data" --batch-rows 4 --no-doc-mask > "$tmp/eval-hf.txt"
hf_loss=$(sed -n 's/^loss *//p' "$tmp/eval-hf.txt")
[ "$hf_loss" = "$gale_loss" ] || { echo "FAIL: gale eval of the saved Hugging Face folder: $hf_loss, of the checkpoint: $gale_loss"; exit 1; }
echo "hf_load: transformers loads the checkpoint and agrees with gale eval, also of the folder it saves"
