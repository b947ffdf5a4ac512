#!/usr/bin/env bash
# test_nan: a non-finite loss stops `gale train` with a diagnostic naming the step and the
# gradient tensors at fault (run.nan_policy: stop, the default), or is skipped without an
# update (run.nan_policy: skip). The model starts from a Hugging Face folder (model.from)
# whose lm_head holds one NaN. Also: model.from fine-tuning starts from the folder's weights.
set -euo pipefail
source "${GALE_SOURCE:?run through ctest, or set GALE_SOURCE, GALE_BIN and GALE_BUILD}/tests/train/train_fixture.sh"
write_config "$tmp/base.yaml" "$tmp/base" 2 4
"$GALE_BIN" train "$tmp/base.yaml" > /dev/null
hf="$tmp/hf"
mkdir "$hf"
cp "$tmp/base/checkpoints/step_00000002/config.json" "$tmp/base/checkpoints/step_00000002/model.safetensors" "$hf/"
python3 - "$hf/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
begin = 8 + n + header["lm_head.weight"]["data_offsets"][0]
data[begin + 4 * 1000:begin + 4 * 1001] = struct.pack("<f", float("nan"))
open(path, "wb").write(data)
PY
# fine-tuning from the intact folder: step 1 continues where the base run ended
write_config "$tmp/ft.yaml" "$tmp/ft" 2 4
sed -i 's|^model:|model:\n  from: '"$tmp/base/checkpoints/step_00000002"'|; /model_type\|vocab_size\|hidden_size\|intermediate_size\|num_hidden_layers\|num_attention_heads\|num_key_value_heads\|num_local_experts\|num_experts_per_tok\|max_position_embeddings\|router_aux_loss_coef/d' "$tmp/ft.yaml"
"$GALE_BIN" train "$tmp/ft.yaml" > "$tmp/ft.log"
python3 - "$tmp/base/metrics.jsonl" "$tmp/ft/metrics.jsonl" <<'PY'
import json, sys
base = [json.loads(l)["loss"] for l in open(sys.argv[1])]
ft = [json.loads(l)["loss"] for l in open(sys.argv[2])]
assert ft[0] < base[0] - 0.05, "FAIL: fine-tuning did not start from the folder's weights (%s vs %s)" % (ft[0], base[0])
PY

write_config "$tmp/nan.yaml" "$tmp/nan" 3 4
sed -i 's|^model:|model:\n  from: '"$hf"'|; /model_type\|vocab_size\|hidden_size\|intermediate_size\|num_hidden_layers\|num_attention_heads\|num_key_value_heads\|num_local_experts\|num_experts_per_tok\|max_position_embeddings\|router_aux_loss_coef/d' "$tmp/nan.yaml"
if "$GALE_BIN" train "$tmp/nan.yaml" > "$tmp/stop.log" 2> "$tmp/stop.err"; then
  echo "FAIL: a NaN loss did not stop the run"; exit 1
fi
cat "$tmp/stop.err"
grep -q "step 1: non-finite loss" "$tmp/stop.err"
grep -q "non-finite weights: lm_head.weight (1 of 1024000 values); non-finite gradients (backward order): lm_head.weight" "$tmp/stop.err"
grep -q "nan_policy: skip" "$tmp/stop.err"

rm -rf "$tmp/nan"
"$GALE_BIN" train "$tmp/nan.yaml" --set run.nan_policy=skip > "$tmp/skip.log"
[ "$(grep -c 'skipped; non-finite weights: lm_head.weight' "$tmp/skip.log")" -eq 3 ]
python3 - "$tmp/nan/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l).get("kind") == "train"]
assert [r["step"] for r in recs] == [1, 2, 3] and all(r["skipped"] for r in recs), recs
PY
grep -q '"optimizer_step": 0' "$tmp/nan/checkpoints/step_00000003/trainer_state.json"
echo "nan: stopped with a diagnostic; skip policy skipped 3 steps without updates"
