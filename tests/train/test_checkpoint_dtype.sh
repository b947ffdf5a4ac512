#!/usr/bin/env bash
# test_checkpoint_dtype: checkpoints in the dtype asked, sharded like save_pretrained, and exact
# resume through them. A run with checkpoint.dtype bf16 and a tiny checkpoint.shard_size writes
# model-0000N-of-0000M.safetensors + model.safetensors.index.json (every tensor in BF16, the index
# naming each file), config.json saying bfloat16 in both dtype and torch_dtype, the fp32
# master weights (master-0000N-of-0000M.safetensors + index), and weights half the size of an f32 run's; stopped at step 6 and resumed,
# it gives the straight run's losses and byte-identical files at the end. bf16 in, bf16 out: a
# run from that bf16 folder (checkpoint.dtype auto) saves bf16, one from an f32 folder f32.
# With torch and transformers: transformers loads the sharded bf16 checkpoint with no missing or
# unexpected weights, and its cross-entropy on the val shard (weights upcast to fp32) equals
# `gale eval` on it.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
steps=12
bf16=(--set checkpoint.dtype=bf16 --set checkpoint.shard_size=300000)
write_config "$tmp/f32.yaml" "$tmp/f32" $steps 4
"$GALE_BIN" train "$tmp/f32.yaml" > /dev/null
write_config "$tmp/straight.yaml" "$tmp/straight" $steps 4
"$GALE_BIN" train "$tmp/straight.yaml" "${bf16[@]}" > /dev/null
write_config "$tmp/half.yaml" "$tmp/half" $steps 4
"$GALE_BIN" train "$tmp/half.yaml" "${bf16[@]}" --stop-at 6 > /dev/null
"$GALE_BIN" train "$tmp/half.yaml" "${bf16[@]}" > "$tmp/half.log"
grep -q "resuming from .*step_00000006: step 6" "$tmp/half.log"

last=$(printf 'step_%08d' $steps)
ckpt="$tmp/straight/checkpoints/$last"
python3 - "$ckpt" "$tmp/f32/checkpoints/$last" <<'PY'
import json, os, struct, sys
ckpt, f32 = sys.argv[1], sys.argv[2]
def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return {k: v for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}
assert not os.path.exists(os.path.join(ckpt, "model.safetensors")), "FAIL: a single file beside the shards"
index = json.load(open(os.path.join(ckpt, "model.safetensors.index.json")))
files = sorted(set(index["weight_map"].values()))
assert len(files) > 1, "FAIL: not sharded: %s" % files
assert files == ["model-%05d-of-%05d.safetensors" % (i + 1, len(files)) for i in range(len(files))], files
size, names = 0, {}
for name in files:
    for t, v in header(os.path.join(ckpt, name)).items():
        assert v["dtype"] == "BF16", "FAIL: %s is %s" % (t, v["dtype"])
        assert index["weight_map"][t] == name, "FAIL: the index puts %s in %s" % (t, index["weight_map"][t])
        size += v["data_offsets"][1] - v["data_offsets"][0]
        names[t] = v["shape"]
assert index["metadata"]["total_size"] == size, (index["metadata"], size)
full = header(os.path.join(f32, "model.safetensors"))
assert names == {t: v["shape"] for t, v in full.items()}, "FAIL: not the f32 run's tensors"
f32_size = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in full.values())
assert 2 * size == f32_size, "FAIL: bf16 weights %d bytes, f32 %d" % (size, f32_size)
# the fp32 master weights in the weights' files' grouping, with an index of their own
master = {}
for name in files:
    master.update(header(os.path.join(ckpt, name.replace("model-", "master-"))))
assert os.path.exists(os.path.join(ckpt, "master.safetensors.index.json")), "FAIL: no master index"
assert all(v["dtype"] == "F32" for v in master.values()) and master.keys() == full.keys(), "FAIL: master"
for folder, want in ((ckpt, "bfloat16"), (f32, "float32")):
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["dtype"] == want and config["torch_dtype"] == want, "FAIL: %s config says %s/%s" % (
        folder, config.get("dtype"), config.get("torch_dtype"))
print("checkpoint_dtype: %d bf16 shards, %d bytes of weights (f32: %d)" % (len(files), size, f32_size))
PY

losses "$tmp/straight" > "$tmp/a"
losses "$tmp/half" > "$tmp/b"
diff "$tmp/a" "$tmp/b" || { echo "FAIL: resuming from a bf16 checkpoint changed the losses"; exit 1; }
for f in $(cd "$ckpt" && ls *.safetensors *.safetensors.index.json); do
  cmp "$ckpt/$f" "$tmp/half/checkpoints/$last/$f"
done

# bf16 in, bf16 out (checkpoint.dtype auto); f32 in, f32 out
for from in straight f32; do
  write_config "$tmp/ft-$from.yaml" "$tmp/ft-$from" 2 4
  sed -i 's|^model:|model:\n  from: '"$tmp/$from/checkpoints/$last"'|; /model_type\|vocab_size\|hidden_size\|intermediate_size\|num_hidden_layers\|num_attention_heads\|num_key_value_heads\|num_local_experts\|num_experts_per_tok\|max_position_embeddings\|router_aux_loss_coef/d' "$tmp/ft-$from.yaml"
  "$GALE_BIN" train "$tmp/ft-$from.yaml" > /dev/null
done
grep -q '"dtype": "bfloat16"' "$tmp/ft-straight/checkpoints/step_00000002/config.json" ||
  { echo "FAIL: a run from bf16 weights did not save bf16"; exit 1; }
[ -e "$tmp/ft-straight/checkpoints/step_00000002/master.safetensors" ]
grep -q '"dtype": "float32"' "$tmp/ft-f32/checkpoints/step_00000002/config.json" ||
  { echo "FAIL: a run from f32 weights did not save f32"; exit 1; }
[ ! -e "$tmp/ft-f32/checkpoints/step_00000002/master.safetensors" ]

py=/usr/bin/python3
if ! $py -c "import torch, transformers, h5py, hdf5plugin" 2>/dev/null; then
  echo "SKIP (the transformers half; the gale half above passed): /usr/bin/python3 lacks torch, transformers, h5py or hdf5plugin"
  exit 77  # ctest: Skipped
fi
"$GALE_BIN" eval --checkpoint "$ckpt" --data "$tmp/data" --batch-rows 4 --no-doc-mask > "$tmp/eval.txt"
gale_loss=$(sed -n 's/^loss *//p' "$tmp/eval.txt")
$py - "$ckpt" "$tmp/data/val-00000.h5" "$gale_loss" <<'PY'
import sys
import h5py, hdf5plugin, numpy as np, torch
from transformers import AutoModelForCausalLM
ckpt, shard, gale_loss = sys.argv[1], sys.argv[2], float(sys.argv[3])
model, info = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype="auto", output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
assert not bad, "FAIL: transformers reports %s" % bad
assert model.dtype == torch.bfloat16, "FAIL: transformers loaded %s" % model.dtype
model = model.float()
rows = np.asarray(h5py.File(shard, "r")["tokens"][:], dtype=np.int64)
x = torch.from_numpy(rows[:, :-1]); y = torch.from_numpy(rows[:, 1:])
with torch.no_grad():
    logits = model(input_ids=x).logits.double()
ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
rel = abs(ce - gale_loss) / ce
print("transformers %.8f, gale eval %.8f on the sharded bf16 checkpoint, relative difference %.1e" % (ce, gale_loss, rel))
assert rel < 1e-5, "FAIL: gale eval and transformers disagree"
PY
echo "checkpoint_dtype: bf16 sharded checkpoints, exact resume, bf16 in bf16 out, transformers agrees"
